"""splash_attention (jax's Pallas TPU kernel, run here through the Pallas interpreter) equals dense attention,
values and gradients, for every mask it describes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import ops
from tests.ops import reference
from tests.ops.test_attention import make_qkv
from tests.ops.test_blockwise import dense_mask, packed_segments, value_and_grads

pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention", reason="this jax has no splash kernel")

CASES = {
    "none": {},
    "causal": {"is_causal": True},
    "causal_window": {"is_causal": True, "window": 70},
    "window": {"window": 150},
    "segments": {"segment_ids": packed_segments(2, 256)},
    "causal_segments": {"is_causal": True, "segment_ids": packed_segments(2, 256, 1)},
}


def splash(**kwargs):
    return lambda q, k, v: ops.splash_attention(q, k, v, block_size=128, interpret=True, **kwargs)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_equals_dense_values_and_gradients(case):
    B, T, N, K, H = 2, 256, 4, 2, 8  # two tiles of 128 each way, so whole tiles are skipped; GQA with G = 2
    q, k, v = make_qkv(B, T, T, N, K, H, H, seed=3)
    cot = np.random.default_rng(1).normal(size=(B, T, N, H)).astype(np.float32)
    mask = dense_mask(B, T, T, **case)

    got, got_grads = value_and_grads(splash(**case), q, k, v, cot)
    want, want_grads = value_and_grads(lambda q, k, v: ops.dot_product_attention(q, k, v, mask=mask), q, k, v, cot)
    np.testing.assert_allclose(got, reference.attention(q, k, v, mask=mask), rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("dq", "dk", "dv"), got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_cross_attention_mqa_value_width_and_scale():
    B, T, S, N, K, H, Hv = 1, 128, 384, 4, 1, 8, 16  # MQA; S = 3 tiles of 128 (384 is not a multiple of 256)
    q, k, v = make_qkv(B, T, S, N, K, H, Hv, seed=4)
    cot = np.random.default_rng(2).normal(size=(B, T, N, Hv)).astype(np.float32)
    for kwargs in ({}, {"is_causal": True}, {"window": 40}):
        mask = dense_mask(B, T, S, **kwargs)
        fn = lambda q, k, v, kw=kwargs: ops.splash_attention(q, k, v, scale=0.3, interpret=True, **kw)
        got, got_grads = value_and_grads(fn, q, k, v, cot)
        want, want_grads = value_and_grads(
            lambda q, k, v, m=mask: ops.dot_product_attention(q, k, v, mask=m, scale=0.3), q, k, v, cot
        )
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(kwargs))
        for g, w in zip(got_grads, want_grads, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=str(kwargs))


def test_jit_and_bfloat16():
    B, T, N, H = 1, 128, 2, 8
    q, k, v = make_qkv(B, T, T, N, N, H, H, seed=5)
    fn = splash(is_causal=True, window=100)  # a configuration no other test builds: first built inside jit
    jitted = jax.jit(fn)(q, k, v)
    eager = fn(q, k, v)  # reuses the kernel cached during that trace
    np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        eager, reference.attention(q, k, v, mask=dense_mask(B, T, T, is_causal=True, window=100)), rtol=1e-5, atol=1e-5
    )
    out = fn(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), eager, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize(
    "shapes, kwargs, match",
    [
        ((128, 128), {"interpret": False}, r"compiles a Pallas TPU kernel, and the default backend is 'cpu'"),
        ((100, 100), {}, r"T \(query length\) to be a multiple of 128 .* got 100"),
        ((128, 200), {}, r"S \(key length\) to be a multiple of 128 .* got 200"),
        ((128, 128), {"block_size": 96}, r"`block_size` must be a multiple of 128 .* got 96"),
        ((256, 128), {"window": 8}, r"`window` needs T <= S .* got T=256, S=128"),
        ((128, 256), {"segment_ids": np.zeros((1, 128), np.int32)}, r"self-attention \(T == S\); got T=128, S=256"),
        ((128, 128), {"segment_ids": np.zeros((1, 64), np.int32)}, r"`segment_ids` must be \[B=1, T=128\]; got shape"),
        ((128, 128), {"segment_ids": np.zeros((1, 128), np.float32)}, r"segment_ids"),
    ],
)
def test_unsupported_calls_say_what_to_change(shapes, kwargs, match):
    T, S = shapes
    q, k, v = make_qkv(1, T, S, 2, 2, 8, 8)
    kwargs = {"interpret": True, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        ops.splash_attention(q, k, v, **kwargs)


@pytest.mark.parametrize("T, S", [(0, 128), (128, 0)])
def test_empty_sequences_equal_the_dense_path(T, S):
    q, k, v = make_qkv(1, T, S, 2, 1, 8, 8)
    got = ops.splash_attention(q, k, v, interpret=True)
    assert got.shape == (1, T, 2, 8)
    np.testing.assert_array_equal(got, ops.dot_product_attention(q, k, v))


def test_bad_scale_and_lists():
    q, k, v = make_qkv(1, 128, 128, 2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"`scale` must be a finite number > 0; got -1"):
        ops.splash_attention(q, k, v, scale=-1.0, interpret=True)
    with pytest.raises(TypeError, match=r"`interpret` must be True or False"):
        ops.splash_attention(q, k, v, interpret="yes")


def test_logit_softcap_equals_dense_values_and_gradients():
    """The kernel caps q . k of the query the wrapper has scaled: cap(scale * q . k), as the dense path."""
    case = {"is_causal": True, "segment_ids": packed_segments(1, 256, 2)}
    B, T, N, K, H, cap = 1, 256, 2, 1, 8, 1.5  # two tiles each way; MQA
    q, k, v = make_qkv(B, T, T, N, K, H, H, seed=6)
    q = 4 * q  # scaled logits up to ~10 * cap
    cot = np.random.default_rng(4).normal(size=(B, T, N, H)).astype(np.float32)
    mask = dense_mask(B, T, T, **case)

    got, got_grads = value_and_grads(splash(logit_softcap=cap, scale=0.3, **case), q, k, v, cot)
    want, want_grads = value_and_grads(
        lambda q, k, v: ops.dot_product_attention(q, k, v, mask=mask, scale=0.3, logit_softcap=cap), q, k, v, cot
    )
    uncapped = splash(scale=0.3, **case)(q, k, v)  # the cap is part of the cached kernel's key
    assert np.abs(np.asarray(got) - np.asarray(uncapped)).max() > 1e-2
    np.testing.assert_allclose(got, reference.attention(q, k, v, mask=mask, scale=0.3, softcap=cap), atol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("dq", "dk", "dv"), got_grads, want_grads, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=name)


def test_bad_logit_softcap_is_named():
    q, k, v = make_qkv(1, 128, 128, 2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"`logit_softcap` must be a finite number > 0; got 0"):
        ops.splash_attention(q, k, v, logit_softcap=0, interpret=True)
    with pytest.raises(TypeError, match=r"`logit_softcap` must be a real number; got 'x'"):
        ops.splash_attention(q, k, v, logit_softcap="x", interpret=True)
