"""Mixture-of-experts ops against float64 NumPy references: routing, the dropless grouped FFN (values and gradients
equal to every expert on every token), the capacity path (drops counted, exactly the assignments past capacity),
the load-balancing loss (transformers' formula; transformers' own function in a slow test) and the z-loss; GPT-OSS's
experts (per-expert biases, the clamped SwiGLU) on every path, transformers' GptOssExperts in a slow test."""

import functools

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


# ---------------------------------------------------------------------------------------------------------------------
# GPT-OSS's experts: per-expert biases and the clamped SwiGLU


def make_biases(seed=0, gated=True, scale=0.5):
    rng = np.random.default_rng(seed)
    b_gate = (rng.normal(size=(E, F)) * scale).astype(np.float32) if gated else None
    b_up = (rng.normal(size=(E, F)) * scale).astype(np.float32)
    b_down = (rng.normal(size=(E, D)) * scale).astype(np.float32)
    return b_gate, b_up, b_down


def gptoss_ffn64(x, e, w_gate, w_up, w_down, b_gate, b_up, b_down, limit=7.0, alpha=1.702):
    """GPT-OSS's expert in float64 (transformers' GptOssExperts: gate_up = x W + b, gate = min(gate, limit),
    up = clip(up, -limit, limit), glu = gate sigmoid(alpha gate), out = ((up + 1) glu) W_down + b_down)."""
    x = np.asarray(x, np.float64)
    gate = x @ np.asarray(w_gate[e], np.float64) + np.asarray(b_gate[e], np.float64)
    up = x @ np.asarray(w_up[e], np.float64) + np.asarray(b_up[e], np.float64)
    gate = np.minimum(gate, limit)
    up = np.clip(up, -limit, limit)
    glu = gate / (1 + np.exp(-alpha * gate))
    return ((up + 1) * glu) @ np.asarray(w_down[e], np.float64) + np.asarray(b_down[e], np.float64)


def biased_ffn64(x, e, w_gate, w_up, w_down, b_gate, b_up, b_down):
    """The default (SiLU-gated, or SiLU) expert with biases, float64."""
    x = np.asarray(x, np.float64)
    up = x @ np.asarray(w_up[e], np.float64) + np.asarray(b_up[e], np.float64)
    if w_gate is None:
        hidden = silu64(up)
    else:
        hidden = up * silu64(x @ np.asarray(w_gate[e], np.float64) + np.asarray(b_gate[e], np.float64))
    return hidden @ np.asarray(w_down[e], np.float64) + np.asarray(b_down[e], np.float64)


def routed64(ffn, x, experts, weights, keep=None):
    out = np.zeros(np.shape(x), np.float64)
    for t in range(x.shape[0]):
        for j in range(experts.shape[1]):
            if keep is None or keep[t, j]:
                out[t] += float(weights[t, j]) * ffn(x[t], int(experts[t, j]))
    return out


def gptoss_make(seed=0, amplitude=3.0):
    """Weights large enough that many gate and up pre-activations pass the limit 7 (both clamps act)."""
    x, logits, w_gate, w_up, w_down = make(seed)
    return x * amplitude, logits, w_gate * amplitude, w_up * amplitude, w_down


