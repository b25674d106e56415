"""jaxformer.ops: pure, jit- and vmap-able JAX functions for Transformers (no Flax, no global state).

Layout is BTNH (`[batch, length, heads, head_dim]`); masks are boolean with True = "may attend", broadcastable
to `[B, N, T, S]`. Import what you need:

    from jaxformer import ops
    out = ops.dot_product_attention(q, k, v, mask=ops.causal_mask(T))
"""

from jaxformer.ops.activations import ACTIVATIONS, GATED_ACTIVATIONS, geglu, gelu, get_activation, relu, silu, swiglu
from jaxformer.ops.attention import attention_weights, dot_product_attention
from jaxformer.ops.blockwise import blockwise_attention
from jaxformer.ops.classic_attention import additive_attention, multiplicative_attention
from jaxformer.ops.dense import dense
from jaxformer.ops.heads import merge_heads, split_heads
from jaxformer.ops.losses import cross_entropy
from jaxformer.ops.masks import (
    MASKED_LOGIT,
    block_sparse_mask,
    causal_mask,
    combine_masks,
    lengths_to_valid,
    no_self_mask,
    padding_mask,
    segment_mask,
    sliding_window_mask,
)
from jaxformer.ops.moe import (
    ROUTINGS,
    RouterStats,
    expert_capacity,
    load_balancing_loss,
    load_balancing_loss_from_stats,
    moe_ffn,
    moe_ffn_capacity,
    moe_ffn_dense,
    route,
    router_stats,
    router_z_loss,
    router_z_loss_from_stats,
)
from jaxformer.ops.norms import layer_norm, rms_norm
from jaxformer.ops.positions import (
    RopeScaling,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    rope_frequencies,
    sinusoidal_positions,
)
from jaxformer.ops.ring import ring_attention, ring_positions, unzigzag, zigzag
from jaxformer.ops.splash import splash_attention

__all__ = [
    "ACTIVATIONS",
    "GATED_ACTIVATIONS",
    "MASKED_LOGIT",
    "ROUTINGS",
    "RopeScaling",
    "RouterStats",
    "additive_attention",
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "attention_weights",
    "block_sparse_mask",
    "blockwise_attention",
    "causal_mask",
    "combine_masks",
    "cross_entropy",
    "dense",
    "dot_product_attention",
    "expert_capacity",
    "geglu",
    "gelu",
    "get_activation",
    "layer_norm",
    "lengths_to_valid",
    "load_balancing_loss",
    "load_balancing_loss_from_stats",
    "merge_heads",
    "moe_ffn",
    "moe_ffn_capacity",
    "moe_ffn_dense",
    "multiplicative_attention",
    "no_self_mask",
    "padding_mask",
    "relu",
    "ring_attention",
    "ring_positions",
    "rms_norm",
    "rope_frequencies",
    "route",
    "router_stats",
    "router_z_loss",
    "router_z_loss_from_stats",
    "segment_mask",
    "silu",
    "sinusoidal_positions",
    "sliding_window_mask",
    "splash_attention",
    "split_heads",
    "swiglu",
    "unzigzag",
    "zigzag",
]
