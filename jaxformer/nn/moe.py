"""The sparse feed-forward of a mixture of experts (Mixtral, Qwen2/3-MoE, GPT-OSS): a router sends each token to k
of E expert FFNs; an optional shared expert sees every token. The maths is jaxformer.ops.moe."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

from jaxformer import checks, ops
from jaxformer.nn.constraints import resolved, sequence_split
from jaxformer.nn.feedforward import FeedForward
from jaxformer.nn.params import logical_param

_BIASES = ("b_gate", "b_up", "b_down")  # the experts' biases, as ops.moe names them


class RoutingStats(nnx.Variable):
    """What a `MoEFeedForward`'s last call routed (`ops.RouterStats` and the dropped share): written by every call,
    read by the loss that follows it (`router_stats`). Not a parameter: never trained, never saved as a weight."""


class MoEFeedForward(nnx.Module):
    """y_t = sum_j w_tj FFN_{e_tj}(x_t) [+ sigmoid(x_t g) FFN_shared(x_t)], with (w_t, e_t) = route(x_t W_router [+ b]).

    D = `d_model`, F = `d_ff` (each expert's hidden width), E = `num_experts`, k = `experts_per_token`.
    Weights: `router` `[D, E]` on (`embed`, None) (plus `router_bias` `[E]`, GPT-OSS); the experts stacked,
    `w_gate`, `w_up` `[E, D, F]` on (`expert`, `embed`, `mlp`) and `w_down` `[E, F, D]` on (`expert`, `mlp`,
    `embed`), gated SiLU (SwiGLU) experts, LeCun-normal; with `shared_d_ff`, a shared SwiGLU expert of that width
    and its sigmoid gate `[D, 1]` (Qwen2-MoE's shared_expert and shared_expert_gate).

    routing / normalize: `ops.route`'s ("softmax_topk" with renormalised weights for Mixtral and Qwen3-MoE, without
    for Qwen2-MoE; "topk_softmax" for GPT-OSS). capacity_factor: None computes every assignment (`ops.moe_ffn`,
    dropless); a number uses `ops.moe_ffn_capacity`, whose dropped assignments are counted (per batch shard on a
    mesh). GPT-OSS's experts: `expert_bias` (`b_gate`, `b_up` `[E, F]`, `b_down` `[E, D]`, zeros) and
    `activation="gptoss_swiglu"` (`ops.moe.gptoss_swiglu` with `swiglu_limit`, `swiglu_alpha`; default "swiglu").

    `__call__(x [B, T, D], valid=None)` returns y `[B, T, D]` and records, in `RoutingStats` variables, the
    router's statistics over the valid tokens (bool `valid [B, T]`; None: all): `router_load` `[E]` (f_e, the
    mean number of a token's k choices that went to e), `router_prob` `[E]` (P_e, the mean router probability),
    `router_z` (mean squared logsumexp of the logits) and `dropped` (the share of the B T k assignments the
    capacity dropped; 0 when dropless). A model's auxiliary losses are computed from them (`router_stats`,
    `ops.load_balancing_loss_from_stats`); gradients flow through them within the traced step.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        num_experts: int,
        experts_per_token: int,
        *,
        routing: str = "softmax_topk",
        normalize: bool = True,
        router_bias: bool = False,
        shared_d_ff: int | None = None,
        capacity_factor: float | None = None,
        implementation: str = "auto",
        expert_bias: bool = False,
        activation: str = "swiglu",
        swiglu_limit: float = ops.moe.GPTOSS_LIMIT,
        swiglu_alpha: float = ops.moe.GPTOSS_ALPHA,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        d_model, d_ff = checks.check_positive_int("d_model", d_model), checks.check_positive_int("d_ff", d_ff)
        E = checks.check_positive_int("num_experts", num_experts)
        k = checks.check_int("experts_per_token", experts_per_token, low=1, high=E, expected=f"an int in [1, {E}]")
        if routing not in ops.ROUTINGS:
            raise ValueError(f"`routing` must be one of {ops.ROUTINGS}; got {routing!r}.")
        if capacity_factor is not None:
            checks.check_real("capacity_factor", capacity_factor, low=0.0, low_open=True)
        checks.check_choice("activation", activation, ("swiglu", ops.moe.GPTOSS_SWIGLU))
        checks.check_flag("expert_bias", expert_bias)
        # ops.moe's names: the gate's activation of a SwiGLU expert, or GPT-OSS's whole clamped unit.
        self.activation = "silu" if activation == "swiglu" else activation
        # A tuple: module attributes are static (hashed) in the graph definition.
        self.clamp = () if activation == "swiglu" else (("limit", swiglu_limit), ("alpha", swiglu_alpha))
        self.d_model, self.d_ff, self.num_experts, self.experts_per_token = d_model, d_ff, E, k
        self.routing, self.normalize, self.capacity_factor = routing, bool(normalize), capacity_factor
        self.implementation, self.dtype = implementation, checks.check_float_dtype("dtype", dtype)
        param_dtype = checks.check_float_dtype("param_dtype", param_dtype)
        init = nnx.initializers.lecun_normal()
        self.router = logical_param(rngs, init, (d_model, E), ("embed", None), param_dtype)
        self.router_bias = (
            logical_param(rngs, nnx.initializers.zeros, (E,), (None,), param_dtype) if router_bias else None
        )
        expert_init = nnx.initializers.lecun_normal(in_axis=-2, out_axis=-1, batch_axis=(0,))
        self.w_gate = logical_param(rngs, expert_init, (E, d_model, d_ff), ("expert", "embed", "mlp"), param_dtype)
        self.w_up = logical_param(rngs, expert_init, (E, d_model, d_ff), ("expert", "embed", "mlp"), param_dtype)
        self.w_down = logical_param(rngs, expert_init, (E, d_ff, d_model), ("expert", "mlp", "embed"), param_dtype)
        if expert_bias:
            zeros = nnx.initializers.zeros
            self.b_gate = logical_param(rngs, zeros, (E, d_ff), ("expert", "mlp"), param_dtype)
            self.b_up = logical_param(rngs, zeros, (E, d_ff), ("expert", "mlp"), param_dtype)
            self.b_down = logical_param(rngs, zeros, (E, d_model), ("expert", "embed"), param_dtype)
        else:
            self.b_gate = self.b_up = self.b_down = None
        if shared_d_ff is None:
            self.shared = self.shared_gate = None
        else:
            self.shared = FeedForward(
                d_model, shared_d_ff, activation="swiglu", dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )
            self.shared_gate = logical_param(rngs, init, (d_model, 1), ("embed", None), param_dtype)
        self.router_load = RoutingStats(jnp.zeros((E,), jnp.float32))
        self.router_prob = RoutingStats(jnp.zeros((E,), jnp.float32))
        self.router_z = RoutingStats(jnp.zeros((), jnp.float32))
        self.dropped = RoutingStats(jnp.zeros((), jnp.float32))

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        x = checks.check_array("x", x)
        checks.check_rank("x", x, 3, f"[B, T, D={self.d_model}]")
        B, T, D = x.shape
        if D != self.d_model:
            raise ValueError(f"`x` must be [B, T, D={self.d_model}]; got {tuple(x.shape)}.")
        if valid is not None and jnp.shape(valid) != (B, T):
            raise ValueError(f"`valid` must be [B, T] = {(B, T)} like x; got {jnp.shape(valid)}.")
        flat = x.reshape(B * T, D).astype(self.dtype)
        logits = jnp.einsum("ND,DE->NE", flat.astype(jnp.float32), self.router[...].astype(jnp.float32))
        if self.router_bias is not None:
            logits = logits + self.router_bias[...].astype(jnp.float32)
        weights, experts = ops.route(logits, self.experts_per_token, routing=self.routing, normalize=self.normalize)
        w = [v[...].astype(self.dtype) for v in (self.w_gate, self.w_up, self.w_down)]
        if self.b_gate is not None:
            w += [v[...].astype(self.dtype) for v in (self.b_gate, self.b_up, self.b_down)]
        y, count = self._experts(flat, experts, weights, w, sequence_split(B, T))
        dropped = count.astype(jnp.float32) / experts.size
        if self.shared is not None:
            gate = jax.nn.sigmoid(flat @ self.shared_gate[...].astype(self.dtype))  # [N, 1]
            y = y + gate * self.shared(flat[None])[0]
        flat_valid = None if valid is None else jnp.reshape(valid, (-1,))
        stats = ops.router_stats(logits, self.experts_per_token, experts=experts, valid=flat_valid)
        self.router_load[...], self.router_prob[...], self.router_z[...] = stats
        self.dropped[...] = dropped
        return y.reshape(B, T, D).astype(x.dtype)

    def _experts(self, x, experts, weights, w, split=None):
        """(the routed FFN of the tokens `[N, D]`, the assignments dropped). Under a sharded step (activation hints
        on, nn/constraints.py) each shard of the batch routes its own tokens (`jax.shard_map`): no device gathers
        the others' tokens to sort them; the experts' weights come whole to every device (all-gathered over the
        expert axis, layer by layer, like FSDP's parameters). With the sequence split too (context parallelism:
        `split` = (mesh axis, ...), `sequence_split`), each device routes its own slice of its rows' tokens: the
        flattened [B T] rows are split over the batch axes and then that axis."""
        options = {"activation": self.activation, **dict(self.clamp)}
        if self.capacity_factor is None:
            routed = lambda *args, **kw: (ops.moe_ffn(*args, **kw, implementation=self.implementation), jnp.int32(0))
        else:
            routed = functools.partial(ops.moe_ffn_capacity, capacity_factor=self.capacity_factor)
        # w: (w_gate, w_up, w_down), then (b_gate, b_up, b_down) when the experts have biases.
        ffn = lambda x, e, p, *w: routed(x, e, p, *w[:3], **dict(zip(_BIASES, w[3:], strict=False)), **options)
        sharding = resolved(("batch", None), x.shape)
        batch = () if sharding is None or sharding.spec[0] is None else sharding.spec[0]
        batch = (batch,) if isinstance(batch, str) else tuple(batch)
        row_axes = batch + (() if split is None else (split[0],))
        if not row_axes:
            return ffn(x, experts, weights, *w)
        rows, whole = PartitionSpec(row_axes), PartitionSpec()

        def local(x, e, p, *w):
            y, count = ffn(x, e, p, *w)
            return y, count[None]

        y, counts = jax.shard_map(
            local, mesh=sharding.mesh, in_specs=(rows, rows, rows, *(whole,) * len(w)), out_specs=(rows, rows)
        )(x, experts, weights, *w)
        return y, jnp.sum(counts)


def router_stats(module: nnx.Module) -> tuple[ops.RouterStats, jax.Array] | None:
    """The `RoutingStats` of every `MoEFeedForward` in `module` after its last call, stacked: (ops.RouterStats
    with a leading axis over the sparse layers, `[M, E]` / `[M]`, and the dropped shares `[M]`); None when it
    has no experts. Scanned layers contribute their stacked `[L, ...]` entries."""
    layers = [m for _, m in nnx.iter_graph(module) if isinstance(m, MoEFeedForward)]
    if not layers:
        return None
    E = layers[0].num_experts
    gather = lambda name, *shape: jnp.concatenate([getattr(m, name)[...].reshape(-1, *shape) for m in layers])
    stats = ops.RouterStats(gather("router_load", E), gather("router_prob", E), gather("router_z"))
    return stats, gather("dropped")
