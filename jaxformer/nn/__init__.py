"""jaxformer.nn: Flax NNX layers that own parameters (with logical axis names) and call jaxformer.ops."""

from jaxformer.nn.attention import MultiHeadAttention
from jaxformer.nn.blocks import BlockConfig, DecoderBlock, EncoderBlock
from jaxformer.nn.embed import Embed, LearnedPositions
from jaxformer.nn.feedforward import FeedForward
from jaxformer.nn.moe import MoEFeedForward, RoutingStats, router_stats
from jaxformer.nn.norms import BatchNorm, LayerNorm, RMSNorm
from jaxformer.nn.params import LOGICAL_AXES, logical_axes, logical_param

__all__ = [
    "LOGICAL_AXES",
    "BatchNorm",
    "BlockConfig",
    "DecoderBlock",
    "Embed",
    "EncoderBlock",
    "FeedForward",
    "LayerNorm",
    "LearnedPositions",
    "MoEFeedForward",
    "MultiHeadAttention",
    "RMSNorm",
    "RoutingStats",
    "logical_axes",
    "logical_param",
    "router_stats",
]
