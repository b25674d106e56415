"""jaxformer.models: ModelConfig and its named variants; GPT, BERT, the encoder-decoder Transformer, ViT."""

from jaxformer.models.config import VARIANTS, ModelConfig
from jaxformer.models.gpt import GPT

__all__ = ["GPT", "VARIANTS", "ModelConfig"]
