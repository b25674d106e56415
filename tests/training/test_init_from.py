"""Fine-tuning from a Hugging Face checkpoint: `config.init_from` starts `train_and_evaluate` from its weights, with
its architecture and (`data.tokenizer = "hf:..."`) its tokenizer; contradicting overrides are refused."""

import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import pretrained
from jaxformer.configs import load_config
from jaxformer.training.loop import train_and_evaluate
from jaxformer.training.run import build_run
from jaxformer.training.tasks.lm import lm_loss
from jaxformer.training.trained import load_trained

GPT2 = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "pretrained" / "gpt2"


def finetune_config(corpus, **model):
    config = load_config("gpt2_finetune_shakespeare")
    config.init_from = str(GPT2)
    config.data.update(source="text_file", path=str(corpus), tokenizer=f"hf:{GPT2}", seq_len=16)
    config.model.update(dtype="float32", **model)
    config.update(num_steps=4, log_every=1, eval_every=4, checkpoint_every=4, warmup_steps=0, batch_size=4)
    config.sample.num_tokens = 4
    return config


def test_the_first_step_trains_the_pretrained_weights(tmp_path, corpus):
    # No dropout, so that step 1's training loss is the pretrained model's loss on the first batch.
    config = finetune_config(corpus, dropout_rate=0.0, attention_dropout_rate=0.0)
    train_and_evaluate(config, str(tmp_path))
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1
    run = build_run(config)
    task = run.task  # the same seed: the same first batch
    batch = {k: jnp.asarray(v) for k, v in task.train_data()[0].items()}
    want, _ = lm_loss(pretrained.from_pretrained(GPT2), batch)
    np.testing.assert_allclose(first["train_loss"], float(want), rtol=1e-5)
    assert run.model_config.num_layers == 2 and task.tokenizer.vocab_size == 300  # the checkpoint's
    # `jaxformer sample` rebuilds the same architecture from the run's saved config (a regression: it used to
    # build config.model's variant instead, and orbax refused the checkpoint).
    model, tokenizer, _ = load_trained(str(tmp_path))
    assert model.config == run.model_config and tokenizer.vocab_size == 300


def test_an_override_that_contradicts_the_checkpoint_is_refused(tmp_path, corpus):
    config = finetune_config(corpus)
    config.model.num_layers = 3
    with pytest.raises(
        ValueError, match=r"config.model.num_layers=3 contradicts the checkpoint .* whose num_layers is 2"
    ):
        build_run(config)