def test_gptoss_swiglu_is_the_clamped_formula():
    rng = np.random.default_rng(0)
    gate, up = (rng.normal(size=(64,)) * 6).astype(np.float32), (rng.normal(size=(64,)) * 6).astype(np.float32)
    got = moe.gptoss_swiglu(gate, up)
    g, u = np.minimum(gate.astype(np.float64), 7.0), np.clip(up.astype(np.float64), -7.0, 7.0)
    np.testing.assert_allclose(got, (u + 1) * g / (1 + np.exp(-1.702 * g)), rtol=1e-5, atol=1e-5)
    assert (gate > 7).any() and (up > 7).any() and (up < -7).any() and (gate < -7).any()
    got = moe.gptoss_swiglu(gate, up, limit=2.0, alpha=1.0)
    g, u = np.minimum(gate.astype(np.float64), 2.0), np.clip(up.astype(np.float64), -2.0, 2.0)
    np.testing.assert_allclose(got, (u + 1) * g / (1 + np.exp(-g)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("grouped", GROUPED, ids=["ragged_dot", "blocks"])
@pytest.mark.parametrize("limit", [None, 1.5], ids=["limit7", "limit1.5"])
def test_gptoss_experts_with_biases_equal_a_float64_loop_dense_and_capacity(grouped, limit):
    x, logits, w_gate, w_up, w_down = gptoss_make()
    b_gate, b_up, b_down = make_biases()
    weights, experts = ops.route(logits, K, routing="topk_softmax")  # GPT-OSS's router
    options = dict(b_gate=b_gate, b_up=b_up, b_down=b_down, activation="gptoss_swiglu", limit=limit)
    ffn = functools.partial(
        gptoss_ffn64,
        w_gate=w_gate,
        w_up=w_up,
        w_down=w_down,
        b_gate=b_gate,
        b_up=b_up,
        b_down=b_down,
        limit=7.0 if limit is None else limit,
    )
    want = routed64(lambda xt, e: ffn(xt, e), x, np.asarray(experts), np.asarray(weights))
    got = ops.moe_ffn(x, experts, weights, w_gate, w_up, w_down, **grouped, **options)
    dense = moe.moe_ffn_dense(x, experts, weights, w_gate, w_up, w_down, **options)
    capacity, dropped = ops.moe_ffn_capacity(
        x, experts, weights, w_gate, w_up, w_down, capacity_factor=E / K, **options
    )
    assert int(dropped) == 0
    for name, out in (("grouped", got), ("dense", dense), ("capacity", capacity)):
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4, err_msg=name)
    jitted = jax.jit(lambda *a: ops.moe_ffn(*a, **grouped, **options))
    np.testing.assert_allclose(jitted(x, experts, weights, w_gate, w_up, w_down), got, rtol=1e-5, atol=1e-5)
    # The clamps act in this test: some gate and up pre-activations pass the limit.
    pre = np.einsum("td,edf->etf", x, w_gate) + b_gate[:, None]
    assert (pre > (7.0 if limit is None else limit)).any()


@pytest.mark.parametrize("grouped", GROUPED, ids=["ragged_dot", "blocks"])
@pytest.mark.parametrize("gated", [True, False])
def test_biases_with_the_default_activation_equal_a_float64_loop(grouped, gated):
    x, logits, w_gate, w_up, w_down = make(8, gated=gated)
    b_gate, b_up, b_down = make_biases(8, gated=gated)
    weights, experts = ops.route(logits, K)
    biases = dict(b_gate=b_gate, b_up=b_up, b_down=b_down)
    ffn = functools.partial(biased_ffn64, w_gate=w_gate, w_up=w_up, w_down=w_down, **biases)
    want = routed64(lambda xt, e: ffn(xt, e), x, np.asarray(experts), np.asarray(weights))
    np.testing.assert_allclose(
        ops.moe_ffn(x, experts, weights, w_gate, w_up, w_down, **grouped, **biases), want, atol=2e-5
    )
    np.testing.assert_allclose(moe.moe_ffn_dense(x, experts, weights, w_gate, w_up, w_down, **biases), want, atol=2e-5)


def test_capacity_path_with_biases_drops_exactly_the_assignments_past_capacity():
    x, logits, w_gate, w_up, w_down = gptoss_make(9)
    logits[:, 0] += 3.0
    b_gate, b_up, b_down = make_biases(9)
    weights, experts = ops.route(logits, K, routing="topk_softmax")
    C = moe.expert_capacity(T, K, E, 0.5)
    options = dict(b_gate=b_gate, b_up=b_up, b_down=b_down, activation="gptoss_swiglu")
    out, dropped = ops.moe_ffn_capacity(x, experts, weights, w_gate, w_up, w_down, capacity_factor=0.5, **options)
    taken, keep = np.zeros(E, int), np.zeros((T, K), bool)
    for j in range(K):
        for t in range(T):
            e = int(experts[t, j])
            keep[t, j] = taken[e] < C
            taken[e] += 1
    assert int(dropped) == (~keep).sum() > 0
    ffn = functools.partial(
        gptoss_ffn64, w_gate=w_gate, w_up=w_up, w_down=w_down, b_gate=b_gate, b_up=b_up, b_down=b_down
    )
    want = routed64(lambda xt, e: ffn(xt, e), x, np.asarray(experts), np.asarray(weights), keep=keep)
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "grouped",
    [*GROUPED, "capacity"],
    ids=["ragged_dot", "blocks", "capacity"],
)
def test_gptoss_gradients_equal_the_dense_reference(grouped):
    """d/d(x, router logits, w_gate, w_up, w_down, b_gate, b_up, b_down) of the grouped and the capacity paths
    equal the dense path's (which autodiff differentiates directly)."""
    x, logits, w_gate, w_up, w_down = gptoss_make(10, amplitude=2.0)
    b_gate, b_up, b_down = make_biases(10)

    def routed(x, logits, w_gate, w_up, w_down, b_gate, b_up, b_down):
        weights, experts = ops.route(logits, K, routing="topk_softmax")
        options = dict(b_gate=b_gate, b_up=b_up, b_down=b_down, activation="gptoss_swiglu")
        if grouped == "capacity":
            return ops.moe_ffn_capacity(x, experts, weights, w_gate, w_up, w_down, capacity_factor=E / K, **options)[0]
        return ops.moe_ffn(x, experts, weights, w_gate, w_up, w_down, **grouped, **options)

    def dense(x, logits, w_gate, w_up, w_down, b_gate, b_up, b_down):
        weights, experts = ops.route(logits, K, routing="topk_softmax")
        options = dict(b_gate=b_gate, b_up=b_up, b_down=b_down, activation="gptoss_swiglu")
        return moe.moe_ffn_dense(x, experts, weights, w_gate, w_up, w_down, **options)

    args = (x, logits, w_gate, w_up, w_down, b_gate, b_up, b_down)
    argnums = tuple(range(len(args)))
    got = jax.grad(lambda *a: jnp.sum(routed(*a) ** 2), argnums)(*args)
    want = jax.grad(lambda *a: jnp.sum(dense(*a) ** 2), argnums)(*args)
    names = ("x", "logits", "w_gate", "w_up", "w_down", "b_gate", "b_up", "b_down")
    for name, g, w in zip(names, got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-3, err_msg=name)
        assert float(jnp.abs(g).max()) > 0, name


