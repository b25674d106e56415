"""Mixture-of-experts ops against float64 NumPy references: routing, the dropless grouped FFN (values and gradients
equal to every expert on every token), the capacity path (drops counted, exactly the assignments past capacity),
the load-balancing loss (transformers' formula; transformers' own function in a slow test) and the z-loss."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import ops
from jaxformer.ops import moe

T, D, F, E, K = 12, 8, 16, 4, 2


def make(seed=0, gated=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(T, D)).astype(np.float32)
    logits = rng.normal(size=(T, E)).astype(np.float32)
    w_gate = rng.normal(size=(E, D, F)).astype(np.float32) / np.sqrt(D) if gated else None
    w_up = rng.normal(size=(E, D, F)).astype(np.float32) / np.sqrt(D)
    w_down = rng.normal(size=(E, F, D)).astype(np.float32) / np.sqrt(F)
    return x, logits, w_gate, w_up, w_down


def softmax64(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def silu64(z):
    return z / (1 + np.exp(-z))


def ffn64(x, e, w_gate, w_up, w_down):
    up = x @ np.asarray(w_up[e], np.float64)
    hidden = up * silu64(x @ np.asarray(w_gate[e], np.float64)) if w_gate is not None else silu64(up)
    return hidden @ np.asarray(w_down[e], np.float64)


def moe64(x, experts, weights, w_gate, w_up, w_down, keep=None):
    x = np.asarray(x, np.float64)
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(experts.shape[1]):
            if keep is None or keep[t, j]:
                out[t] += float(weights[t, j]) * ffn64(x[t], int(experts[t, j]), w_gate, w_up, w_down)
    return out


@pytest.mark.parametrize("normalize", [True, False])
def test_softmax_then_top_k_routing(normalize):
    _, logits, *_ = make()
    weights, experts = ops.route(logits, K, normalize=normalize)
    p = softmax64(logits)
    want_experts = np.argsort(-p, axis=-1, kind="stable")[:, :K]
    want = np.take_along_axis(p, want_experts, -1)
    if normalize:
        want = want / want.sum(-1, keepdims=True)
    np.testing.assert_array_equal(experts, want_experts)
    np.testing.assert_allclose(weights, want, rtol=1e-6)


def test_top_k_then_softmax_routing():
    _, logits, *_ = make()
    weights, experts = ops.route(logits, K, routing="topk_softmax")
    want_experts = np.argsort(-logits, axis=-1, kind="stable")[:, :K]
    np.testing.assert_array_equal(experts, want_experts)
    np.testing.assert_allclose(weights, softmax64(np.take_along_axis(logits, want_experts, -1)), rtol=1e-6)


GROUPED = [{"implementation": "ragged_dot"}, {"implementation": "blocks", "block": 4}]  # blocks: padding, many


@pytest.mark.parametrize("grouped", GROUPED, ids=["ragged_dot", "blocks"])
@pytest.mark.parametrize("gated", [True, False])
def test_grouped_ffn_equals_every_expert_on_every_token_and_a_float64_loop(gated, grouped):
    x, logits, w_gate, w_up, w_down = make(gated=gated)
    weights, experts = ops.route(logits, K)
    got = ops.moe_ffn(x, experts, weights, w_gate, w_up, w_down, **grouped)
    dense = moe.moe_ffn_dense(x, experts, weights, w_gate, w_up, w_down)
    want = moe64(x, np.asarray(experts), np.asarray(weights), w_gate, w_up, w_down)
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(dense, want, atol=2e-5)
    jitted = jax.jit(lambda *a: ops.moe_ffn(*a, **grouped))
    np.testing.assert_allclose(jitted(x, experts, weights, w_gate, w_up, w_down), got, atol=1e-6)


@pytest.mark.parametrize("grouped", GROUPED, ids=["ragged_dot", "blocks"])
def test_grouped_ffn_gradients_equal_the_dense_reference(grouped):
    x, logits, w_gate, w_up, w_down = make(1)

    def loss(fn, x, logits, w_gate, w_up, w_down):
        weights, experts = ops.route(logits, K)
        return jnp.sum(fn(x, experts, weights, w_gate, w_up, w_down) ** 2)

    argnums = (1, 2, 3, 4, 5)  # x, the router logits (through the weights), every expert weight
    got = jax.grad(loss, argnums)(lambda *a: ops.moe_ffn(*a, **grouped), x, logits, w_gate, w_up, w_down)
    dense = jax.grad(loss, argnums)(moe.moe_ffn_dense, x, logits, w_gate, w_up, w_down)
    for g, d in zip(got, dense, strict=True):
        np.testing.assert_allclose(g, d, atol=1e-4, rtol=1e-4)
    assert float(jnp.abs(got[1]).max()) > 0  # the router learns through the weights


def test_an_expert_no_token_chose_gets_no_gradient():
    x, logits, w_gate, w_up, w_down = make(2)
    logits[:, 3] = -30.0  # expert 3 is never in any top 2
    weights, experts = ops.route(logits, K)
    grads = jax.grad(lambda w: jnp.sum(ops.moe_ffn(x, experts, weights, w_gate, w, w_down) ** 2))(w_up)
    assert float(jnp.abs(grads[3]).max()) == 0 and float(jnp.abs(grads[:3]).max()) > 0


def test_capacity_path_equals_dropless_when_nothing_is_dropped():
    x, logits, w_gate, w_up, w_down = make(3)
    weights, experts = ops.route(logits, K)
    out, dropped = ops.moe_ffn_capacity(x, experts, weights, w_gate, w_up, w_down, capacity_factor=E / K)
    assert int(dropped) == 0
    np.testing.assert_allclose(out, ops.moe_ffn(x, experts, weights, w_gate, w_up, w_down), atol=2e-5)


def test_capacity_path_drops_exactly_the_assignments_past_each_experts_slots():
    x, logits, w_gate, w_up, w_down = make(4)
    logits[:, 0] += 3.0  # most tokens want expert 0 first
    weights, experts = ops.route(logits, K)
    C = moe.expert_capacity(T, K, E, 0.5)
    out, dropped = ops.moe_ffn_capacity(x, experts, weights, w_gate, w_up, w_down, capacity_factor=0.5)
    # The reference queue: every token's first choice in token order, then every second choice.
    taken = np.zeros(E, int)
    keep = np.zeros((T, K), bool)
    for j in range(K):
        for t in range(T):
            e = int(experts[t, j])
            keep[t, j] = taken[e] < C
            taken[e] += 1
    assert int(dropped) == (~keep).sum() > 0
    want = moe64(x, np.asarray(experts), np.asarray(weights), w_gate, w_up, w_down, keep=keep)
    np.testing.assert_allclose(out, want, atol=2e-5)


def balance64(logits, k, valid=None):
    """transformers' load_balancing_loss_func (transformers 5.25, Mixtral), in float64 NumPy."""
    logits = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
    n_experts = logits.shape[-1]
    p = softmax64(logits)
    chosen = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    w = np.ones(len(p)) if valid is None else np.asarray(valid, np.float64).reshape(-1)
    counts = np.zeros(n_experts)
    for row, weight in zip(chosen, w, strict=True):
        counts[row] += weight
    tokens_per_expert = counts / w.sum()
    prob_per_expert = (p * w[:, None]).sum(0) / w.sum()
    return n_experts * np.sum(tokens_per_expert * prob_per_expert)


