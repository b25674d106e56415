"""LoRA adapters (jaxformer/nn/lora.py) and the layers that apply them: the adapter against a float64 NumPy reference,
its initialisation and merge delta, dropout on its input, and MultiHeadAttention / FeedForward with adapters."""

import math
import string

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import nn, ops
from jaxformer.nn import lora
from tests.ops import reference

D, N, K, H, F = 16, 4, 2, 8, 24
RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 5, D)).astype(np.float32)  # [B, T, D]
XH = RNG.normal(size=(2, 5, N, H)).astype(np.float32)  # [B, T, N, H]: the input of an output projection


def f64(x):
    return np.asarray(x, np.float64)


def randomize_b(adapter, seed):
    """B ~ N(0, 1) (B starts at zero, which would hide every bug of the B path); returns the adapter."""
    adapter.b[...] = jnp.asarray(np.random.default_rng(seed).normal(size=adapter.b.shape), jnp.float32)
    return adapter


def np_delta(adapter, x):
    """scale * (x A) B in float64, from flattened A [fan_in, r] and B [r, fan_out] (no einsum subscripts)."""
    n_in, n_out = len(adapter.in_shape), len(adapter.out_shape)
    lead = x.shape[: x.ndim - n_in]
    a = f64(adapter.a[...]).reshape(math.prod(adapter.in_shape), adapter.rank)
    b = f64(adapter.b[...]).reshape(adapter.rank, math.prod(adapter.out_shape))
    flat = f64(x).reshape(*lead, -1) @ a @ b
    assert n_out >= 1
    return adapter.scale * flat.reshape(*lead, *adapter.out_shape)


# -- _rank_subscripts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subscripts, via_a, via_b",
    [
        ("BTD,DNH->BTNH", "BTD,D{r}->BT{r}", "BT{r},{r}NH->BTNH"),
        ("BTNH,NHD->BTD", "BTNH,NH{r}->BT{r}", "BT{r},{r}D->BTD"),
        ("...D,DF->...F", "...D,D{r}->...{r}", "...{r},{r}F->...F"),
    ],
)
def test_rank_subscripts_route_the_product_through_a_free_rank_letter(subscripts, via_a, via_b):
    to_rank, from_rank = lora._rank_subscripts(subscripts)
    r = to_rank.split("->")[1][-1]
    assert r in string.ascii_letters and r not in subscripts
    assert (to_rank, from_rank) == (via_a.format(r=r), via_b.format(r=r))


def test_rank_subscripts_refuse_a_weight_whose_output_axes_come_first():
    with pytest.raises(ValueError, match=r"input axes come first; got 'BTD,NHD->BTNH'"):
        lora._rank_subscripts("BTD,NHD->BTNH")


# -- the adapter's update against a float64 reference -----------------------------------------------------------

# (subscripts, x, the weight's input axes, its output axes)
WEIGHTS = {
    "qkv": ("BTD,DNH->BTNH", X, (D,), (N, H)),
    "out": ("BTNH,NHD->BTD", XH, (N, H), (D,)),
    "ffn": ("...D,DF->...F", X, (D,), (F,)),
}


