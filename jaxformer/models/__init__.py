"""jaxformer.models: ModelConfig and its named variants; GPT, BERT, the encoder-decoder Transformer, ViT."""

from jaxformer.models.bert import BERT, BERTOutput
from jaxformer.models.config import VARIANTS, ModelConfig
from jaxformer.models.gpt import GPT, ROUTER_METRICS
from jaxformer.models.masking import mask_for_mlm
from jaxformer.models.transformer import Transformer
from jaxformer.models.vit import ViT

__all__ = [
    "BERT",
    "GPT",
    "ROUTER_METRICS",
    "VARIANTS",
    "BERTOutput",
    "ModelConfig",
    "Transformer",
    "ViT",
    "mask_for_mlm",
]
