"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al. 2017)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import checks, nn, ops
from jaxformer.models.config import ModelConfig
from jaxformer.models.embedding import InputEmbedding, check_tokens, check_valid
from jaxformer.models.gpt import OutputHead
from jaxformer.models.stack import BlockStack
from jaxformer.nn.blocks import ABSOLUTE_POSITIONAL, apply_norm, make_norm


class Transformer(nnx.Module):
    """Encoder-decoder with cross-attention; one token embedding shared by source, target and output logits
    (the paper's shared 37k BPE vocabulary), scaled by sqrt(D), plus sinusoidal positions in the variants.

        memory = Encoder(Embed(src))                      [B, S, D]
        logits = Head(Decoder(Embed(tgt_in), memory))     [B, T, V]    (causal self-attention + cross-attention)

    Training is teacher-forced: `model(src, tgt_in, src_valid=..., tgt_valid=...)`, where `tgt_in` is the target
    shifted right (starting with BOS). Inference: `memory = model.encode(src, src_valid=...)`, then
    `model.init_cache(batch, max_len)` and `model.decode(tokens, memory, src_valid=..., decode=True)` per step
    (see `jaxformer.decoding.beam_search`).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.layer_types is not None:
            raise ValueError(
                "ModelConfig.layer_types describes one stack of num_layers layers; the encoder-decoder Transformer "
                "has two, so it takes layer_types=None (sliding_window, if set, applies to every layer)."
            )
        self.config = config
        pre_norm = config.norm_position == "pre"
        self.embed = InputEmbedding(config, rngs=rngs)
        self.encoder = BlockStack(
            lambda r: nn.EncoderBlock(config, rngs=r),
            config.num_layers,
            scan=config.scan_layers,
            rngs=rngs,
            remat=config.remat,
        )
        self.encoder_norm = make_norm(config, rngs=rngs) if pre_norm else None
        self.decoder = BlockStack(
            lambda r: nn.DecoderBlock(config, cross_attention=True, rngs=r),
            config.decoder_layers,
            scan=config.scan_layers,
            rngs=rngs,
            remat=config.remat,
        )
        self.decoder_norm = make_norm(config, rngs=rngs) if pre_norm else None
        self.head = OutputHead(config, self.embed.tokens, rngs=rngs)

    def init_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> None:
        """An empty KV cache in the decoder's self-attention for `batch_size` targets of up to `max_len` tokens."""
        self.decoder.init_cache(batch_size, self.config.max_len if max_len is None else max_len, dtype)

    def encode(self, src: jax.Array, *, src_valid: jax.Array | None = None) -> jax.Array:
        """src int `[B, S]`, src_valid bool `[B, S]` (False = padding) -> memory `[B, S, D]`."""
        cfg = self.config
        src = check_tokens("src", src, cfg.vocab_size, cfg.max_len if cfg.positional in ABSOLUTE_POSITIONAL else None)
        src_valid = check_valid("src_valid", src_valid, src.shape)
        mask = None if src_valid is None else ops.padding_mask(src_valid)
        x = self.embed(src, valid=src_valid)
        x = self.encoder(x, mask=mask, valid=src_valid)
        return apply_norm(self.encoder_norm, x, src_valid)

    def decode(
        self,
        tgt: jax.Array,
        memory: jax.Array,
        *,
        src_valid: jax.Array | None = None,
        tgt_valid: jax.Array | None = None,
        positions: jax.Array | None = None,
        decode: bool = False,
    ) -> jax.Array:
        """tgt int `[B, T]`, memory `[B, S, D]` from `encode` -> logits float32 `[B, T, V]`.

        With `decode=True` the self-attention appends to its KV cache and positions continue from its index.
        """
        cfg = self.config
        tgt = check_tokens("tgt", tgt, cfg.vocab_size, cfg.max_len if cfg.positional in ABSOLUTE_POSITIONAL else None)
        tgt_valid = check_valid("tgt_valid", tgt_valid, tgt.shape)
        memory = checks.check_array("memory", memory)
        checks.check_floating("memory", memory)
        if memory.ndim != 3 or memory.shape[0] != tgt.shape[0] or memory.shape[2] != cfg.d_model:
            raise ValueError(
                f"`memory` must be [B={tgt.shape[0]}, S, D={cfg.d_model}] from encode(); got {tuple(memory.shape)}."
            )
        src_valid = check_valid("src_valid", src_valid, memory.shape[:2])
        decode = checks.check_flag("decode", decode)
        if decode and tgt_valid is not None:
            raise ValueError("decode=True takes no tgt_valid: the KV cache's index marks each target's length.")
        T = tgt.shape[1]
        if decode:
            index = self.decoder.cache_index(T)  # raises if the T tokens would not fit the cache
            if positions is None:
                positions = index[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
        self_mask = None if tgt_valid is None else ops.padding_mask(tgt_valid)
        cross_mask = None if src_valid is None else src_valid[:, None, None, :]
        x = self.embed(tgt, positions=positions, valid=tgt_valid)
        x = self.decoder(
            x, memory, mask=self_mask, context_mask=cross_mask, valid=tgt_valid, positions=positions, decode=decode
        )
        return self.head(apply_norm(self.decoder_norm, x, tgt_valid))

    def __call__(
        self,
        src: jax.Array,
        tgt_in: jax.Array,
        *,
        src_valid: jax.Array | None = None,
        tgt_valid: jax.Array | None = None,
    ) -> jax.Array:
        """Teacher-forced logits float32 `[B, T, V]` for src `[B, S]` and the right-shifted target `[B, T]`."""
        memory = self.encode(src, src_valid=src_valid)
        return self.decode(tgt_in, memory, src_valid=src_valid, tgt_valid=tgt_valid)