@pytest.mark.parametrize("use_rslora", [False, True], ids=["alpha/r", "rslora"])
@pytest.mark.parametrize("weight", list(WEIGHTS))
def test_adapter_update_equals_the_float64_reference(weight, use_rslora):
    subscripts, x, in_shape, out_shape = WEIGHTS[weight]
    rank, alpha = 4, 6.0
    adapter = lora.LoRA(in_shape, out_shape, rank=rank, alpha=alpha, use_rslora=use_rslora, rngs=nnx.Rngs(1))
    randomize_b(adapter, seed=2)
    assert adapter.scale == (alpha / 2.0 if use_rslora else alpha / 4.0)  # alpha / sqrt(4) vs alpha / 4
    got = adapter(subscripts, x, dtype=jnp.float32)
    assert got.dtype == jnp.float32 and got.shape == (*x.shape[: x.ndim - len(in_shape)], *out_shape)
    want = np_delta(adapter, x)
    assert np.max(np.abs(want)) > 0.5  # B is nonzero: the update is not trivially zero
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    # dense: the frozen product plus the update; without an adapter, the plain product (bit for bit)
    w = nnx.Param(jnp.asarray(RNG.normal(size=(*in_shape, *out_shape)), jnp.float32))
    base = np.tensordot(f64(x), f64(w[...]), axes=len(in_shape))
    np.testing.assert_allclose(
        lora.dense(subscripts, x, w, adapter, dtype=jnp.float32), base + want, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_array_equal(
        lora.dense(subscripts, x, w, None, dtype=jnp.float32), ops.dense(subscripts, x, w[...], dtype=jnp.float32)
    )


def test_adapter_computes_in_the_requested_dtype():
    adapter = randomize_b(lora.LoRA((D,), (N, H), rank=2, alpha=4.0, rngs=nnx.Rngs(0)), seed=1)
    got = adapter("BTD,DNH->BTNH", X, dtype=jnp.bfloat16)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(f64(got), np_delta(adapter, X), rtol=3e-2, atol=3e-2)


def test_init_a_uniform_within_one_over_sqrt_fan_in_and_b_zero():
    rank = 16
    adapter = lora.LoRA((N, H), (D,), rank=rank, alpha=1.0, rngs=nnx.Rngs(3))  # fan_in = N * H = 32
    a, b = np.asarray(adapter.a[...]), np.asarray(adapter.b[...])
    assert isinstance(adapter.a, nnx.LoRAParam) and isinstance(adapter.b, nnx.LoRAParam)
    assert a.shape == (N, H, rank) and b.shape == (rank, D) and a.dtype == b.dtype == np.float32
    bound = 1.0 / math.sqrt(N * H)
    assert np.max(np.abs(a)) <= bound and np.max(np.abs(a)) > 0.95 * bound  # 512 draws fill (-bound, bound)
    np.testing.assert_allclose(np.std(a), bound / math.sqrt(3.0), rtol=0.1)  # U(-c, c) has std c / sqrt(3)
    assert abs(np.mean(a)) < 0.1 * bound
    np.testing.assert_array_equal(b, 0.0)
    np.testing.assert_array_equal(adapter("BTNH,NHD->BTD", XH, dtype=jnp.float32), 0.0)  # B = 0: no change


def test_param_dtype_sets_the_dtype_of_a_and_b():
    adapter = lora.LoRA((D,), (F,), rank=2, alpha=1.0, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert adapter.a.dtype == adapter.b.dtype == jnp.bfloat16
    assert adapter.weight_delta().dtype == jnp.float32


@pytest.mark.parametrize("stack", [(), (3,)], ids=["single", "stacked"])
@pytest.mark.parametrize("weight", ["qkv", "out"])
def test_weight_delta_is_scale_times_a_b_shaped_like_the_weight(weight, stack):
    subscripts, x, in_shape, out_shape = WEIGHTS[weight]
    rank, alpha = 3, 5.0
    adapter = lora.LoRA(in_shape, out_shape, rank=rank, alpha=alpha, rngs=nnx.Rngs(4))
    rng = np.random.default_rng(5)
    a = rng.normal(size=(*stack, *in_shape, rank))
    b = rng.normal(size=(*stack, rank, *out_shape))
    adapter.a.set_value(jnp.asarray(a, jnp.float32))
    adapter.b.set_value(jnp.asarray(b, jnp.float32))
    got = adapter.weight_delta()
    assert got.shape == (*stack, *in_shape, *out_shape) and got.dtype == jnp.float32
    a32, b32 = f64(adapter.a[...]), f64(adapter.b[...])
    fan_in, fan_out = math.prod(in_shape), math.prod(out_shape)
    want = (alpha / rank) * np.matmul(a32.reshape(*stack, fan_in, rank), b32.reshape(*stack, rank, fan_out))
    np.testing.assert_allclose(got, want.reshape(*stack, *in_shape, *out_shape), rtol=1e-5, atol=1e-5)
    if not stack:  # merging: x (W + delta) == x W + the adapter's update
        w = RNG.normal(size=(*in_shape, *out_shape)).astype(np.float32)
        merged = ops.dense(subscripts, x, jnp.asarray(w) + got, dtype=jnp.float32)
        unmerged = lora.dense(subscripts, x, nnx.Param(jnp.asarray(w)), adapter, dtype=jnp.float32)
        np.testing.assert_allclose(merged, unmerged, rtol=1e-4, atol=1e-4)


def test_dropout_applies_to_the_adapter_input_only():
    """With A = I and B = I (r = D) the update is scale * dropout(x): each entry is 0 or scale * x / (1 - p); the
    frozen product never sees the dropout."""
    p, alpha = 0.5, 2.0
    adapter = lora.LoRA((D,), (D,), rank=D, alpha=alpha, dropout_rate=p, rngs=nnx.Rngs(params=0, dropout=1))
    adapter.a.set_value(jnp.eye(D, dtype=jnp.float32))
    adapter.b.set_value(jnp.eye(D, dtype=jnp.float32))
    scale = alpha / D
    w = nnx.Param(jnp.zeros((D, D), jnp.float32))  # the frozen path contributes zero: dense == the update
    train = np.asarray(lora.dense("...D,DF->...F", X, w, adapter, dtype=jnp.float32))
    kept = np.isclose(train, scale * X / (1 - p), rtol=1e-5, atol=0)
    dropped = train == 0.0
    assert np.all(kept | dropped) and 0.25 < dropped.mean() < 0.75
    again = np.asarray(adapter("...D,DF->...F", X, dtype=jnp.float32))
    assert not np.array_equal(again == 0.0, dropped)  # a fresh mask each call
    adapter.eval()
    np.testing.assert_allclose(adapter("...D,DF->...F", X, dtype=jnp.float32), scale * X, rtol=1e-6, atol=1e-7)
    # B = 0 (as at init): in train mode the output is exactly the frozen product
    adapter.train()
    adapter.b.set_value(jnp.zeros((D, D), jnp.float32))
    w = nnx.Param(jnp.asarray(RNG.normal(size=(D, D)), jnp.float32))
    np.testing.assert_array_equal(
        lora.dense("...D,DF->...F", X, w, adapter, dtype=jnp.float32),
        ops.dense("...D,DF->...F", X, w[...], dtype=jnp.float32),
    )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rank=0), ValueError, r"`rank` must be a positive int; got 0"),
        (dict(rank=2.5), ValueError, r"`rank`"),
        (dict(alpha=0.0), ValueError, r"`alpha` must be a finite number > 0"),
        (dict(alpha=-1.0), ValueError, r"`alpha`"),
        (dict(dropout_rate=1.5), ValueError, r"`dropout_rate`"),
        (dict(in_axes=("embed", "heads")), ValueError, r"in_axes .* must name the axes of \(16,\)"),
        (dict(out_axes=("heads",)), ValueError, r"out_axes .* must name the axes of \(16,\) / \(4, 8\)"),
    ],
)
def test_adapter_refuses_bad_arguments(kwargs, error, match):
    args = dict(rank=2, alpha=1.0, rngs=nnx.Rngs(0)) | kwargs
    with pytest.raises(error, match=match):
        lora.LoRA((D,), (N, H), **args)


