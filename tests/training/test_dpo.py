"""Direct preference optimisation (`task="dpo"`): the loss at the reference, the log-probabilities it compares,
the reference of a LoRA run, training and resuming through `train_and_evaluate`."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import lora
from jaxformer.configs import load_config
from jaxformer.data import chat
from jaxformer.training import build_run
from jaxformer.training.loop import train_and_evaluate
from jaxformer.training.tasks.dpo import REFERENCE_FILE, dpo_loss, encode_pairs, sequence_logps

TINY_MODEL = dict(num_layers=1, num_heads=2, d_model=32, d_ff=64)


def tiny_dpo(**data):
    config = load_config("chat_dpo_cpu")
    config.model.update(TINY_MODEL)
    config.update(num_steps=4, eval_every=2, log_every=2, checkpoint_every=2, warmup_steps=1, batch_size=4)
    config.data.update({"num_train": 16, "num_eval": 6, "eval_generate": 0, **data})  # no greedy samples to compile
    return config


@pytest.fixture(scope="module")
def task_and_model():
    run = build_run(tiny_dpo())
    model = run.make_model()
    model.eval()
    return run.task, model


def test_dpo_loss_at_the_reference_is_log_2(task_and_model, tmp_path):
    task, model = task_and_model
    task.prepare(str(tmp_path), lambda: model)
    batch = task.train_data()[0]
    loss, metrics = nnx.jit(lambda m, b: dpo_loss(m, b, beta=0.1))(model, batch)
    assert abs(float(loss) - math.log(2)) < 1e-6
    assert abs(float(metrics["reward_margin"])) < 1e-6
    assert (tmp_path / REFERENCE_FILE).exists()


def test_sequence_logps_sums_the_reply_tokens_log_probabilities(task_and_model):
    """Against float64 NumPy over the model's logits: only the masked tokens (the reply and its end of turn)."""
    task, model = task_and_model
    ids, mask = task.train_pairs["chosen"][:3], task.train_pairs["chosen_mask"][:3]
    logps, counts = sequence_logps(model, jnp.asarray(ids), jnp.asarray(mask))
    logits = np.asarray(model(jnp.asarray(ids[:, :-1])), np.float64)
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    want = [sum(logp[b, t - 1, ids[b, t]] for t in range(1, ids.shape[1]) if mask[b, t]) for b in range(3)]
    np.testing.assert_allclose(np.asarray(logps), want, rtol=1e-5)
    np.testing.assert_array_equal(counts, mask[:, 1:].sum(1))


def test_encode_pairs_marks_only_the_final_reply():
    template = chat.byte_chatml()
    pair = {
        "prompt": [
            {"role": "user", "content": "Say a"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "Say b"},
        ],
        "chosen": {"role": "assistant", "content": "b"},
        "rejected": {"role": "assistant", "content": "c"},
    }
    arrays, dropped = encode_pairs(template, [pair], 80)
    assert dropped == 0 and arrays["chosen"].shape == (1, 80)
    assert template.tokenizer.decode(arrays["chosen"][0][arrays["chosen_mask"][0]]) == "b<|im_end|>"
    assert template.tokenizer.decode(arrays["rejected"][0][arrays["rejected_mask"][0]]) == "c<|im_end|>"
    with pytest.raises(ValueError, match="No preference pair fits"):
        encode_pairs(template, [pair], 20)


def test_a_lora_runs_reference_is_its_base_without_adapters(task_and_model):
    task, model = task_and_model
    with_adapters = nnx.clone(model)
    lora.add_adapters(with_adapters, rank=2, alpha=4.0, targets="all-linear", rngs=nnx.Rngs(1))
    ids, mask = (jnp.asarray(task.train_pairs[k][:4]) for k in ("chosen", "chosen_mask"))
    np.testing.assert_array_equal(sequence_logps(with_adapters, ids, mask)[0], sequence_logps(model, ids, mask)[0])


def test_dpo_trains_reports_rewards_and_resumes_with_its_reference(tmp_path):
    config = tiny_dpo()
    config.num_steps = 2
    train_and_evaluate(config, str(tmp_path))
    reference = dict(np.load(tmp_path / REFERENCE_FILE))
    config.num_steps = 4
    final = train_and_evaluate(config, str(tmp_path))  # resumes at step 2: reads the reference back
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    for key in ("train_reward_margin", "train_reward_accuracy", "val_loss", "val_reward_accuracy", "val_reward_margin"):
        assert np.isfinite(final[key]), key
    assert rows[0]["val_loss"] == pytest.approx(math.log(2), abs=0.05)  # two small steps from the reference
    np.testing.assert_array_equal(np.load(tmp_path / REFERENCE_FILE)["train_chosen"], reference["train_chosen"])
    (tmp_path / REFERENCE_FILE).unlink()
    config.num_steps = 6
    with pytest.raises(FileNotFoundError, match="needs its reference log-probabilities"):
        train_and_evaluate(config, str(tmp_path))


def test_dpo_config_errors():
    config = tiny_dpo()
    config.dpo.beta = 0.0
    with pytest.raises(ValueError, match=r"config\.dpo\.beta"):
        build_run(config)
    with pytest.raises(RuntimeError, match="reference log-probabilities first"):
        build_run(tiny_dpo()).task.train_data()


@pytest.mark.slow
def test_chat_dpo_cpu_reaches_90_percent_reward_accuracy_on_held_out_pairs(tmp_path):
    config = load_config("chat_dpo_cpu")
    final = train_and_evaluate(config, str(tmp_path))
    assert final["step"] == config.num_steps
    assert final["val_reward_accuracy"] >= 0.9, final
