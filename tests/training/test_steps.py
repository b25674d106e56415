"""TrainState and the jitted steps: golden one-step metrics, gradient accumulation, dropout RNG, eval mode."""

import jax
import numpy as np
import pytest
from flax import nnx

from jaxformer import training
from jaxformer.models import GPT, ModelConfig
from jaxformer.training.tasks.lm import lm_loss

CFG = ModelConfig(vocab_size=32, num_layers=2, d_model=32, num_heads=4, d_ff=64, max_len=16, dropout_rate=0.1)
TOKENS = np.random.default_rng(0).integers(0, 32, size=(4, 17)).astype(np.int32)
BATCH = {"inputs": TOKENS[:, :-1], "targets": TOKENS[:, 1:]}


def setup(cfg=CFG, grad_accum_steps=1, learning_rate=1e-2, eps=1e-8):
    schedule = training.make_schedule("warmup_cosine", learning_rate=learning_rate, num_steps=10, warmup_steps=0)
    optimizer = training.make_optimizer(schedule, eps=eps, weight_decay=0.1, grad_accum_steps=grad_accum_steps)
    graphs, state = training.create_train_state(GPT(cfg, rngs=nnx.Rngs(0)), optimizer)
    return (
        graphs,
        state,
        training.make_train_step(graphs, optimizer, schedule, lm_loss),
        training.make_eval_step(graphs, lm_loss),
    )


def test_one_step_golden_metrics():
    """Recorded on the 2-core CPU dev machine (jax 0.10.2) with
    `.venv/bin/pytest tests/training/test_steps.py -k golden -s` printing the values below."""
    _, state, train_step, _ = setup()
    state, metrics = train_step(state, BATCH)
    state, metrics2 = train_step(state, BATCH)
    got = {k: float(v) for k, v in metrics.items()} | {"loss_2": float(metrics2["loss"])}
    print(got)
    golden = {
        "loss": GOLDEN_LOSS,
        "grad_norm": GOLDEN_GRAD_NORM,
        "learning_rate": 1e-2,
        "tokens": 64.0,
        "loss_2": GOLDEN_LOSS_2,
    }
    for key, want in golden.items():
        np.testing.assert_allclose(got[key], want, rtol=1e-4, err_msg=key)
    assert int(state.step) == 2


GOLDEN_LOSS, GOLDEN_GRAD_NORM, GOLDEN_LOSS_2 = 3.4425657, 1.3347762, 3.3163116


def test_gradient_accumulation_equals_one_big_batch():
    # Adam's first step is lr * g / (|g| + eps): with the usual eps=1e-8 a gradient near 1e-7 (an FFN weight of
    # this model has one) turns the float32 rounding of a different summation order into a 2e-6 change of the
    # step. eps=1 makes the step lr * g / (|g| + 1), close to lr * g: the parameters then compare the two mean
    # gradients themselves (a sum instead of a mean would move them by ~1e-4). No biases: the key bias has an
    # exactly zero gradient (softmax ignores it), pure rounding noise.
    cfg = CFG.replace(dropout_rate=0.0, use_bias=False)
    _, big, big_step, _ = setup(cfg, eps=1.0)
    _, small, small_step, _ = setup(cfg, grad_accum_steps=2, eps=1.0)
    big, _ = big_step(big, BATCH)
    for half in (slice(0, 2), slice(2, 4)):
        small, _ = small_step(small, {k: v[half] for k, v in BATCH.items()})
    for a, b in zip(jax.tree.leaves(big.params), jax.tree.leaves(small.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_draws_new_masks_each_step_and_eval_is_deterministic():
    _, state, train_step, eval_step = setup(learning_rate=1e-9)
    losses = []
    for _ in range(2):
        state, metrics = train_step(state, BATCH)
        losses.append(float(metrics["loss"]))
    assert losses[0] != losses[1]  # same batch, (almost) same weights: only the dropout masks differ
    a, b = eval_step(state, BATCH), eval_step(state, BATCH)
    assert float(a["loss"]) == float(b["loss"])


def test_decay_mask_selects_weight_matrices_only():
    model = GPT(CFG.replace(tie_embeddings=False), rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    flat = {
        "/".join(str(getattr(k, "key", "")) for k in path): m
        for path, m in jax.tree_util.tree_leaves_with_path(training.decay_mask(params))
    }
    decayed = sorted(k.split("/")[-2] for k, m in flat.items() if m)
    assert set(decayed) == {"w_q", "w_k", "w_v", "w_o", "w_in", "w_out", "kernel"}
    with_embeddings = training.decay_mask(params, decay_embeddings=True)
    assert sum(jax.tree.leaves(with_embeddings)) == sum(jax.tree.leaves(training.decay_mask(params))) + 2


def test_bad_optimizer_arguments():
    schedule = training.make_schedule("constant", learning_rate=1.0, num_steps=10)
    with pytest.raises(ValueError, match=r"optimizer='sgd'; choose one of \('adamw', 'adafactor'\)"):
        training.make_optimizer(schedule, name="sgd")
    with pytest.raises(TypeError, match=r"optimizer=None; choose one of"):
        training.make_optimizer(schedule, name=None)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match=rf"`grad_accum_steps` must be a positive int; got {bad!r}"):
            training.make_optimizer(schedule, grad_accum_steps=bad)
    with pytest.raises(ValueError, match=r"`clip_norm` must be a finite number > 0 \(or None: no clipping\); got 0"):
        training.make_optimizer(schedule, clip_norm=0)
    with pytest.raises(TypeError, match=r"`clip_norm` must be a real number; got '1'"):
        training.make_optimizer(schedule, clip_norm="1")


def test_parallel_must_be_one_of_the_modes():
    from jaxformer.training import runner

    assert runner.check_parallel("pmap") == "pmap"
    with pytest.raises(ValueError, match=r"^config.parallel='dp'; choose one of \('jit', 'pmap', 'shard_map'\)\.$"):
        runner.check_parallel("dp")
    with pytest.raises(TypeError, match=r"^config.parallel=None; choose one of"):
        runner.check_parallel(None)


def test_a_sharded_step_without_a_batch_sharding_takes_the_mesh_from_the_state():
    from jaxformer import sharding
    from jaxformer.training import runner

    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    cfg = ModelConfig.variant("gpt2-tiny", num_layers=1)
    schedule = training.make_schedule("constant", learning_rate=1e-3, num_steps=2)
    optimizer = training.make_optimizer(schedule)
    graphs, state, shardings = runner.init_state(lambda: GPT(cfg, rngs=nnx.Rngs(0)), optimizer, mesh)
    step = training.make_train_step(graphs, optimizer, schedule, lm_loss, state_shardings=shardings)
    tokens = np.zeros((2, 9), np.int32)
    state, metrics = step(state, {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
    assert np.isfinite(float(metrics["loss"]))
