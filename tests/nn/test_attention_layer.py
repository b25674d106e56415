"""MultiHeadAttention: NumPy reference, KV-cache decoding equals the full pass, implementations, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import nn, ops
from tests.nn.test_layers import randomize
from tests.ops import reference

D, N, K = 32, 4, 2
X = np.random.default_rng(0).normal(size=(2, 7, D)).astype(np.float32)


def np_project(x, w, b=None):
    out = np.einsum("btd,dnh->btnh", np.asarray(x, np.float64), np.asarray(w[...], np.float64))
    return out if b is None else out + np.asarray(b[...], np.float64)


def reference_layer(m, x, context=None, mask=None):
    c = x if context is None else context
    q, k, v = np_project(x, m.w_q, m.b_q), np_project(c, m.w_k, m.b_k), np_project(c, m.w_v, m.b_v)
    out = reference.attention(q, k, v, mask=mask)
    out = np.einsum("btnh,nhd->btd", out, np.asarray(m.w_o[...], np.float64))
    return out if m.b_o is None else out + np.asarray(m.b_o[...], np.float64)


@pytest.mark.parametrize("num_kv_heads, use_bias", [(N, True), (K, False), (1, False)], ids=["mha", "gqa", "mqa"])
def test_self_attention_matches_reference(num_kv_heads, use_bias):
    m = randomize(nn.MultiHeadAttention(D, N, num_kv_heads=num_kv_heads, use_bias=use_bias, rngs=nnx.Rngs(0)))
    mask = np.random.default_rng(1).random((2, 1, 7, 7)) < 0.7
    np.testing.assert_allclose(m(X, mask=mask), reference_layer(m, X, mask=mask), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        m(X, is_causal=True), reference_layer(m, X, mask=reference.causal(7, 7)), rtol=1e-4, atol=1e-4
    )


def test_cross_attention_with_a_different_context_width():
    m = randomize(nn.MultiHeadAttention(D, N, num_kv_heads=K, context_dim=12, rngs=nnx.Rngs(0)))
    context = np.random.default_rng(2).normal(size=(2, 5, 12)).astype(np.float32)
    valid = ops.padding_mask(np.ones((2, 7), bool), np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool))
    np.testing.assert_allclose(
        m(X, context, mask=valid), reference_layer(m, X, context, mask=np.asarray(valid)), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("positional", ["none", "rope", "alibi"])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_cached_decoding_equals_the_full_causal_pass(positional, qk_norm):
    """Prefill several tokens at once, then decode one and then several: the same as one teacher-forced pass."""
    m = nn.MultiHeadAttention(D, N, num_kv_heads=K, positional=positional, qk_norm=qk_norm, rngs=nnx.Rngs(0))
    full = m(X, is_causal=True)
    m.init_cache(2, 12)
    pieces = [m(X[:, :4], decode=True), m(X[:, 4:5], decode=True), m(X[:, 5:7], decode=True)]
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(m.cache_index[...], [7, 7])


def test_decode_step_jits_as_a_pure_function_of_the_split_state():
    m = nn.MultiHeadAttention(D, N, num_kv_heads=K, positional="rope", rngs=nnx.Rngs(0))
    full = m(X, is_causal=True)
    m.init_cache(2, 8)
    graphdef, state = nnx.split(m)

    @jax.jit
    def step(state, x):
        layer = nnx.merge(graphdef, state)
        out = layer(x, decode=True)
        return out, nnx.state(layer)

    outs = []
    for t in range(7):
        out, state = step(state, X[:, t : t + 1])
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("implementation", ["jax_nn", "blockwise"])
def test_implementations_agree(implementation):
    ref = nn.MultiHeadAttention(D, N, num_kv_heads=K, rngs=nnx.Rngs(0))
    other = nn.MultiHeadAttention(D, N, num_kv_heads=K, implementation=implementation, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(other(X, is_causal=True), ref(X, is_causal=True), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN is there to run on a GPU")
def test_cudnn_without_a_gpu_says_so():
    """A jaxformer ValueError before anything compiles (jax itself raised a RuntimeError from inside the call)."""
    m = nn.MultiHeadAttention(D, N, implementation="cudnn", dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    if jax.default_backend() == "gpu":
        pytest.skip("cuDNN runs here")
    with pytest.raises(ValueError, match=r"implementation='cudnn' runs cuDNN flash attention on an NVIDIA GPU"):
        m(X, is_causal=True)


@pytest.mark.parametrize("is_causal", [True, False])
def test_sliding_window_matches_the_reference(is_causal):
    m = randomize(nn.MultiHeadAttention(D, N, num_kv_heads=K, sliding_window=3, rngs=nnx.Rngs(0)))
    t, s = np.arange(7)[:, None], np.arange(7)[None, :]
    window = ((t - s >= 0) & (t - s < 3)) if is_causal else (np.abs(t - s) < 3)
    want = reference_layer(m, X, mask=window[None, None])
    np.testing.assert_allclose(m(X, is_causal=is_causal), want, rtol=1e-4, atol=1e-4)
    for implementation in ("jax_nn", "blockwise"):
        other = nn.MultiHeadAttention(
            D, N, num_kv_heads=K, sliding_window=3, implementation=implementation, rngs=nnx.Rngs(0)
        )
        nnx.update(other, nnx.state(m))
        np.testing.assert_allclose(other(X, is_causal=is_causal), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("positional", ["none", "rope", "alibi"])
def test_cached_decoding_with_a_sliding_window(positional):
    m = nn.MultiHeadAttention(D, N, num_kv_heads=K, positional=positional, sliding_window=2, rngs=nnx.Rngs(0))
    full = m(X, is_causal=True)
    m.init_cache(2, 9)
    pieces = [m(X[:, :3], decode=True), m(X[:, 3:4], decode=True), m(X[:, 4:7], decode=True)]
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positional", ["rope", "alibi"])
def test_packed_documents_with_their_own_positions_equal_each_document_alone(positional):
    """Two documents in one row (segment ids, positions restarting at the second): each one's output equals the
    layer on that document alone, ALiBi's distances included (its keys sit at their tokens' positions)."""
    m = randomize(nn.MultiHeadAttention(D, N, num_kv_heads=K, positional=positional, rngs=nnx.Rngs(0)))
    x = np.random.default_rng(5).normal(size=(1, 7, D)).astype(np.float32)
    ids = np.array([[0, 0, 0, 1, 1, 1, 1]], np.int32)
    positions = np.array([[0, 1, 2, 0, 1, 2, 3]], np.int32)
    packed = m(x, is_causal=True, segment_ids=ids, positions=positions)
    np.testing.assert_allclose(packed[:, :3], m(x[:, :3], is_causal=True), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[:, 3:], m(x[:, 3:], is_causal=True), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positional", ["rope", "alibi"])
def test_a_window_shorter_than_the_cache_decodes_from_a_ring_of_window_entries(positional):
    """Right-padded rows of 5 and 2 real tokens, prefilled at once (valid= marks them), then 3 steps of one token:
    each row equals its own teacher-forced pass, though the cache holds only the last W = 3 keys."""
    m = randomize(
        nn.MultiHeadAttention(D, N, num_kv_heads=K, positional=positional, sliding_window=3, rngs=nnx.Rngs(0))
    )
    x = np.random.default_rng(3).normal(size=(2, 8, D)).astype(np.float32)
    m.init_cache(2, 16)
    assert m.is_ring_cache and m.cached_key.shape == (2, 3, K, D // N)
    lengths = np.array([5, 2])
    valid = np.arange(5)[None, :] < lengths[:, None]
    prefill = m(x[:, :5], decode=True, valid=valid)
    np.testing.assert_array_equal(m.cache_index[...], lengths)
    steps = [m(x[:, 5 + i : 6 + i], decode=True) for i in range(3)]
    for b, n in enumerate(lengths):
        row = np.concatenate([x[b, :n], x[b, 5:8]])[None]
        full = m(row, is_causal=True)
        np.testing.assert_allclose(prefill[b, :n], full[0, :n], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(jnp.concatenate([s[b] for s in steps]), full[0, n:], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(m.cache_index[...], lengths + 3)


def test_ring_caches_are_moved_by_valid_not_by_set_cache_index():
    from jaxformer.decoding import set_cache_index

    m = nn.MultiHeadAttention(D, N, sliding_window=3, rngs=nnx.Rngs(0))
    m.init_cache(2, 2)  # the window is longer than the cache: a plain cache, which overflows as any other
    assert not m.is_ring_cache and m.cached_key.shape[1] == 2
    m.init_cache(2, 8)
    with pytest.raises(ValueError, match="set_cache_index cannot move a ring-buffer cache"):
        set_cache_index(m, jnp.array([1, 1]))
    with pytest.raises(ValueError, match=r"`valid` with decode=True must mark right-padded rows .* row 1 is \[0, 1\]"):
        m(X[:, :2], decode=True, valid=np.array([[True, True], [False, True]]))
    with pytest.raises(ValueError, match="`valid` is for decode=True calls"):
        m(X[:, :2], valid=np.ones((2, 2), bool))
    with pytest.raises(ValueError, match=r"`valid` must be \[B, T\] = \(2, 2\)"):
        m(X[:, :2], decode=True, valid=np.ones((2, 3), bool))


def test_dropout_in_training_only():
    m = nn.MultiHeadAttention(D, N, dropout_rate=0.5, rngs=nnx.Rngs(0))
    assert not np.allclose(m(X), m(X))
    m.eval()
    np.testing.assert_array_equal(m(X), m(X))


def test_parameters_carry_logical_axes():
    m = nn.MultiHeadAttention(D, N, num_kv_heads=K, use_bias=True, qk_norm=True, rngs=nnx.Rngs(0))
    axes = {"/".join(map(str, path)): nn.logical_axes(p) for path, p in nnx.iter_graph(m) if isinstance(p, nnx.Param)}
    assert axes == {
        "w_q": ("embed", "heads", "head_dim"),
        "w_k": ("embed", "kv_heads", "head_dim"),
        "w_v": ("embed", "kv_heads", "head_dim"),
        "w_o": ("heads", "head_dim", "embed"),
        "b_q": ("heads", "head_dim"),
        "b_k": ("kv_heads", "head_dim"),
        "b_v": ("kv_heads", "head_dim"),
        "b_o": ("embed",),
        "q_norm/scale": ("head_dim",),
        "k_norm/scale": ("head_dim",),
    }


def test_errors():
    with pytest.raises(ValueError, match="multiple of num_kv_heads=3"):
        nn.MultiHeadAttention(D, N, num_kv_heads=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="positional='learned'"):
        nn.MultiHeadAttention(D, N, positional="learned", rngs=nnx.Rngs(0))
    m = nn.MultiHeadAttention(D, N, positional="rope", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="call init_cache"):
        m(X, decode=True)
    with pytest.raises(ValueError, match=r"`x` must be \[B, T, D=32\]"):
        m(X[..., :8])
    with pytest.raises(ValueError, match="positional='rope' is for self-attention"):
        m(X, X)
    with pytest.raises(ValueError, match="`sliding_window` must be a positive int; got 0"):
        nn.MultiHeadAttention(D, N, sliding_window=0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="sliding_window is for self-attention"):
        nn.MultiHeadAttention(D, N, sliding_window=2, rngs=nnx.Rngs(0))(X, X)
    m.init_cache(2, 4)
    with pytest.raises(ValueError, match="do not fit a KV cache of max_len=4"):
        m(X, decode=True)
    blockwise = nn.MultiHeadAttention(D, N, implementation="blockwise", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="implementation='blockwise'"):
        blockwise(X, mask=np.ones((1, 1, 7, 7), bool))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"d_model": 0}, ValueError, r"`d_model` must be a positive int; got 0"),
        ({"num_heads": 0}, ValueError, r"`num_heads` must be a positive int; got 0"),
        ({"num_heads": -2}, ValueError, r"`num_heads` must be a positive int; got -2"),
        ({"num_kv_heads": 0}, ValueError, r"`num_kv_heads` must be a positive int; got 0"),
        ({"head_dim": 0}, ValueError, r"`head_dim` must be a positive int; got 0"),
        ({"head_dim": 2.5}, ValueError, r"`head_dim` must be a positive int; got 2.5"),
        ({"context_dim": 0}, ValueError, r"`context_dim` must be a positive int; got 0"),
        ({"positional": "rope", "rope_base": 0.0}, ValueError, r"`rope_base` must be a finite number > 0"),
        ({"qk_norm": True, "qk_norm_epsilon": -1.0}, ValueError, r"`qk_norm_epsilon` must be a finite number > 0"),
        ({"dropout_rate": 1.5}, ValueError, r"`dropout_rate` must be a finite number in \[0, 1\); got 1.5"),
        ({"dropout_rate": -0.1}, ValueError, r"`dropout_rate` must be a finite number in \[0, 1\)"),
        ({"sliding_window": -3}, ValueError, r"`sliding_window` must be a positive int; got -3"),
        ({"rope_scaling": "linear"}, TypeError, r"`rope_scaling` must be an ops.RopeScaling or None"),
        ({"dtype": jnp.int32}, TypeError, r"`dtype` must be a floating dtype .*got int32"),
        ({"param_dtype": "foo"}, TypeError, r"`param_dtype` must be a floating dtype .*got 'foo'"),
        ({"use_bias": "yes"}, TypeError, r"`use_bias` must be True or False"),
    ],
)
def test_constructor_refuses_bad_values(kwargs, error, match):
    with pytest.raises(error, match=match):
        nn.MultiHeadAttention(**{"d_model": D, "num_heads": N, "rngs": nnx.Rngs(0), **kwargs})


def test_call_checks_its_inputs():
    m = nn.MultiHeadAttention(D, N, num_kv_heads=K, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(m(X.tolist()), m(X), rtol=1e-6)  # a nested list is an array
    with pytest.raises(TypeError, match=r"`x` must have a floating dtype; got int32"):
        m(X.astype(np.int32))
    with pytest.raises(TypeError, match=r"`x` must be a numeric array"):
        m("abc")
    for context in (X[..., :8], X[:1], X[0]):
        with pytest.raises(ValueError, match=r"`context` must be \[B=2, S, Dc=32\]"):
            m(X, context)
    with pytest.raises(TypeError, match=r"`context` must have a floating dtype"):
        m(X, X.astype(np.int32))
    with pytest.raises(TypeError, match=r"`positions` must have an integer dtype"):
        m(X, positions=np.arange(7, dtype=np.float32))
    with pytest.raises(ValueError, match=r"`positions` must be \[T\] = \(7,\) or \[B, T\] = \(2, 7\)"):
        m(X, positions=np.arange(5))
    with pytest.raises(TypeError, match=r"`segment_ids` must have an integer dtype"):
        m(X, segment_ids=np.zeros((2, 7), np.float32))
    with pytest.raises(TypeError, match=r"`is_causal` must be True or False"):
        m(X, is_causal="yes")


IMPLEMENTATIONS_ON_CPU = ["xla", "blockwise", "jax_nn", "auto", "pallas"]


@pytest.mark.filterwarnings("ignore:implementation='pallas'")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS_ON_CPU)
@pytest.mark.parametrize("is_causal", [False, True])
def test_empty_sequences_give_empty_outputs_with_every_implementation(implementation, is_causal):
    """T = 0 self-attention gives [B, 0, D]; cross-attention over S = 0 keys gives zeros (plus the output bias);
    the same with every kernel that runs on CPU."""
    m = nn.MultiHeadAttention(D, N, num_kv_heads=K, implementation=implementation, rngs=nnx.Rngs(0))
    empty = np.zeros((2, 0, D), np.float32)
    assert m(empty, is_causal=is_causal).shape == (2, 0, D)
    if implementation != "pallas":  # splash needs T % 128 == 0 (a ValueError that says so, tested in ops)
        np.testing.assert_array_equal(m(X, empty), np.zeros((2, 7, D)))


@pytest.mark.parametrize("options", [{"sliding_window": 2}, {"positional": "rope"}, {"positional": "alibi"}])
def test_empty_sequences_with_windows_and_positions(options):
    m = nn.MultiHeadAttention(D, N, rngs=nnx.Rngs(0), **options)
    assert m(np.zeros((1, 0, D), np.float32), is_causal=True).shape == (1, 0, D)
    m.init_cache(1, 4)
    assert m(np.zeros((1, 0, D), np.float32), decode=True).shape == (1, 0, D)


def test_kv_cache_overflow_raises_and_never_clamps():
    """Writing past max_len raises when the index is known; under jit (a traced index) the overflowing call
    returns NaN and leaves the cache as it was: never a clamped write over earlier tokens."""
    m = nn.MultiHeadAttention(D, N, rngs=nnx.Rngs(0))
    m.init_cache(2, 8)
    m(X[:, :6], decode=True)
    with pytest.raises(ValueError, match=r"KV cache overflow: sequence 0 has 6 cached tokens and this call adds T=3"):
        m(X[:, :3], decode=True)
    m(X[:, :2], decode=True)  # exactly fills the cache
    with pytest.raises(ValueError, match=r"KV cache overflow: sequence 0 has 8 cached tokens .* T=1"):
        m(X[:, :1], decode=True)

    step = nnx.jit(lambda m, x: m(x, decode=True))
    jitted = nn.MultiHeadAttention(D, N, rngs=nnx.Rngs(0))
    jitted.init_cache(2, 8)
    step(jitted, X[:, :6])
    before = np.asarray(jitted.cached_key[...])
    out = step(jitted, X[:, :3])
    assert np.isnan(np.asarray(out)).all()
    np.testing.assert_array_equal(jitted.cached_key[...], before)


def test_cache_batch_and_init_cache_arguments():
    m = nn.MultiHeadAttention(D, N, rngs=nnx.Rngs(0))
    m.init_cache(1, 8)
    with pytest.raises(ValueError, match=r"`x` has batch size 2 but the KV cache was made for 1 sequences"):
        m(X, decode=True)
    for batch, max_len, name in ((0, 4, "batch_size"), (2.5, 4, "batch_size"), (1, -1, "max_len")):
        with pytest.raises(ValueError, match=f"`{name}` must be a positive int"):
            m.init_cache(batch, max_len)
