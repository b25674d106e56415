"""Mixture of experts as pure functions: routing, the routed feed-forward (dropless grouped matmuls, or static
expert capacity), and the router's auxiliary losses.

    weights, experts = ops.route(router_logits, k=2)                       # [T, k] each: Mixtral's router
    out = ops.moe_ffn(x, experts, weights, w_gate, w_up, w_down)           # [T, D], every token through its k
    out, dropped = ops.moe_ffn_capacity(x, experts, weights, ..., capacity_factor=1.25)   # static shapes
    aux = ops.load_balancing_loss(router_logits, k=2)                      # Switch / Mixtral balance loss
    z = ops.router_z_loss(router_logits)                                   # ST-MoE's z-loss

Shapes: T tokens (a flattened batch), D model width, F an expert's hidden width, E experts, k experts per token.
Expert weights are stacked: w_gate, w_up `[E, D, F]`, w_down `[E, F, D]` (transformers 5's stacked layout); optional
per-expert biases b_gate, b_up `[E, F]`, b_down `[E, D]` (GPT-OSS's experts have them).

GPT-OSS's experts: biases, and activation="gptoss_swiglu", its clamped SwiGLU (`gptoss_swiglu`):

    out = ops.moe_ffn(x, experts, weights, w_gate, w_up, w_down, b_gate=b_gate, b_up=b_up, b_down=b_down,
                      activation="gptoss_swiglu")   # routed by ops.route(logits, k, routing="topk_softmax")

(transformers' checkpoint interleaves gate and up columns in one gate_up_proj: gate = [..., ::2], up = [..., 1::2].)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxformer import checks
from jaxformer.ops.activations import get_activation

ROUTINGS = ("softmax_topk", "topk_softmax")

# GPT-OSS's clamped SwiGLU (see `gptoss_swiglu`): an expert activation name, and its defaults (transformers'
# GptOssConfig.swiglu_limit and swiglu_alpha).
GPTOSS_SWIGLU = "gptoss_swiglu"
GPTOSS_LIMIT = 7.0
GPTOSS_ALPHA = 1.702


def route(
    router_logits: jax.Array, k: int, *, routing: str = "softmax_topk", normalize: bool = True
) -> tuple[jax.Array, jax.Array]:
    """The k experts each token goes to and their weights, float32 `[T, k]` and int32 `[T, k]`.

    routing="softmax_topk" (Mixtral, Qwen-MoE): p = softmax(logits) over the E experts, the k largest kept;
    with `normalize` they are divided by their sum (Mixtral, Qwen3-MoE's norm_topk_prob), else kept as they are
    (Qwen2-MoE's default). routing="topk_softmax" (GPT-OSS): the k largest logits, then a softmax over those k
    (`normalize` does not apply: they sum to 1). A router bias (GPT-OSS) is part of the logits. Ties go to the
    lower expert index (`lax.top_k`).

    router_logits: `[..., E]` float; k: an int in [1, E].
    """
    router_logits = checks.check_array("router_logits", router_logits)
    checks.check_floating("router_logits", router_logits)
    checks.check_min_rank("router_logits", router_logits, 1, "[..., E]")
    E = router_logits.shape[-1]
    k = checks.check_int("k", k, low=1, high=E, expected=f"an int in [1, E={E}] (experts per token)")
    if routing not in ROUTINGS:
        raise ValueError(f"`routing` must be one of {ROUTINGS}; got {routing!r}.")
    logits = router_logits.astype(jnp.float32)
    if routing == "topk_softmax":
        top, experts = jax.lax.top_k(logits, k)
        return jax.nn.softmax(top, axis=-1), experts.astype(jnp.int32)
    weights, experts = jax.lax.top_k(jax.nn.softmax(logits, axis=-1), k)
    if normalize:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, experts.astype(jnp.int32)


def _check_expert_weights(x, experts, weights, w_gate, w_up, w_down):
    x = checks.check_array("x", x)
    checks.check_rank("x", x, 2, "[T, D]")
    T, D = x.shape
    if w_up.ndim != 3 or w_up.shape[1] != D or w_down.ndim != 3 or w_down.shape != (w_up.shape[0], w_up.shape[2], D):
        raise ValueError(
            f"Expert weights must be w_up [E, D={D}, F] and w_down [E, F, D={D}]; got {tuple(w_up.shape)} and "
            f"{tuple(w_down.shape)}."
        )
    if w_gate is not None and w_gate.shape != w_up.shape:
        raise ValueError(f"`w_gate` must have w_up's shape {tuple(w_up.shape)}; got {tuple(w_gate.shape)}.")
    if experts.ndim != 2 or experts.shape[0] != T or weights.shape != experts.shape:
        raise ValueError(
            f"`experts` and `weights` must both be [T={T}, k]; got {tuple(experts.shape)} and {tuple(weights.shape)}."
        )
    checks.check_integer("experts", experts)
    checks.check_floating("weights", weights)
    return T, D, w_up.shape[0]


def _check_expert_biases(b_gate, b_up, b_down, w_gate, w_up):
    """Validates the optional per-expert biases (b_gate, b_up `[E, F]`, b_down `[E, D]`); returns them as jax arrays
    (they are gathered with traced expert indices)."""
    E, D, F = w_up.shape
    expected = {"b_gate": (E, F), "b_up": (E, F), "b_down": (E, D)}
    out = []
    for name, b in (("b_gate", b_gate), ("b_up", b_up), ("b_down", b_down)):
        if b is not None:
            b = checks.check_array(name, b)
            checks.check_floating(name, b)
            want = expected[name]
            if b.shape != want:
                raise ValueError(
                    f"`{name}` must be [E, {'D' if name == 'b_down' else 'F'}] = {want} (one bias row per expert); "
                    f"got {checks.shape_str(b.shape)}."
                )
        out.append(None if b is None else jnp.asarray(b))
    if b_gate is not None and w_gate is None:
        raise ValueError("`b_gate` is the gate projection's bias, but w_gate is None (an ungated expert FFN).")
    return tuple(out)


def gptoss_swiglu(gate, up, *, limit: float = GPTOSS_LIMIT, alpha: float = GPTOSS_ALPHA) -> jax.Array:
    """GPT-OSS's clamped SwiGLU of an expert's gate and up projections (floating, one shape `[..., F]`):

        g = min(gate, limit),   u = clip(up, -limit, limit)
        out = (u + 1) * g * sigmoid(alpha * g)

    (transformers' GptOssExperts._apply_gate; limit = 7, alpha = 1.702 in GPT-OSS). The gate is clamped from
    above only; the +1 lets an up projection of 0 pass the gate through."""
    gate = jnp.minimum(gate, limit)
    up = jnp.clip(up, -limit, limit)
    return (up + 1) * (gate * jax.nn.sigmoid(gate * alpha))


def _expert_activation(activation, gated: bool, limit, alpha):
    """hidden(up, gate) of an expert FFN: `up * act(gate)` (gated), `act(up)` (w_gate None), or GPT-OSS's
    `gptoss_swiglu(gate, up)` for activation="gptoss_swiglu" (gated only; `limit`, `alpha` its constants)."""
    if activation == GPTOSS_SWIGLU:
        if not gated:
            raise ValueError(f"activation={GPTOSS_SWIGLU!r} is a gated unit: it needs w_gate; got w_gate=None.")
        limit = GPTOSS_LIMIT if limit is None else checks.check_positive_real("limit", limit)
        alpha = GPTOSS_ALPHA if alpha is None else checks.check_positive_real("alpha", alpha)
        return lambda h_up, h_gate: gptoss_swiglu(h_gate, h_up, limit=limit, alpha=alpha)
    if limit is not None or alpha is not None:
        raise ValueError(
            f"`limit` and `alpha` are the constants of activation={GPTOSS_SWIGLU!r}; got limit={limit!r}, "
            f"alpha={alpha!r} with activation={activation!r}."
        )
    act = get_activation(activation)
    return lambda h_up, h_gate: h_up * act(h_gate) if h_gate is not None else act(h_up)


def _plus(h, bias):
    """h + bias (None: h itself), the bias cast to h's dtype."""
    return h if bias is None else h + bias.astype(h.dtype)


IMPLEMENTATIONS = ("auto", "ragged_dot", "blocks")


def moe_ffn(
    x: jax.Array,
    experts: jax.Array,
    weights: jax.Array,
    w_gate: jax.Array | None,
    w_up: jax.Array,
    w_down: jax.Array,
    *,
    activation: str = "silu",
    implementation: str = "auto",
    block: int = 128,
    b_gate: jax.Array | None = None,
    b_up: jax.Array | None = None,
    b_down: jax.Array | None = None,
    limit: float | None = None,
    alpha: float | None = None,
) -> jax.Array:
    """The routed feed-forward, dropless: out_t = sum_j weights[t, j] FFN_{experts[t, j]}(x_t), `[T, D]`.

    FFN_e(x) = (act(x W_gate[e]) * (x W_up[e])) W_down[e] (gated, as SwiGLU), or act(x W_up[e]) W_down[e] when
    w_gate is None. With biases each projection adds its expert's row: x W_gate[e] + b_gate[e], x W_up[e] +
    b_up[e], h W_down[e] + b_down[e] (inside FFN_e, so b_down is weighted too). activation="gptoss_swiglu"
    (gated only) is GPT-OSS's clamped SwiGLU, h = `gptoss_swiglu(gate, up, limit=limit, alpha=alpha)` =
    (clip(up, -limit, limit) + 1) * g sigmoid(alpha g), g = min(gate, limit); `limit` (default 7) and `alpha`
    (default 1.702) are for it only.

    The T k (token, expert) assignments are sorted by expert and each projection is one grouped matmul (a bias:
    each row's expert's row, added after it): every token is computed by its k experts only, never by all E, and
    none is dropped. Equal to `moe_ffn_dense` (every expert on every token), values and gradients.

    implementation: "ragged_dot" (`jax.lax.ragged_dot` over the E groups: the grouped-GEMM kernels of TPUs and
    GPUs); "blocks" (each expert's rows padded to a multiple of `block` rows, then one batched matmul over the
    blocks with each block's expert weights: at most E - 1 blocks of padding; what XLA:CPU runs fast, where its
    ragged_dot computed every group densely: BENCHMARKS.md, "Mixture of experts"); "auto": blocks on the CPU,
    ragged_dot elsewhere.

    x `[T, D]`; experts int `[T, k]` in [0, E); weights `[T, k]`; w_gate, w_up `[E, D, F]`; w_down `[E, F, D]`;
    b_gate, b_up `[E, F]`, b_down `[E, D]` or None (no bias).
    """
    T, D, E = _check_expert_weights(x, experts, weights, w_gate, w_up, w_down)
    biases = _check_expert_biases(b_gate, b_up, b_down, w_gate, w_up)
    hidden = _expert_activation(activation, w_gate is not None, limit, alpha)
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"`implementation` must be one of {IMPLEMENTATIONS}; got {implementation!r}.")
    if implementation == "auto":
        implementation = "blocks" if jax.default_backend() == "cpu" else "ragged_dot"
    block = checks.check_positive_int("block", block)
    k = experts.shape[1]
    flat = experts.reshape(-1)  # [T k] assignments
    order = jnp.argsort(flat, stable=True)  # grouped by expert
    tokens = order // k  # each sorted assignment's token
    sizes = jnp.bincount(flat, length=E).astype(jnp.int32)  # [E] rows per expert
    if implementation == "ragged_dot":
        b_gate, b_up, b_down = (None if b is None else b[flat[order]] for b in biases)  # each row's expert's bias
        rows = x[tokens]  # [T k, D]
        up = _plus(jax.lax.ragged_dot(rows, w_up, sizes), b_up)  # [T k, F]
        gate = None if w_gate is None else _plus(jax.lax.ragged_dot(rows, w_gate, sizes), b_gate)
        down = _plus(jax.lax.ragged_dot(hidden(up, gate), w_down, sizes), b_down)  # [T k, D]
    else:
        down = _blocks_ffn(x, tokens, flat[order], sizes, w_gate, w_up, w_down, biases, hidden, block)
    scaled = down * weights.reshape(-1)[order][:, None].astype(down.dtype)
    return jnp.zeros((T, D), down.dtype).at[tokens].add(scaled)


def _blocks_ffn(x, tokens, sorted_experts, sizes, w_gate, w_up, w_down, biases, hidden, block):
    """The expert FFN of each sorted assignment `[M, D]`, each expert's rows in blocks of `block` rows (biases:
    (b_gate, b_up, b_down), each None or per expert; hidden: the activation `_expert_activation` made)."""
    M, E = tokens.shape[0], sizes.shape[0]
    padded = (sizes + block - 1) // block * block  # [E] rows each expert's blocks hold
    ends = jnp.cumsum(padded)
    starts = ends - padded
    rank = jnp.arange(M) - (jnp.cumsum(sizes) - sizes)[sorted_experts]  # an assignment's rank in its group
    dest = starts[sorted_experts] + rank  # its row among the blocks
    n = -(-M // block) + E  # blocks: enough for any routing (each expert wastes less than one)
    rows = jnp.zeros((n * block, x.shape[1]), x.dtype).at[dest].set(x[tokens]).reshape(n, block, -1)
    owner = jnp.minimum(jnp.searchsorted(ends, jnp.arange(n) * block, side="right"), E - 1)  # [n] block -> expert
    b_gate, b_up, b_down = (None if b is None else b[owner][:, None, :] for b in biases)  # [n, 1, F|D]
    up = _plus(jnp.einsum("nbd,ndf->nbf", rows, w_up[owner]), b_up)
    gate = None if w_gate is None else _plus(jnp.einsum("nbd,ndf->nbf", rows, w_gate[owner]), b_gate)
    down = _plus(jnp.einsum("nbf,nfd->nbd", hidden(up, gate), w_down[owner]), b_down)
    return down.reshape(n * block, -1)[dest]


def moe_ffn_dense(
    x,
    experts,
    weights,
    w_gate,
    w_up,
    w_down,
    *,
    activation: str = "silu",
    b_gate=None,
    b_up=None,
    b_down=None,
    limit: float | None = None,
    alpha: float | None = None,
) -> jax.Array:
    """The reference of `moe_ffn`: every expert on every token, combined by one-hot routing weights `[T, E]`.
    E times the compute of the routed tokens; for tests and as the baseline the grouped matmul is measured against.
    The biases, `activation`, `limit` and `alpha` as in `moe_ffn`."""
    T, D, E = _check_expert_weights(x, experts, weights, w_gate, w_up, w_down)
    b_gate, b_up, b_down = (
        None if b is None else b[:, None, :] for b in _check_expert_biases(b_gate, b_up, b_down, w_gate, w_up)
    )
    hidden = _expert_activation(activation, w_gate is not None, limit, alpha)
    up = _plus(jnp.einsum("TD,EDF->ETF", x, w_up), b_up)
    gate = None if w_gate is None else _plus(jnp.einsum("TD,EDF->ETF", x, w_gate), b_gate)
    down = _plus(jnp.einsum("ETF,EFD->ETD", hidden(up, gate), w_down), b_down)  # [E, T, D]
    combine = jnp.sum(jax.nn.one_hot(experts, E, dtype=down.dtype) * weights[..., None].astype(down.dtype), axis=1)
    return jnp.einsum("ETD,TE->TD", down, combine)


def expert_capacity(tokens: int, k: int, num_experts: int, capacity_factor: float) -> int:
    """Slots per expert: ceil(capacity_factor * tokens * k / E) (GShard / Switch), at least 1."""
    tokens, k = checks.check_positive_int("tokens", tokens), checks.check_positive_int("k", k)
    num_experts = checks.check_positive_int("num_experts", num_experts)
    checks.check_real("capacity_factor", capacity_factor, low=0.0, low_open=True)
    return max(1, math.ceil(capacity_factor * tokens * k / num_experts))


def moe_ffn_capacity(
    x: jax.Array,
    experts: jax.Array,
    weights: jax.Array,
    w_gate: jax.Array | None,
    w_up: jax.Array,
    w_down: jax.Array,
    *,
    capacity_factor: float = 1.25,
    activation: str = "silu",
    b_gate: jax.Array | None = None,
    b_up: jax.Array | None = None,
    b_down: jax.Array | None = None,
    limit: float | None = None,
    alpha: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The routed feed-forward with static shapes (GShard / Switch): each expert computes a fixed C =
    `expert_capacity(T, k, E, capacity_factor)` slots, filled in token order (the first choices of every token
    before the second choices); assignments past an expert's C are dropped (their weight lost; the token keeps its
    residual). Returns (out `[T, D]`, the number of dropped assignments, int32). Equal to `moe_ffn` when nothing is
    dropped. Dispatch and combine are one-hot einsums over `[T, E, C]`: no sort, no ragged shapes (what TPUs
    compile best at moderate E). The biases, `activation`, `limit` and `alpha` as in `moe_ffn` (an empty slot's
    output, the biases' alone, gets no weight)."""
    T, D, E = _check_expert_weights(x, experts, weights, w_gate, w_up, w_down)
    biases = _check_expert_biases(b_gate, b_up, b_down, w_gate, w_up)
    b_gate, b_up, b_down = (None if b is None else b[:, None, :] for b in biases)  # [E, 1, F|D]
    hidden = _expert_activation(activation, w_gate is not None, limit, alpha)
    k = experts.shape[1]
    C = expert_capacity(T, k, E, capacity_factor)
    choice_major = jnp.swapaxes(experts, 0, 1).reshape(-1)  # [k T]: every token's first choice, then second, ...
    one_hot = jax.nn.one_hot(choice_major, E, dtype=jnp.int32)  # [k T, E]
    slot = (jnp.cumsum(one_hot, axis=0) - 1) * one_hot  # position of each assignment in its expert's queue
    slot = jnp.sum(slot, axis=-1)  # [k T]
    kept = slot < C
    dispatch = (
        jax.nn.one_hot(choice_major, E, dtype=x.dtype)[:, :, None]
        * jax.nn.one_hot(jnp.where(kept, slot, C), C, dtype=x.dtype)[:, None, :]
    )  # [k T, E, C]; a dropped assignment's slot C is out of range: all zeros
    dispatch = dispatch.reshape(k, T, E, C)
    routed = jnp.einsum("KTEC,TD->ECD", dispatch, x)  # [E, C, D]
    up = _plus(jnp.einsum("ECD,EDF->ECF", routed, w_up), b_up)
    gate = None if w_gate is None else _plus(jnp.einsum("ECD,EDF->ECF", routed, w_gate), b_gate)
    down = _plus(jnp.einsum("ECF,EFD->ECD", hidden(up, gate), w_down), b_down)
    combine = dispatch * jnp.swapaxes(weights, 0, 1).astype(x.dtype)[:, :, None, None]  # [k, T, E, C]
    out = jnp.einsum("KTEC,ECD->TD", combine, down)
    return out, jnp.sum(~kept).astype(jnp.int32)


class RouterStats(NamedTuple):
    """What a router did over a set of tokens, the sufficient statistics of its auxiliary losses:

        load `[..., E]`  f_e = mean_t #{j : expert_j(t) = e}   (each token's k choices; sums to k over e)
        prob `[..., E]`  P_e = mean_t softmax(logits_t)_e        (sums to 1 over e)
        z    `[...]`     mean_t (logsumexp_e logits_te)^2

    Leading axes (e.g. one entry per layer) are averaged by `load_balancing_loss_from_stats` /
    `router_z_loss_from_stats`: with the same tokens in every layer, the mean of the layers' f and P is the f and
    P of all layers' tokens taken together, as transformers concatenates its layers' router logits."""

    load: jax.Array
    prob: jax.Array
    z: jax.Array


def router_stats(
    router_logits: jax.Array, k: int, *, experts: jax.Array | None = None, valid: jax.Array | None = None
) -> RouterStats:
    """`RouterStats` of router_logits `[..., E]` over every leading position (the valid ones: bool `valid`,
    router_logits' shape without E). `experts` int `[..., k]`: the experts chosen (default: the top k of the
    logits, which is the choice of either `route`)."""
    router_logits = checks.check_array("router_logits", router_logits)
    checks.check_floating("router_logits", router_logits)
    E = router_logits.shape[-1]
    k = checks.check_int("k", k, low=1, high=E, expected=f"an int in [1, E={E}] (experts per token)")
    logits = router_logits.astype(jnp.float32).reshape(-1, E)  # [N, E]
    if experts is None:
        _, experts = jax.lax.top_k(logits, k)
    elif experts.shape != (*router_logits.shape[:-1], k):
        raise ValueError(
            f"`experts` must be [..., k={k}] for router_logits {router_logits.shape}; got {experts.shape}."
        )
    counts = jnp.sum(jax.nn.one_hot(experts.reshape(-1, k), E, dtype=jnp.float32), axis=1)  # [N, E]: k choices
    w = jnp.ones(logits.shape[:1], jnp.float32) if valid is None else jnp.asarray(valid, jnp.float32).reshape(-1)
    if w.shape != logits.shape[:1]:
        raise ValueError(f"`valid` must have router_logits' shape without E; got {jnp.shape(valid)}.")
    n = jnp.maximum(jnp.sum(w), 1.0)
    load = jnp.einsum("NE,N->E", counts, w) / n
    prob = jnp.einsum("NE,N->E", jax.nn.softmax(logits, axis=-1), w) / n
    z = jnp.sum(jax.nn.logsumexp(logits, axis=-1) ** 2 * w) / n
    return RouterStats(load, prob, z)


def load_balancing_loss_from_stats(stats: RouterStats) -> jax.Array:
    """E * sum_e f_e P_e with f and P averaged over the stats' leading axes (e.g. layers): see
    `load_balancing_loss`."""
    E = stats.load.shape[-1]
    load = stats.load.reshape(-1, E).mean(axis=0)
    prob = stats.prob.reshape(-1, E).mean(axis=0)
    return E * jnp.sum(load * prob)


def router_z_loss_from_stats(stats: RouterStats) -> jax.Array:
    """The router z-loss of `router_z_loss`, averaged over the stats' leading axes (e.g. layers)."""
    return jnp.mean(stats.z)


def load_balancing_loss(router_logits: jax.Array, k: int, *, valid: jax.Array | None = None) -> jax.Array:
    """The auxiliary load-balancing loss (Switch Transformer eq. 4 with top-k, as transformers'
    `load_balancing_loss_func` of Mixtral / Qwen-MoE computes it):

        loss = E * sum_e f_e P_e,   f_e = #{(t, j): expert_j(t) = e} / T,   P_e = mean_t softmax(logits_t)_e

    over the T tokens of every layer (router_logits `[..., E]`, e.g. `[L, T, E]`), the top k taken from the
    softmax; f counts all k choices of a token, so a uniform routing gives k (and the worst, everything on k
    experts, gives E). `valid` (bool, router_logits' shape without E) leaves out padding tokens.
    """
    return load_balancing_loss_from_stats(router_stats(router_logits, k, valid=valid))


def router_z_loss(router_logits: jax.Array, *, valid: jax.Array | None = None) -> jax.Array:
    """ST-MoE's router z-loss: mean_t (logsumexp_e logits_te)^2 over the (valid) tokens; it keeps the router's
    logits small, where bfloat16 rounds them least."""
    return router_z_loss_from_stats(router_stats(router_logits, 1, valid=valid))
