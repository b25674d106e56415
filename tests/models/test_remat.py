"""Remat policies (ModelConfig.remat, nn/remat.py): the same values and gradients as no remat, looped and scanned,
with dropout and in an encoder-decoder; "full" really keeps less for the backward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer.models import GPT, ModelConfig, Transformer
from jaxformer.nn.remat import REMAT_POLICIES, remat
from tests.models.helpers import scanned_copy

TOKENS = np.random.default_rng(0).integers(0, 64, size=(2, 12)).astype(np.int32)


def tiny(**overrides):
    base = dict(vocab_size=64, num_layers=3, d_model=32, num_heads=4, d_ff=64, max_len=16)
    return ModelConfig(**{**base, **overrides})


def with_remat(model, policy: str):
    """`model`'s graph rebuilt with another remat policy and given `model`'s state (parameters, RNG counters)."""
    cls = type(model)
    other = nnx.eval_shape(lambda: cls(model.config.replace(remat=policy), rngs=nnx.Rngs(0)))
    nnx.update(other, nnx.state(model))
    return other


def loss_and_grads(model, inputs):
    def loss(m):
        logits = m(inputs)
        return jnp.mean(jax.nn.log_softmax(logits)[..., 0]) + 1e-3 * jnp.sum(logits**2)

    value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
    return value, nnx.to_pure_dict(grads)


CASES = [(p, False) for p in REMAT_POLICIES if p != "none"] + [("dots_no_batch", True)]


# The default run checks a policy on the scanned stack (the recipes' layout); the others run with `make test-all`.
DEFAULT_CASES = (("dots_no_batch", True),)


@pytest.mark.parametrize(
    "policy, scan",
    [c if c in DEFAULT_CASES else pytest.param(*c, marks=pytest.mark.slow) for c in CASES],
    ids=[f"{p}-{'scanned' if s else 'looped'}" for p, s in CASES],
)
def test_every_policy_gives_the_gradients_of_no_remat(policy, scan):
    # Dropout on: the recomputed forward must draw the same masks as the saved one.
    model = GPT(tiny(dropout_rate=0.2, positional="rope"), rngs=nnx.Rngs(0, dropout=1))
    if scan:
        model = scanned_copy(model)
    rematted = with_remat(model, policy)
    assert rematted.blocks.remat == policy
    value, grads = loss_and_grads(model, TOKENS)
    value_r, grads_r = loss_and_grads(rematted, TOKENS)
    np.testing.assert_allclose(value_r, value, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7), grads_r, grads)


@pytest.mark.slow  # ~7 s; remat itself is checked on the GPT in the default run
def test_encoder_decoder_with_remat_matches_without():
    cfg = tiny(num_layers=2, dropout_rate=0.0)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    rematted = with_remat(model, "full")

    def loss(m):
        return jnp.sum(m(TOKENS, TOKENS[:, ::-1]) ** 2)

    g = nnx.to_pure_dict(nnx.grad(loss)(model))
    g_r = nnx.to_pure_dict(nnx.grad(loss)(rematted))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-5), g_r, g)  # grads up to ~10


def test_remat_in_a_layer_scan_lowers_the_compiled_steps_temporaries():
    """XLA's buffer assignment for the compiled gradient of a scanned stack: "full" keeps only each block's input,
    so far fewer temporary bytes than no remat. Checked after compilation, not on the jaxpr: XLA can undo a remat
    (CSE, or scheduling the recomputation early), and does so for the looped stack on CPU (nn/remat.py)."""
    model = scanned_copy(GPT(tiny(num_layers=4, max_len=128, d_ff=128), rngs=nnx.Rngs(0)))
    inputs = np.random.default_rng(1).integers(0, 64, size=(8, 128)).astype(np.int32)

    def temp_bytes(policy):
        graphdef, params, rest = nnx.split(with_remat(model, policy), nnx.Param, ...)
        grad = jax.jit(lambda p, r: nnx.grad(lambda m: jnp.sum(m(inputs) ** 2))(nnx.merge(graphdef, p, r)))
        return grad.lower(params, rest).compile().memory_analysis().temp_size_in_bytes

    none, full = temp_bytes("none"), temp_bytes("full")
    assert full < 0.5 * none, (full, none)


def test_an_unknown_policy_is_named():
    with pytest.raises(ValueError, match=r"ModelConfig\.remat='everything'; choose one of"):
        tiny(remat="everything")
    with pytest.raises(ValueError, match="remat policy must be one of"):
        remat(lambda x: x, "everything")