def test_gptoss_dense_gradients_match_float64_finite_differences():
    """The dense path's autodiff (the reference of the others) against central differences of the float64 loop,
    for every bias and some weights (away from the clamps' kinks)."""
    x, logits, w_gate, w_up, w_down = gptoss_make(11, amplitude=1.0)
    b_gate, b_up, b_down = make_biases(11)
    weights, experts = ops.route(logits, K, routing="topk_softmax")
    cot = np.random.default_rng(12).normal(size=(T, D))
    args = [w_gate, w_up, w_down, b_gate, b_up, b_down]

    def loss64(*a):
        ffn = functools.partial(gptoss_ffn64, w_gate=a[0], w_up=a[1], w_down=a[2], b_gate=a[3], b_up=a[4], b_down=a[5])
        return np.sum(routed64(lambda xt, e: ffn(xt, e), x, np.asarray(experts), np.asarray(weights)) * cot)

    def loss(*a):
        out = moe.moe_ffn_dense(
            x, experts, weights, a[0], a[1], a[2], b_gate=a[3], b_up=a[4], b_down=a[5], activation="gptoss_swiglu"
        )
        return jnp.sum(out * cot.astype(np.float32))

    grads = jax.grad(loss, tuple(range(6)))(*args)
    rng, eps = np.random.default_rng(13), 1e-6
    for i, grad in enumerate(grads):
        for _ in range(4):
            idx = tuple(rng.integers(0, d) for d in args[i].shape)
            plus = [np.asarray(a, np.float64).copy() for a in args]
            minus = [a.copy() for a in plus]
            plus[i][idx] += eps
            minus[i][idx] -= eps
            numeric = (loss64(*plus) - loss64(*minus)) / (2 * eps)
            np.testing.assert_allclose(np.asarray(grad)[idx], numeric, rtol=2e-3, atol=2e-4)


def test_zero_biases_change_nothing():
    x, logits, w_gate, w_up, w_down = make(14)
    weights, experts = ops.route(logits, K)
    zeros = dict(b_gate=np.zeros((E, F), np.float32), b_up=np.zeros((E, F), np.float32), b_down=np.zeros((E, D)))
    for grouped in GROUPED:
        plain = ops.moe_ffn(x, experts, weights, w_gate, w_up, w_down, **grouped)
        np.testing.assert_array_equal(ops.moe_ffn(x, experts, weights, w_gate, w_up, w_down, **grouped, **zeros), plain)