def test_adapter_lookup():
    ffn = nn.FeedForward(D, F, activation="relu", rngs=nnx.Rngs(0))
    assert ffn.lora is None and lora.adapter(ffn, "w_in") is None
    adapter = lora.LoRA((D,), (F,), rank=2, alpha=1.0, rngs=nnx.Rngs(0))
    ffn.lora = nnx.Dict({"w_in": adapter})
    assert lora.adapter(ffn, "w_in") is adapter and lora.adapter(ffn, "w_out") is None
    assert lora.adapter(object(), "w_in") is None  # a module without a `lora` table


# -- layers with adapters ----------------------------------------------------------------------------------------


def randomize(module, seed):
    """Every nnx.Param (not the adapters' A and B) ~ N(0, 0.3^2): biases nonzero, nothing hidden by an init."""
    rng = np.random.default_rng(seed)
    for _, param in nnx.iter_graph(module):
        if isinstance(param, nnx.Param) and not isinstance(param, nnx.LoRAParam):
            param[...] = jnp.asarray(0.3 * rng.normal(size=param.shape), param.dtype)
    return module


def attach(module, shapes, rank=3, alpha=6.0, seed=0):
    """Gives `module` adapters {name: LoRA(in_shape, out_shape)} with random A and B."""
    module.lora = nnx.Dict({
        name: randomize_b(lora.LoRA(i, o, rank=rank, alpha=alpha, rngs=nnx.Rngs(seed + j)), seed=seed + 10 + j)
        for j, (name, (i, o)) in enumerate(shapes.items())
    })  # fmt: skip
    return module


def np_linear(x, w, b, adapter, n_in):
    out = np.tensordot(f64(x), f64(w[...]), axes=n_in) + (0.0 if b is None else f64(b[...]))
    return out if adapter is None else out + np_delta(adapter, x)


