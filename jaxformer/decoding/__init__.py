"""jaxformer.decoding: KV-cache generation (greedy, temperature, top-k, top-p; all at once or streamed in chunks)
and beam search."""

from jaxformer.decoding.beam_search import beam_search, length_normalizer
from jaxformer.decoding.cache import kv_cache_bytes, reorder_cache, set_cache_index
from jaxformer.decoding.generate import generate, generate_stream
from jaxformer.decoding.sampling import sample_logits, top_k_logits, top_p_logits

__all__ = [
    "beam_search",
    "generate",
    "generate_stream",
    "kv_cache_bytes",
    "length_normalizer",
    "reorder_cache",
    "sample_logits",
    "set_cache_index",
    "top_k_logits",
    "top_p_logits",
]
