"""Mixture of experts as pure functions: routing, the routed feed-forward (dropless grouped matmuls, or static
expert capacity), and the router's auxiliary losses.

    weights, experts = ops.route(router_logits, k=2)                       # [T, k] each: Mixtral's router
    out = ops.moe_ffn(x, experts, weights, w_gate, w_up, w_down)           # [T, D], every token through its k
    out, dropped = ops.moe_ffn_capacity(x, experts, weights, ..., capacity_factor=1.25)   # static shapes
    aux = ops.load_balancing_loss(router_logits, k=2)                      # Switch / Mixtral balance loss
    z = ops.router_z_loss(router_logits)                                   # ST-MoE's z-loss

Shapes: T tokens (a flattened batch), D model width, F an expert's hidden width, E experts, k experts per token.
Expert weights are stacked: w_gate, w_up `[E, D, F]`, w_down `[E, F, D]` (transformers 5's stacked layout).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxformer import checks
from jaxformer.ops.activations import get_activation

ROUTINGS = ("softmax_topk", "topk_softmax")


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


def _expert_ffn(h_up, h_gate, activation):
    """The hidden activations of a (gated) expert FFN from its up (and gate) projections."""
    act = get_activation(activation)
    return h_up * act(h_gate) if h_gate is not None else act(h_up)


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
) -> jax.Array:
    """The routed feed-forward, dropless: out_t = sum_j weights[t, j] FFN_{experts[t, j]}(x_t), `[T, D]`.

    FFN_e(x) = (act(x W_gate[e]) * (x W_up[e])) W_down[e] (gated, as SwiGLU), or act(x W_up[e]) W_down[e] when
    w_gate is None. The T k (token, expert) assignments are sorted by expert and each projection is one grouped
    matmul: every token is computed by its k experts only, never by all E, and none is dropped. Equal to
    `moe_ffn_dense` (every expert on every token), values and gradients.

    implementation: "ragged_dot" (`jax.lax.ragged_dot` over the E groups: the grouped-GEMM kernels of TPUs and
    GPUs); "blocks" (each expert's rows padded to a multiple of `block` rows, then one batched matmul over the
    blocks with each block's expert weights: at most E - 1 blocks of padding; what XLA:CPU runs fast, where its
    ragged_dot computed every group densely: BENCHMARKS.md, "Mixture of experts"); "auto": blocks on the CPU,
    ragged_dot elsewhere.

    x `[T, D]`; experts int `[T, k]` in [0, E); weights `[T, k]`; w_gate, w_up `[E, D, F]`; w_down `[E, F, D]`.
    """
    T, D, E = _check_expert_weights(x, experts, weights, w_gate, w_up, w_down)
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
        rows = x[tokens]  # [T k, D]
        up = jax.lax.ragged_dot(rows, w_up, sizes)  # [T k, F]
        gate = None if w_gate is None else jax.lax.ragged_dot(rows, w_gate, sizes)
        down = jax.lax.ragged_dot(_expert_ffn(up, gate, activation), w_down, sizes)  # [T k, D]
    else:
        down = _blocks_ffn(x, tokens, flat[order], sizes, w_gate, w_up, w_down, activation, block)
    scaled = down * weights.reshape(-1)[order][:, None].astype(down.dtype)
    return jnp.zeros((T, D), down.dtype).at[tokens].add(scaled)


def _blocks_ffn(x, tokens, sorted_experts, sizes, w_gate, w_up, w_down, activation, block):
    """The expert FFN of each sorted assignment `[M, D]`, each expert's rows in blocks of `block` rows."""
    M, E = tokens.shape[0], sizes.shape[0]
    padded = (sizes + block - 1) // block * block  # [E] rows each expert's blocks hold
    ends = jnp.cumsum(padded)
    starts = ends - padded
    rank = jnp.arange(M) - (jnp.cumsum(sizes) - sizes)[sorted_experts]  # an assignment's rank in its group
    dest = starts[sorted_experts] + rank  # its row among the blocks
    n = -(-M // block) + E  # blocks: enough for any routing (each expert wastes less than one)
    rows = jnp.zeros((n * block, x.shape[1]), x.dtype).at[dest].set(x[tokens]).reshape(n, block, -1)
    owner = jnp.minimum(jnp.searchsorted(ends, jnp.arange(n) * block, side="right"), E - 1)  # [n] block -> expert
    up = jnp.einsum("nbd,ndf->nbf", rows, w_up[owner])
    gate = None if w_gate is None else jnp.einsum("nbd,ndf->nbf", rows, w_gate[owner])
    down = jnp.einsum("nbf,nfd->nbd", _expert_ffn(up, gate, activation), w_down[owner])
    return down.reshape(n * block, -1)[dest]


def moe_ffn_dense(x, experts, weights, w_gate, w_up, w_down, *, activation: str = "silu") -> jax.Array:
    """The reference of `moe_ffn`: every expert on every token, combined by one-hot routing weights `[T, E]`.
    E times the compute of the routed tokens; for tests and as the baseline the grouped matmul is measured against."""
    T, D, E = _check_expert_weights(x, experts, weights, w_gate, w_up, w_down)
    up = jnp.einsum("TD,EDF->ETF", x, w_up)
    gate = None if w_gate is None else jnp.einsum("TD,EDF->ETF", x, w_gate)
    down = jnp.einsum("ETF,EFD->ETD", _expert_ffn(up, gate, activation), w_down)  # [E, T, D]
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
) -> tuple[jax.Array, jax.Array]:
    """The routed feed-forward with static shapes (GShard / Switch): each expert computes a fixed C =
    `expert_capacity(T, k, E, capacity_factor)` slots, filled in token order (the first choices of every token
    before the second choices); assignments past an expert's C are dropped (their weight lost; the token keeps its
    residual). Returns (out `[T, D]`, the number of dropped assignments, int32). Equal to `moe_ffn` when nothing is
    dropped. Dispatch and combine are one-hot einsums over `[T, E, C]`: no sort, no ragged shapes (what TPUs
    compile best at moderate E)."""
    T, D, E = _check_expert_weights(x, experts, weights, w_gate, w_up, w_down)
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
    up = jnp.einsum("ECD,EDF->ECF", routed, w_up)
    gate = None if w_gate is None else jnp.einsum("ECD,EDF->ECF", routed, w_gate)
    down = jnp.einsum("ECF,EFD->ECD", _expert_ffn(up, gate, activation), w_down)
    combine = dispatch * jnp.swapaxes(weights, 0, 1).astype(x.dtype)[:, :, None, None]  # [k, T, E, C]
    out = jnp.einsum("KTEC,ECD->TD", combine, down)
    return out, jnp.sum(~kept).astype(jnp.int32)