def np_attention(m, x, context=None, fused=None, mask=None):
    """The layer's output in float64, every projection with its adapter; `fused`: one [D, N + 2K, H] adapter
    over q | k | v, its output split along the heads."""
    c = x if context is None else context
    ad = lambda name: lora.adapter(m, name)
    q, k, v = (
        np_linear(y, getattr(m, n), getattr(m, "b_" + n[-1]), ad(n), 1)
        for y, n in zip((x, c, c), ("w_q", "w_k", "w_v"), strict=True)
    )
    if fused is not None:
        qkv = np_delta(fused, x)
        q, k, v = q + qkv[:, :, :N], k + qkv[:, :, N : N + m.num_kv_heads], v + qkv[:, :, N + m.num_kv_heads :]
    out = reference.attention(q, k, v, mask=mask)
    return np_linear(out, m.w_o, m.b_o, ad("w_o"), 2)


def attention_layer(seed, num_kv_heads=K, **kwargs):
    return randomize(
        nn.MultiHeadAttention(D, N, num_kv_heads=num_kv_heads, head_dim=H, use_bias=True, rngs=nnx.Rngs(0), **kwargs),
        seed,
    )


QKVO = {"w_q": ((D,), (N, H)), "w_k": ((D,), (K, H)), "w_v": ((D,), (K, H)), "w_o": ((N, H), (D,))}


def test_self_attention_with_an_adapter_on_every_projection():
    m = attach(attention_layer(seed=1), QKVO)
    want = np_attention(m, X, mask=reference.causal(5, 5))
    np.testing.assert_allclose(m(X, is_causal=True), want, rtol=1e-4, atol=1e-4)
    without = np_attention(attention_layer(seed=1), X, mask=reference.causal(5, 5))
    assert np.max(np.abs(want - without)) > 0.1  # the adapters matter


@pytest.mark.parametrize("names", [("w_q",), ("w_k", "w_o"), ("w_v",)])
def test_self_attention_with_some_projections_adapted(names):
    m = attach(attention_layer(seed=2), {n: QKVO[n] for n in names}, seed=7)
    np.testing.assert_allclose(m(X), np_attention(m, X), rtol=1e-4, atol=1e-4)


def test_cross_attention_adapts_the_context_projections():
    """_project: q from x [.., D], k and v from a context [.., 12]: their adapters' A is [12, r]."""
    m = randomize(
        nn.MultiHeadAttention(D, N, num_kv_heads=K, head_dim=H, context_dim=12, use_bias=True, rngs=nnx.Rngs(0)), 3
    )
    shapes = {**QKVO, "w_k": ((12,), (K, H)), "w_v": ((12,), (K, H))}
    attach(m, shapes, seed=20)
    context = np.random.default_rng(4).normal(size=(2, 6, 12)).astype(np.float32)
    np.testing.assert_allclose(m(X, context), np_attention(m, X, context), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("num_kv_heads", [N, K], ids=["mha", "gqa"])
def test_fused_qkv_adapter_splits_its_output_into_q_k_v(num_kv_heads):
    m = attention_layer(seed=5, num_kv_heads=num_kv_heads)
    heads = N + 2 * num_kv_heads
    attach(m, {"w_qkv": ((D,), (heads, H)), "w_o": ((N, H), (D,))}, seed=30)
    fused = m.lora["w_qkv"]
    assert fused.b.shape == (3, heads, H)
    want = np_attention(m, X, fused=fused, mask=reference.causal(5, 5))
    np.testing.assert_allclose(m(X, is_causal=True), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("activation", ["relu", "swiglu"])
def test_feedforward_with_adapters(activation):
    gated = activation == "swiglu"
    ff = randomize(nn.FeedForward(D, F, activation=activation, use_bias=not gated, rngs=nnx.Rngs(0)), 6)
    names = ("w_gate", "w_up") if gated else ("w_in",)
    attach(ff, {**{n: ((D,), (F,)) for n in names}, "w_out": ((F,), (D,))}, seed=40)
    ad = lambda name: lora.adapter(ff, name)
    if gated:
        g, u = (np_linear(X, getattr(ff, n), None, ad(n), 1) for n in names)
        hidden = g / (1.0 + np.exp(-g)) * u
    else:
        hidden = np.maximum(np_linear(X, ff.w_in, ff.b_in, ad("w_in"), 1), 0.0)
    want = np_linear(hidden, ff.w_out, None if gated else ff.b_out, ad("w_out"), 1)
    np.testing.assert_allclose(ff(X), want, rtol=1e-4, atol=1e-4)