def test_bad_biases_and_gptoss_options_are_named():
    x, logits, w_gate, w_up, w_down = make()
    weights, experts = ops.route(logits, K)
    b_gate, b_up, b_down = make_biases()
    for fn in (ops.moe_ffn, moe.moe_ffn_dense, ops.moe_ffn_capacity):
        call = functools.partial(fn, x, experts, weights)
        with pytest.raises(ValueError, match=r"`b_up` must be \[E, F\] = \(4, 16\) .*; got \(4, 8\)"):
            call(w_gate, w_up, w_down, b_up=b_down)
        with pytest.raises(ValueError, match=r"`b_down` must be \[E, D\] = \(4, 8\) .*; got \(8\)"):
            call(w_gate, w_up, w_down, b_down=b_down[0])
        with pytest.raises(ValueError, match=r"`b_gate` must be \[E, F\]"):
            call(w_gate, w_up, w_down, b_gate=b_gate[:2])
        with pytest.raises(TypeError, match=r"`b_gate` must have a floating dtype"):
            call(w_gate, w_up, w_down, b_gate=b_gate.astype(np.int32))
        with pytest.raises(ValueError, match=r"`b_gate` is the gate projection's bias, but w_gate is None"):
            call(None, w_up, w_down, b_gate=b_gate)
        with pytest.raises(ValueError, match=r"activation='gptoss_swiglu' is a gated unit: it needs w_gate"):
            call(None, w_up, w_down, activation="gptoss_swiglu")
        with pytest.raises(ValueError, match=r"`limit` and `alpha` are the constants of activation='gptoss_swiglu'"):
            call(w_gate, w_up, w_down, limit=7.0)
        with pytest.raises(ValueError, match=r"`limit` must be a finite number > 0; got -1.0"):
            call(w_gate, w_up, w_down, activation="gptoss_swiglu", limit=-1.0)
        with pytest.raises(ValueError, match=r"Unknown activation 'swigl'"):
            call(w_gate, w_up, w_down, activation="swigl")


@pytest.mark.slow
def test_gptoss_experts_equal_transformers_own_module():
    """transformers' GptOssExperts (interleaved gate_up_proj [E, D, 2F] with its bias; routing weights [T, k]) on the
    same weights, split into jaxformer's separate gate and up."""
    torch = pytest.importorskip("torch")
    gpt_oss = pytest.importorskip("transformers.models.gpt_oss.modeling_gpt_oss")
    from transformers import GptOssConfig

    x, logits, w_gate, w_up, w_down = gptoss_make(15)
    b_gate, b_up, b_down = make_biases(15)
    config = GptOssConfig(hidden_size=D, intermediate_size=F, num_local_experts=E, num_experts_per_tok=K)
    experts_module = gpt_oss.GptOssExperts(config)
    gate_up = np.empty((E, D, 2 * F), np.float32)
    gate_up[..., ::2], gate_up[..., 1::2] = w_gate, w_up
    gate_up_bias = np.empty((E, 2 * F), np.float32)
    gate_up_bias[:, ::2], gate_up_bias[:, 1::2] = b_gate, b_up
    with torch.no_grad():
        experts_module.gate_up_proj.copy_(torch.from_numpy(gate_up))
        experts_module.gate_up_proj_bias.copy_(torch.from_numpy(gate_up_bias))
        experts_module.down_proj.copy_(torch.from_numpy(w_down))
        experts_module.down_proj_bias.copy_(torch.from_numpy(b_down))
    weights, experts = ops.route(logits, K, routing="topk_softmax")
    with torch.no_grad():
        theirs = experts_module(
            torch.from_numpy(x), torch.from_numpy(np.array(experts, np.int64)), torch.from_numpy(np.array(weights))
        )
    ours = ops.moe_ffn(
        x, experts, weights, w_gate, w_up, w_down, b_gate=b_gate, b_up=b_up, b_down=b_down, activation="gptoss_swiglu"
    )
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-4, atol=1e-4)
