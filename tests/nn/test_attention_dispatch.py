"""implementation="auto": which kernel runs for which call (nn/attention_dispatch.py), and that it computes the
same attention as the dense path."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import nn, ops
from jaxformer.nn.attention_dispatch import BLOCKWISE_MIN_LEN, choose

BASE = dict(
    dtype=jnp.bfloat16,
    head_dim=64,
    seq_len=1024,
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
        ("cpu", {}, "xla"),
        ("cpu", {"seq_len": BLOCKWISE_MIN_LEN}, "blockwise"),
        ("cpu", {"seq_len": BLOCKWISE_MIN_LEN, "sliding_window": 128}, "blockwise"),
        ("cpu", {"seq_len": BLOCKWISE_MIN_LEN, "has_bias": True}, "xla"),
        ("cpu", {"seq_len": BLOCKWISE_MIN_LEN, "has_mask": True}, "xla"),
        ("tpu", {}, "xla"),  # the Pallas TPU kernels are not wrapped yet
        ("gpu", {"dropout": True}, "xla"),
        ("gpu", {"decode": True}, "xla"),
        ("cpu", {"seq_len": BLOCKWISE_MIN_LEN, "decode": True}, "xla"),
    ],
)
def test_auto_picks_the_kernel_the_table_says(backend, changes, want):
    assert choose("auto", backend=backend, **{**BASE, **changes}) == want


def test_an_explicit_choice_is_kept_except_for_dropout_and_decoding():
    for implementation in ("xla", "blockwise", "jax_nn", "cudnn"):
        assert choose(implementation, backend="cpu", **BASE) == implementation
        assert choose(implementation, backend="gpu", **{**BASE, "dropout": True}) == "xla"
    with pytest.raises(ValueError, match=r"implementation='flash'; choose one of \('auto', 'xla'"):
        choose("flash", backend="cpu", **BASE)


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
