"""implementation="auto": which kernel runs for which call (nn/attention_dispatch.py), and that it computes the
same attention as the dense path."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import nn, ops
from jaxformer.nn.attention_dispatch import BLOCKWISE_MIN_LEN, check_implementation, choose

BASE = dict(
    dtype=jnp.bfloat16,
    head_dim=64,
    q_len=1024,
    kv_len=1024,
    has_mask=False,
    has_bias=False,
    sliding_window=None,
    dropout=False,
    decode=False,
)


@pytest.mark.parametrize(
    "backend, changes, want",
    [
        ("gpu", {}, "cudnn"),
        ("gpu", {"dtype": jnp.float16}, "cudnn"),
        ("gpu", {"dtype": jnp.float32}, "xla"),  # cuDNN flash attention is half precision only
        ("gpu", {"head_dim": 256}, "xla"),
        ("gpu", {"head_dim": 60}, "xla"),
        ("gpu", {"has_mask": True}, "xla"),
        ("gpu", {"has_bias": True}, "xla"),
        ("gpu", {"sliding_window": 128}, "xla"),
        ("gpu", {"has_segments": True}, "xla"),
        ("gpu", {"softcap": 50.0}, "xla"),  # jax.nn.dot_product_attention has no soft-cap: never dropped
        ("tpu", {"softcap": 50.0}, "pallas"),  # the splash kernel applies it
        ("cpu", {"q_len": BLOCKWISE_MIN_LEN, "softcap": 50.0}, "blockwise"),
        ("cpu", {"q_len": BLOCKWISE_MIN_LEN, "kv_len": BLOCKWISE_MIN_LEN, "has_segments": True}, "blockwise"),
        ("tpu", {"has_segments": True}, "pallas"),
        ("cpu", {}, "xla"),
        ("cpu", {"kv_len": BLOCKWISE_MIN_LEN}, "blockwise"),  # cross-attention: the longer length counts
        ("cpu", {"q_len": BLOCKWISE_MIN_LEN, "kv_len": BLOCKWISE_MIN_LEN, "sliding_window": 128}, "blockwise"),
        ("cpu", {"q_len": BLOCKWISE_MIN_LEN, "has_bias": True}, "xla"),
        ("cpu", {"q_len": BLOCKWISE_MIN_LEN, "has_mask": True}, "xla"),
        ("tpu", {}, "pallas"),
        ("tpu", {"dtype": jnp.float32, "sliding_window": 128}, "pallas"),
        ("tpu", {"q_len": 1000}, "xla"),  # the splash kernel tiles by 128
        ("tpu", {"kv_len": 200}, "xla"),
        ("tpu", {"has_mask": True}, "xla"),
        ("tpu", {"has_bias": True}, "xla"),
        ("tpu", {"dropout": True}, "xla"),
        ("gpu", {"dropout": True}, "xla"),
        ("gpu", {"decode": True}, "xla"),
        ("cpu", {"q_len": BLOCKWISE_MIN_LEN, "decode": True}, "xla"),
    ],
)
def test_auto_picks_the_kernel_the_table_says(backend, changes, want):
    assert choose("auto", backend=backend, **{**BASE, **changes}) == want


def test_an_explicit_choice_is_kept_except_for_dropout_and_decoding():
    for implementation in ("xla", "blockwise", "jax_nn", "cudnn", "pallas"):
        assert choose(implementation, backend="cpu", **BASE) == implementation
        assert choose(implementation, backend="gpu", **{**BASE, "dropout": True}) == "xla"
    with pytest.raises(ValueError, match=r"implementation='flash'; choose one of \('auto', 'xla'"):
        check_implementation("flash")  # the one check, made when a layer or config is built


@pytest.mark.parametrize("implementation", ["jax_nn", "cudnn"])
def test_kernels_without_a_soft_cap_refuse_one_by_name(implementation):
    message = rf"implementation='{implementation}' runs jax.nn.dot_product_attention, which has no logit soft-cap"
    with pytest.raises(ValueError, match=message):
        choose(implementation, backend="gpu", softcap=50.0, **BASE)
    with pytest.raises(ValueError, match=message):
        nn.MultiHeadAttention(16, 2, implementation=implementation, logit_softcap=50.0, rngs=nnx.Rngs(0))
    assert choose(implementation, backend="gpu", **BASE) == implementation  # without a cap it runs


def test_auto_on_a_long_cpu_sequence_runs_blockwise_and_equals_dense(monkeypatch):
    calls = []
    real = ops.blockwise_attention
    monkeypatch.setattr(ops, "blockwise_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = np.random.default_rng(0).normal(size=(1, BLOCKWISE_MIN_LEN, 16)).astype(np.float32)
    dense = nn.MultiHeadAttention(16, 2, num_kv_heads=1, rngs=nnx.Rngs(0))
    auto = nn.MultiHeadAttention(16, 2, num_kv_heads=1, implementation="auto", rngs=nnx.Rngs(0))
    np.testing.assert_allclose(auto(x, is_causal=True), dense(x, is_causal=True), rtol=1e-4, atol=1e-5)
    assert calls == [1]
    auto(x[:, :16], is_causal=True)  # a short sequence takes the dense path
    assert calls == [1]


def _has_splash():
    try:
        import jax.experimental.pallas.ops.tpu.splash_attention  # noqa: F401
    except ImportError:
        return False
    return True


needs_splash = pytest.mark.skipif(not _has_splash(), reason="this jax has no Pallas splash kernel")


@needs_splash
@pytest.mark.parametrize("config", [dict(sliding_window=40), dict(num_kv_heads=1, positional="rope")])
def test_pallas_layer_equals_the_dense_layer_values_and_gradients(config):
    """implementation='pallas' runs ops.splash_attention (here in the Pallas interpreter, with a warning)."""
    x = np.random.default_rng(1).normal(size=(2, 128, 16)).astype(np.float32)
    build = lambda impl: nn.MultiHeadAttention(16, 2, implementation=impl, rngs=nnx.Rngs(0), **config)
    dense, pallas = build("xla"), build("pallas")

    def loss(model, x):
        return jnp.sum(jnp.sin(model(x, is_causal=True)))

    with pytest.warns(UserWarning, match="Pallas interpreter: correct but slow"):
        got, got_grads = nnx.value_and_grad(loss, argnums=(0, 1))(pallas, x)
    want, want_grads = nnx.value_and_grad(loss, argnums=(0, 1))(dense, x)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got_grads[1], want_grads[1], rtol=1e-4, atol=1e-5)
    got_params, want_params = nnx.state(got_grads[0], nnx.Param), nnx.state(want_grads[0], nnx.Param)
    for g, w in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_pallas_layer_refuses_an_array_mask_and_names_the_way_out():
    layer = nn.MultiHeadAttention(16, 2, implementation="pallas", rngs=nnx.Rngs(0))
    x = np.zeros((1, 128, 16), np.float32)
    with pytest.raises(
        ValueError, match=r"implementation='pallas' takes its mask structurally .* needs implementation='xla'"
    ):
        layer(x, mask=ops.causal_mask(128))


@pytest.mark.parametrize("implementation", ["blockwise", pytest.param("pallas", marks=needs_splash)])
def test_structural_kernels_take_segment_ids_and_equal_the_dense_segment_mask(implementation):
    """Packed sequences: `segment_ids` reach blockwise / pallas as arguments and the dense path as a mask."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 128, 16)).astype(np.float32)
    segment_ids = np.cumsum(rng.random((2, 128)) < 0.05, axis=1).astype(np.int32)
    build = lambda impl: nn.MultiHeadAttention(16, 2, implementation=impl, positional="rope", rngs=nnx.Rngs(0))

    def loss(model, x):
        return jnp.sum(jnp.sin(model(x, is_causal=True, segment_ids=segment_ids)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pallas off TPU warns that it runs in the interpreter
        got, got_dx = nnx.value_and_grad(loss, argnums=1)(build(implementation), x)
    masked = lambda model, x: jnp.sum(jnp.sin(model(x, is_causal=True, mask=ops.segment_mask(segment_ids))))
    want, want_dx = nnx.value_and_grad(masked, argnums=1)(build("xla"), x)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_allclose(got_dx, want_dx, rtol=1e-4, atol=1e-5)


def test_segment_ids_are_checked():
    layer = nn.MultiHeadAttention(16, 2, rngs=nnx.Rngs(0))
    x = np.zeros((1, 8, 16), np.float32)
    with pytest.raises(ValueError, match=r"`segment_ids` must be \[B=1, T=8\]; got shape \(1, 5\)"):
        layer(x, segment_ids=np.zeros((1, 5), np.int32))
    with pytest.raises(ValueError, match="segment_ids is for packed self-attention"):
        layer(x, x, segment_ids=np.zeros((1, 8), np.int32))
