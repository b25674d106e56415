"""MultiHeadAttention(sinks=True), GPT-OSS's attention sinks: the parameter, a float64 reference of the layer, KV-cache
decoding token by token equal to the full pass (full and ring caches, under jit), the kernels that apply sinks and the
ones refused."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import nn, ops
from jaxformer.nn import attention_dispatch
from tests.nn.test_attention_layer import np_project
from tests.nn.test_layers import randomize
from tests.ops.test_attention_sinks import attention_with_sinks64

D, N, K = 32, 4, 2
X = np.random.default_rng(0).normal(size=(2, 7, D)).astype(np.float32)
YARN = ops.RopeScaling("yarn", 4.0, original_max_len=4, beta_fast=8.0, beta_slow=1.0, truncate=False)


def sink_layer(seed=0, **kwargs):
    m = nn.MultiHeadAttention(D, N, num_kv_heads=K, sinks=True, rngs=nnx.Rngs(0), **kwargs)
    return randomize(m, seed)


def test_the_sinks_parameter_is_one_zero_per_query_head_on_the_heads_axis():
    m = nn.MultiHeadAttention(D, N, num_kv_heads=K, sinks=True, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert m.sinks.shape == (N,) and m.sinks.dtype == jnp.bfloat16
    np.testing.assert_array_equal(m.sinks[...], np.zeros(N))
    assert nn.logical_axes(m.sinks) == ("heads",)
    assert nn.MultiHeadAttention(D, N, rngs=nnx.Rngs(0)).sinks is None
    params = {"/".join(map(str, path)) for path, p in nnx.iter_graph(m) if isinstance(p, nnx.Param)}
    assert params == {"w_q", "w_k", "w_v", "w_o", "sinks"}


def test_layer_matches_a_float64_reference():
    m = sink_layer()
    mask = np.random.default_rng(1).random((2, 1, 7, 7)) < 0.7
    mask[0, 0, 3] = False  # a query with no key: all its weight goes to the sinks, the attention output is 0
    q, k, v = np_project(X, m.w_q), np_project(X, m.w_k), np_project(X, m.w_v)
    out = attention_with_sinks64(q, k, v, np.asarray(m.sinks[...]), mask=mask)
    want = np.einsum("btnh,nhd->btd", out, np.asarray(m.w_o[...], np.float64))
    np.testing.assert_allclose(m(X, mask=mask), want, rtol=1e-4, atol=1e-4)
    assert float(jnp.abs(m(X, mask=mask)[0, 3]).max()) == 0.0


CONFIGS = {
    "none": dict(),
    "rope_yarn": dict(positional="rope", rope_interleaved=False, rope_scaling=YARN),
    "alibi": dict(positional="alibi"),
    "window_full_cache": dict(positional="rope", sliding_window=3),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_decoding_token_by_token_equals_the_full_pass(config):
    m = sink_layer(**config)
    full = m(X, is_causal=True)
    m.init_cache(2, 9)
    steps = [m(X[:, t : t + 1], decode=True) for t in range(7)]
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, rtol=1e-5, atol=1e-5)
    m.init_cache(2, 9)  # a prefill, then one token, then several
    pieces = [m(X[:, :3], decode=True), m(X[:, 3:4], decode=True), m(X[:, 4:7], decode=True)]
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)


def test_a_ring_cache_decodes_jitted_token_by_token_equal_to_the_full_pass():
    """A sliding window of 3 with a cache of 16: a ring buffer of 3 entries; every step a jitted pure function."""
    m = sink_layer(1, positional="rope", sliding_window=3, rope_scaling=YARN)
    full = m(X, is_causal=True)
    m.init_cache(2, 16)
    assert m.is_ring_cache
    graphdef, state = nnx.split(m)

    @jax.jit
    def step(state, x):
        layer = nnx.merge(graphdef, state)
        return layer(x, decode=True), nnx.state(layer)

    outs = []
    for t in range(7):
        out, state = step(state, X[:, t : t + 1])
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)


def test_the_sinks_change_the_output_and_learn():
    m = sink_layer(2)
    plain = nn.MultiHeadAttention(D, N, num_kv_heads=K, rngs=nnx.Rngs(0))
    for name in ("w_q", "w_k", "w_v", "w_o"):
        getattr(plain, name)[...] = getattr(m, name)[...]
    assert not np.allclose(m(X, is_causal=True), plain(X, is_causal=True), atol=1e-3)
    m.sinks[...] = jnp.full((N,), -jnp.inf)  # a sink of -inf is no sink
    np.testing.assert_allclose(m(X, is_causal=True), plain(X, is_causal=True), rtol=1e-5, atol=1e-5)
    m.sinks[...] = jnp.zeros((N,))
    grads = nnx.grad(lambda m: jnp.sum(m(X, is_causal=True) ** 2))(m)
    assert grads["sinks"][...].shape == (N,) and float(jnp.abs(grads["sinks"][...]).min()) > 0


@pytest.mark.parametrize("implementation", ["blockwise", "auto"])
@pytest.mark.parametrize("window", [None, 3])
def test_blockwise_and_auto_apply_the_sinks_as_xla_does(implementation, window):
    ref = sink_layer(3, sliding_window=window)
    other = nn.MultiHeadAttention(
        D, N, num_kv_heads=K, sinks=True, sliding_window=window, implementation=implementation, rngs=nnx.Rngs(0)
    )
    nnx.update(other, nnx.state(ref))
    # Outputs reach ~50: the kernels' summation orders differ by float32 rounding of that (4.6e-5 seen on an
    # AVX-512 EPYC), hence atol 1e-4 as for the packed call below.
    np.testing.assert_allclose(other(X, is_causal=True), ref(X, is_causal=True), rtol=1e-5, atol=1e-4)
    segments = np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1]], np.int32)
    np.testing.assert_allclose(
        other(X, is_causal=True, segment_ids=segments),
        ref(X, is_causal=True, segment_ids=segments),
        rtol=1e-5,
        atol=1e-4,
    )


@pytest.mark.parametrize("implementation", ["jax_nn", "cudnn", "pallas"])
def test_kernels_without_sinks_are_refused(implementation):
    with pytest.raises(ValueError, match=rf"sinks=True .* implementation='{implementation}' has none\. Use 'auto'"):
        nn.MultiHeadAttention(D, N, sinks=True, implementation=implementation, rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"`sinks` must be True or False"):
        nn.MultiHeadAttention(D, N, sinks=1, rngs=nnx.Rngs(0))


def test_auto_on_a_backend_whose_first_choice_has_no_sinks_falls_back(monkeypatch):
    """On a TPU "auto" would pick pallas (lengths multiples of 128): with sinks it runs what the CPU would (xla)."""
    x = np.random.default_rng(4).normal(size=(1, 128, D)).astype(np.float32)
    ref = sink_layer(4)
    auto = nn.MultiHeadAttention(D, N, num_kv_heads=K, sinks=True, implementation="auto", rngs=nnx.Rngs(0))
    nnx.update(auto, nnx.state(ref))
    common = dict(dtype=jnp.float32, head_dim=8, q_len=128, kv_len=128, has_mask=False, has_bias=False)
    common.update(sliding_window=None, dropout=False, decode=False)
    assert attention_dispatch.choose("auto", **common, backend="tpu") == "pallas"
    monkeypatch.setattr(attention_dispatch.jax, "default_backend", lambda: "tpu")
    np.testing.assert_allclose(auto(x, is_causal=True), ref(x, is_causal=True), rtol=1e-5, atol=1e-5)
