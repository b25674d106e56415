"""Fine-tuning from a Hugging Face checkpoint: `config.init_from` starts `train_and_evaluate` from its weights, with
its architecture and (`data.tokenizer = "hf:..."`) its tokenizer; contradicting overrides are refused."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import pretrained, sharding
from jaxformer.configs import load_config
from jaxformer.training.loop import train_and_evaluate
from jaxformer.training.run import build_run
from jaxformer.training.runner import StepRunner
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


GEMMA3 = GPT2.parent / "gemma3"


def gemma_finetune_config(corpus):
    config = load_config("gemma_finetune_shakespeare")
    config.init_from = str(GEMMA3)
    config.data.update(source="text_file", path=str(corpus), tokenizer=f"hf:{GEMMA3}", seq_len=16)
    config.model.dtype = "float32"
    config.update(num_steps=2, log_every=1, eval_every=2, checkpoint_every=2, warmup_steps=0, batch_size=4)
    config.sample.num_tokens = 4
    return config


def test_one_step_of_the_gemma_recipe_starts_at_the_checkpoints_loss(corpus):
    """`gemma_finetune_shakespeare` on the Gemma 3 fixture (local and global layers, q/k norms, a RoPE per kind, a
    final-logit soft-cap), one step through the runner that train_and_evaluate uses: the step's loss is the
    pretrained model's loss on the first batch (Gemma has no dropout). The whole loop: the slow test below."""
    config = gemma_finetune_config(corpus)
    run = build_run(config)
    model = pretrained.from_pretrained(GEMMA3)
    assert run.model_config == model.config.replace(dtype="float32", scan_layers=False, remat="none")
    assert (
        run.model_config.layer_types == ("local", "local", "local", "global") and run.task.tokenizer.vocab_size == 352
    )
    mesh = sharding.mesh_from_config(run.config.mesh)
    runner = StepRunner(run.config.parallel, run.make_model, run.optimizer, run.schedule, run.task.loss, mesh=mesh)
    params = jax.device_put(run.initial_params(runner.state_mesh), runner.state_shardings.params)
    first = run.task.train_data()[0]
    _, metrics = runner.train_step(runner.to_devices(runner.initial_state.replace(params=params)), first)
    want, _ = lm_loss(model, {k: jnp.asarray(v) for k, v in first.items()})
    np.testing.assert_allclose(float(metrics["loss"]), float(want), rtol=1e-5)


@pytest.mark.slow
def test_the_gemma_recipe_fine_tunes_a_gemma_3_checkpoint(tmp_path, corpus):
    """The whole loop on the Gemma 3 fixture: step 1's logged training loss is the pretrained model's loss on the
    first batch, and the run's checkpoint loads back as the checkpoint's architecture."""
    config = gemma_finetune_config(corpus)
    train_and_evaluate(config, str(tmp_path))
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1
    run = build_run(config)
    batch = {k: jnp.asarray(v) for k, v in run.task.train_data()[0].items()}
    want, _ = lm_loss(pretrained.from_pretrained(GEMMA3), batch)
    np.testing.assert_allclose(first["train_loss"], float(want), rtol=1e-5)
    model, tokenizer, _ = load_trained(str(tmp_path))
    assert model.config == run.model_config and tokenizer.vocab_size == 352