def test_load_balancing_loss_is_transformers_formula():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, T, E)).astype(np.float32)  # three layers
    assert float(ops.load_balancing_loss(logits, K)) == pytest.approx(balance64(logits, K), rel=1e-6)
    valid = rng.random((3, T)) < 0.7
    got = ops.load_balancing_loss(logits, K, valid=valid)
    assert float(got) == pytest.approx(balance64(logits, K, valid), rel=1e-6)
    # Uniform routing (ties broken by index, every expert chosen equally often): k.
    uniform = np.zeros((E, E), np.float32) + np.eye(E, dtype=np.float32) * 1e-3
    assert float(ops.load_balancing_loss(uniform, 1)) == pytest.approx(1.0, rel=1e-2)


def test_router_z_loss_is_the_mean_squared_logsumexp():
    _, logits, *_ = make(6)
    z = np.log(np.exp(np.asarray(logits, np.float64)).sum(-1)) ** 2
    assert float(ops.router_z_loss(logits)) == pytest.approx(z.mean(), rel=1e-6)
    valid = np.arange(T) < 5
    assert float(ops.router_z_loss(logits, valid=valid)) == pytest.approx(z[:5].mean(), rel=1e-6)


def test_bad_arguments_are_named():
    x, logits, w_gate, w_up, w_down = make()
    weights, experts = ops.route(logits, K)
    with pytest.raises(ValueError, match=r"k.*\[1, E=4\]"):
        ops.route(logits, 5)
    with pytest.raises(ValueError, match="routing"):
        ops.route(logits, 2, routing="sigmoid")
    with pytest.raises(ValueError, match=r"w_up \[E, D=8, F\]"):
        ops.moe_ffn(x, experts, weights, w_gate, w_up[:, :4], w_down)
    with pytest.raises(ValueError, match=r"\[T=12, k\]"):
        ops.moe_ffn(x, experts[:4], weights[:4], w_gate, w_up, w_down)
    with pytest.raises(ValueError, match="implementation"):
        ops.moe_ffn(x, experts, weights, w_gate, w_up, w_down, implementation="megablox")
    with pytest.raises(ValueError, match="capacity_factor"):
        ops.moe_ffn_capacity(x, experts, weights, w_gate, w_up, w_down, capacity_factor=0.0)


@pytest.mark.slow
def test_load_balancing_loss_equals_transformers_own_function():
    torch = pytest.importorskip("torch")
    mixtral = pytest.importorskip("transformers.models.mixtral.modeling_mixtral")
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(3, 2 * 6, E)).astype(np.float32)  # 3 layers of [batch 2 x length 6, E]
    mask = (rng.random((2, 6)) < 0.8).astype(np.int64)
    for attention_mask in (None, mask):
        gate = tuple(torch.from_numpy(layer) for layer in logits)
        theirs = mixtral.load_balancing_loss_func(
            gate, E, K, None if attention_mask is None else torch.from_numpy(attention_mask)
        )
        valid = None if attention_mask is None else np.broadcast_to(attention_mask.reshape(1, -1), (3, 12))
        ours = ops.load_balancing_loss(logits, K, valid=valid)
        assert float(ours) == pytest.approx(float(theirs), rel=1e-5)
