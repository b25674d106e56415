"""MoEFeedForward: the ops composed with its parameters (float64 reference per token), the shared expert's sigmoid
gate, GPT-OSS's router bias with top-k-softmax, the capacity path, routing metrics and gradients to the router."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer.nn.moe import MoEFeedForward

B, T, D, F, E, K = 2, 5, 8, 16, 4, 2


def silu64(z):
    return z / (1 + np.exp(-z))


def reference(layer, x, shared=False):
    """Per token in float64: the router's choice and the weighted sum of its experts (and the gated shared one)."""
    x = np.asarray(x, np.float64).reshape(-1, D)
    router = np.asarray(layer.router[...], np.float64)
    logits = x @ router + (0 if layer.router_bias is None else np.asarray(layer.router_bias[...], np.float64))
    w = {n: np.asarray(getattr(layer, n)[...], np.float64) for n in ("w_gate", "w_up", "w_down")}
    out = np.zeros_like(x)
    for t, row in enumerate(logits):
        if layer.routing == "softmax_topk":
            p = np.exp(row - row.max())
            p /= p.sum()
            chosen = np.argsort(-p, kind="stable")[:K]
            weights = p[chosen] / (p[chosen].sum() if layer.normalize else 1.0)
        else:
            chosen = np.argsort(-row, kind="stable")[:K]
            weights = np.exp(row[chosen] - row[chosen].max())
            weights /= weights.sum()
        for e, weight in zip(chosen, weights, strict=True):
            hidden = silu64(x[t] @ w["w_gate"][e]) * (x[t] @ w["w_up"][e])
            out[t] += weight * hidden @ w["w_down"][e]
        if shared:
            s = layer.shared
            hidden = silu64(x[t] @ np.asarray(s.w_gate[...], np.float64)) * (x[t] @ np.asarray(s.w_up[...], np.float64))
            gate = 1 / (1 + np.exp(-(x[t] @ np.asarray(layer.shared_gate[...], np.float64))))
            out[t] += gate[0] * hidden @ np.asarray(s.w_out[...], np.float64)
    return out.reshape(B, T, D)


def inputs(seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(B, T, D)), jnp.float32)


@pytest.mark.parametrize(
    "options",
    [
        {},  # Mixtral
        {"normalize": False, "shared_d_ff": 12},  # Qwen2-MoE
        {"routing": "topk_softmax", "router_bias": True},  # GPT-OSS's router
    ],
    ids=["mixtral", "qwen2_moe", "gpt_oss"],
)
def test_the_layer_equals_a_float64_reference_per_token(options):
    layer = MoEFeedForward(D, F, E, K, rngs=nnx.Rngs(0), **options)
    if layer.router_bias is not None:
        layer.router_bias[...] = jnp.arange(E, dtype=jnp.float32) * 0.3
    x = inputs()
    y = layer(x)
    np.testing.assert_allclose(y, reference(layer, x, shared="shared_d_ff" in options), atol=2e-5)
    assert float(layer.dropped[...]) == 0.0
    assert float(jnp.sum(layer.router_load[...])) == pytest.approx(K)  # each token's k choices
    assert float(jnp.sum(layer.router_prob[...])) == pytest.approx(1.0)


def test_the_recorded_statistics_are_those_of_the_router_logits_over_the_valid_tokens():
    layer = MoEFeedForward(D, F, E, K, rngs=nnx.Rngs(1))
    x = inputs(1)
    valid = np.zeros((B, T), bool)
    valid[0, :2] = valid[1, :4] = True
    layer(x, valid=valid)
    logits = np.asarray(x, np.float64)[valid] @ np.asarray(layer.router[...], np.float64)  # the 6 valid tokens
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    chosen = np.argsort(-logits, axis=-1, kind="stable")[:, :K]
    load = np.stack([np.isin(np.arange(E), c) for c in chosen]).mean(0)
    z = np.mean((np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)) ** 2)
    np.testing.assert_allclose(layer.router_load[...], load, atol=1e-6)
    np.testing.assert_allclose(layer.router_prob[...], p.mean(0), atol=1e-6)
    np.testing.assert_allclose(layer.router_z[...], z, rtol=1e-5)


def test_the_capacity_path_records_the_share_it_dropped():
    layer = MoEFeedForward(D, F, E, K, capacity_factor=0.5, rngs=nnx.Rngs(1))
    y = layer(inputs(1))
    C = -(-int(0.5 * B * T * K) // E)  # ceil(0.5 * 20 / 4) = 3 slots per expert: at most 12 of 20 assignments kept
    assert y.shape == (B, T, D) and 8 / 20 <= float(layer.dropped[...]) < 1.0 and C == 3


def test_gradients_reach_the_router_and_every_chosen_expert():
    layer = MoEFeedForward(D, F, E, K, rngs=nnx.Rngs(2))
    x = inputs(2)

    def loss(layer):
        return jnp.sum(layer(x) ** 2)

    grads = nnx.grad(loss)(layer)
    assert float(jnp.abs(grads.router[...]).max()) > 0
    assert float(jnp.abs(grads.w_up[...]).max()) > 0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="experts_per_token"):
        MoEFeedForward(D, F, E, 5, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="routing"):
        MoEFeedForward(D, F, E, K, routing="sigmoid", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[B, T, D=8\]"):
        MoEFeedForward(D, F, E, K, rngs=nnx.Rngs(0))(jnp.zeros((B, T, 4)))


def test_gpt_oss_experts_have_biases_and_the_clamped_swiglu():
    """The layer passes its biases and activation to ops.moe: equal to ops.moe_ffn_dense on its own weights."""
    from jaxformer import ops

    layer = MoEFeedForward(
        D,
        F,
        E,
        K,
        routing="topk_softmax",
        expert_bias=True,
        activation="gptoss_swiglu",
        swiglu_limit=0.5,
        rngs=nnx.Rngs(3),
    )
    rng = np.random.default_rng(3)
    for name in ("b_gate", "b_up", "b_down"):
        getattr(layer, name)[...] = jnp.asarray(rng.normal(size=getattr(layer, name).shape), jnp.float32)
    assert layer.b_gate.shape == (E, F) and layer.b_down.shape == (E, D)
    x = inputs(3) * 3.0  # large enough for the clamp at 0.5 to bite
    logits = x.reshape(-1, D) @ layer.router[...]
    weights, experts = ops.route(logits, K, routing="topk_softmax")
    w = {n: getattr(layer, n)[...] for n in ("w_gate", "w_up", "w_down", "b_gate", "b_up", "b_down")}
    want = ops.moe_ffn_dense(
        x.reshape(-1, D),
        experts,
        weights,
        w.pop("w_gate"),
        w.pop("w_up"),
        w.pop("w_down"),
        **w,
        activation="gptoss_swiglu",
        limit=0.5,
        alpha=1.702,
    )
    np.testing.assert_allclose(layer(x).reshape(-1, D), want, rtol=1e-5, atol=1e-5)
    plain = MoEFeedForward(D, F, E, K, routing="topk_softmax", expert_bias=True, rngs=nnx.Rngs(3))
    assert not np.allclose(plain(x), layer(x))  # the activation is not the plain SwiGLU
