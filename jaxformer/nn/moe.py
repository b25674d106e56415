"""The sparse feed-forward of a mixture of experts (Mixtral, Qwen2/3-MoE, GPT-OSS): a router sends each token to k
of E expert FFNs; an optional shared expert sees every token. The maths is jaxformer.ops.moe."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import checks, ops
from jaxformer.nn.feedforward import FeedForward
from jaxformer.nn.params import logical_param


class MoEFeedForward(nnx.Module):
    """y_t = sum_j w_tj FFN_{e_tj}(x_t) [+ sigmoid(x_t g) FFN_shared(x_t)], with (w_t, e_t) = route(x_t W_router [+ b]).

    D = `d_model`, F = `d_ff` (each expert's hidden width), E = `num_experts`, k = `experts_per_token`.
    Weights: `router` `[D, E]` on (`embed`, None) (plus `router_bias` `[E]`, GPT-OSS); the experts stacked,
    `w_gate`, `w_up` `[E, D, F]` on (`expert`, `embed`, `mlp`) and `w_down` `[E, F, D]` on (`expert`, `mlp`,
    `embed`), gated SiLU (SwiGLU) experts, LeCun-normal; with `shared_d_ff`, a shared SwiGLU expert of that width
    and its sigmoid gate `[D, 1]` (Qwen2-MoE's shared_expert and shared_expert_gate).

    routing / normalize: `ops.route`'s ("softmax_topk" with renormalised weights for Mixtral and Qwen3-MoE, without
    for Qwen2-MoE; "topk_softmax" for GPT-OSS). capacity_factor: None computes every assignment (`ops.moe_ffn`,
    dropless); a number uses `ops.moe_ffn_capacity`, whose dropped assignments are counted.

    `__call__(x [B, T, D], valid=None)` returns (y `[B, T, D]`, aux), aux a dict: `router_logits` float32
    `[B, T, E]` (for `ops.load_balancing_loss` / `ops.router_z_loss`), `tokens_per_expert` float32 `[E]` (the
    share of the valid tokens' k choices each expert got) and `dropped` (assignments dropped by the capacity,
    int32; 0 when dropless).
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
        if shared_d_ff is None:
            self.shared = self.shared_gate = None
        else:
            self.shared = FeedForward(
                d_model, shared_d_ff, activation="swiglu", dtype=dtype, param_dtype=param_dtype, rngs=rngs
            )
            self.shared_gate = logical_param(rngs, init, (d_model, 1), ("embed", None), param_dtype)

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, dict]:
        x = checks.check_array("x", x)
        checks.check_rank("x", x, 3, f"[B, T, D={self.d_model}]")
        B, T, D = x.shape
        if D != self.d_model:
            raise ValueError(f"`x` must be [B, T, D={self.d_model}]; got {tuple(x.shape)}.")
        flat = x.reshape(B * T, D).astype(self.dtype)
        logits = jnp.einsum("ND,DE->NE", flat.astype(jnp.float32), self.router[...].astype(jnp.float32))
        if self.router_bias is not None:
            logits = logits + self.router_bias[...].astype(jnp.float32)
        weights, experts = ops.route(logits, self.experts_per_token, routing=self.routing, normalize=self.normalize)
        w = [v[...].astype(self.dtype) for v in (self.w_gate, self.w_up, self.w_down)]
        if self.capacity_factor is None:
            y = ops.moe_ffn(flat, experts, weights, *w, implementation=self.implementation)
            dropped = jnp.int32(0)
        else:
            y, dropped = ops.moe_ffn_capacity(flat, experts, weights, *w, capacity_factor=self.capacity_factor)
        if self.shared is not None:
            gate = jax.nn.sigmoid(flat @ self.shared_gate[...].astype(self.dtype))  # [N, 1]
            y = y + gate * self.shared(flat[None])[0]
        mask = jnp.ones((B * T,), jnp.float32) if valid is None else jnp.asarray(valid, jnp.float32).reshape(-1)
        choices = jnp.sum(jax.nn.one_hot(experts, self.num_experts, dtype=jnp.float32), axis=1)  # [N, E]
        share = jnp.einsum("NE,N->E", choices, mask) / jnp.maximum(jnp.sum(mask) * self.experts_per_token, 1.0)
        aux = {"router_logits": logits.reshape(B, T, -1), "tokens_per_expert": share, "dropped": dropped}
        return y.reshape(B, T, D).astype(x.dtype), aux
