"""The public ops give the same answers traced and eager (chex variants: with and without jax.jit), against float64.

The other op tests check each function in depth; this file is the one place that runs the main primitives both
ways, so that a Python-side branch on a concrete value (which jit would turn into an error or a stale constant)
cannot hide in either mode.
"""

import chex
import jax.numpy as jnp
import numpy as np

from jaxformer import ops
from tests.ops import reference

B, T, N, K, H = 2, 8, 4, 2, 8


def qkv(seed: int = 0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, T, N, H)).astype(np.float32)
    k, v = (rng.normal(size=(B, T, K, H)).astype(np.float32) for _ in range(2))
    return q, k, v


class OpsVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_dot_product_attention_causal_gqa(self):
        q, k, v = qkv()
        fn = self.variant(ops.dot_product_attention, static_argnames=("is_causal",))
        got = fn(q, k, v, is_causal=True)
        chex.assert_shape(got, (B, T, N, H))
        np.testing.assert_allclose(got, reference.attention(q, k, v, mask=reference.causal(T, T)), atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_blockwise_attention_equals_dense(self):
        q, k, v = qkv(1)
        fn = self.variant(ops.blockwise_attention, static_argnames=("is_causal", "block_size"))
        got = fn(q, k, v, is_causal=True, block_size=4)
        np.testing.assert_allclose(got, reference.attention(q, k, v, mask=reference.causal(T, T)), atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_apply_rope_keeps_norms_and_shapes(self):
        q, _, _ = qkv(2)
        got = self.variant(ops.apply_rope)(q, jnp.arange(T))
        chex.assert_equal_shape([got, q])
        np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(q, axis=-1), rtol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_layer_norm_matches_float64(self):
        x = np.random.default_rng(3).normal(size=(B, T, 16)).astype(np.float32)
        scale, bias = np.full(16, 1.5, np.float32), np.full(16, 0.25, np.float32)
        got = self.variant(ops.layer_norm)(x, scale, bias)
        x64 = x.astype(np.float64)
        want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * 1.5 + 0.25
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    @chex.variants(with_jit=True, without_jit=True)
    def test_cross_entropy_counts_only_weighted_targets(self):
        logits = np.random.default_rng(4).normal(size=(B, T, 11)).astype(np.float32)
        labels = np.random.default_rng(5).integers(0, 11, size=(B, T)).astype(np.int32)
        mask = np.arange(T)[None, :] < np.array([[5], [8]])
        loss, count = self.variant(ops.cross_entropy)(logits, labels, weights=mask)
        lp = logits.astype(np.float64) - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
        nll = -np.take_along_axis(lp, labels[..., None], -1)[..., 0]
        np.testing.assert_allclose(loss, nll[mask].mean(), rtol=1e-5)
        assert float(count) == mask.sum()