def load_balancing_loss(router_logits: jax.Array, k: int, *, valid: jax.Array | None = None) -> jax.Array:
    """The auxiliary load-balancing loss (Switch Transformer eq. 4 with top-k, as transformers'
    `load_balancing_loss_func` of Mixtral / Qwen-MoE computes it):

        loss = E * sum_e f_e P_e,   f_e = #{(t, j): expert_j(t) = e} / T,   P_e = mean_t softmax(logits_t)_e

    over the T tokens of every layer (router_logits `[..., E]`, e.g. `[L, T, E]`), the top k taken from the
    softmax; f counts all k choices of a token, so a uniform routing gives k (and the worst, everything on k
    experts, gives E). `valid` (bool, router_logits' shape without E) leaves out padding tokens.
    """
    router_logits = checks.check_array("router_logits", router_logits)
    checks.check_floating("router_logits", router_logits)
    E = router_logits.shape[-1]
    k = checks.check_int("k", k, low=1, high=E, expected=f"an int in [1, E={E}] (experts per token)")
    probs = jax.nn.softmax(router_logits.astype(jnp.float32), axis=-1).reshape(-1, E)  # [N, E]
    _, chosen = jax.lax.top_k(probs, k)
    counts = jnp.sum(jax.nn.one_hot(chosen, E, dtype=jnp.float32), axis=1)  # [N, E]: a token's k choices
    w = jnp.ones(probs.shape[:1], jnp.float32) if valid is None else jnp.asarray(valid, jnp.float32).reshape(-1)
    if w.shape != probs.shape[:1]:
        raise ValueError(f"`valid` must have router_logits' shape without E; got {jnp.shape(valid)}.")
    n = jnp.maximum(jnp.sum(w), 1.0)
    tokens_per_expert = jnp.einsum("NE,N->E", counts, w) / n  # f [E]
    prob_per_expert = jnp.einsum("NE,N->E", probs, w) / n  # P [E]
    return E * jnp.sum(tokens_per_expert * prob_per_expert)


def router_z_loss(router_logits: jax.Array, *, valid: jax.Array | None = None) -> jax.Array:
    """ST-MoE's router z-loss: mean_t (logsumexp_e logits_te)^2 over the (valid) tokens; it keeps the router's
    logits small, where bfloat16 rounds them least."""
    router_logits = checks.check_array("router_logits", router_logits)
    checks.check_floating("router_logits", router_logits)
    z = jax.nn.logsumexp(router_logits.astype(jnp.float32), axis=-1) ** 2
    if valid is None:
        return jnp.mean(z)
    w = jnp.asarray(valid, jnp.float32)
    return jnp.sum(z * w) / jnp.maximum(jnp.sum(w), 1.0)
