"""BERT: a bidirectional encoder pre-trained by masked language modelling (Devlin et al. 2019)."""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import checks, nn, ops
from jaxformer.models.config import ModelConfig
from jaxformer.models.embedding import InputEmbedding, check_tokens, check_valid
from jaxformer.models.stack import BlockStack
from jaxformer.nn.blocks import apply_norm, make_norm

# The MLM transform is element-wise; a gated activation (swiglu, geglu) has no D -> D form, so such configs use the
# exact GELU there, as ModernBERT does with its GeGLU feed-forward and GELU head.
_GATED_FALLBACK = "gelu_exact"


def _dense_params(cfg: ModelConfig, rngs: nnx.Rngs) -> tuple[nnx.Param, nnx.Param]:
    """A D -> D kernel (LeCun normal, as every jaxformer dense layer) and a zero bias `[D]`.

    The kernel's input axis is unnamed: one mesh axis can shard only one dimension, so `("embed", "embed")` is
    not a valid layout; the output axis is `embed`, sharded like the residual stream it feeds.
    """
    D = cfg.d_model
    kernel = nn.logical_param(rngs, nnx.initializers.lecun_normal(), (D, D), (None, "embed"), cfg.param_dtype)
    bias = nn.logical_param(rngs, nnx.initializers.zeros, (D,), ("embed",), cfg.param_dtype)
    return kernel, bias


class BERTOutput(NamedTuple):
    """hidden `[B, T, D]`: the final token states; pooled `[B, D]`: tanh(hidden[:, 0] W + b), the [CLS] summary
    (None for a model built with `pooler=False`)."""

    hidden: jax.Array
    pooled: jax.Array | None


class Pooler(nnx.Module):
    """pooled = tanh(h_0 W + b) `[B, D]` from the first ([CLS]) token's state h_0; `W [D, D]`, `b [D]`.

    BERT trains it on next-sentence prediction and fine-tunes sentence classifiers on top of it.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.dtype = cfg.dtype
        self.kernel, self.bias = _dense_params(cfg, rngs)

    def __call__(self, hidden: jax.Array) -> jax.Array:
        hidden = checks.check_array("hidden", hidden)
        checks.check_floating("hidden", hidden)
        D = self.kernel.shape[0]
        if hidden.ndim != 3 or hidden.shape[1] < 1 or hidden.shape[2] != D:
            raise ValueError(
                f"`hidden` must be final states [B, T, D={D}] with T >= 1 (the pooler reads token 0); got shape "
                f"{tuple(hidden.shape)}."
            )
        h0 = hidden[:, 0].astype(self.dtype)
        return jnp.tanh(
            ops.dense("BD,DE->BE", h0, self.kernel[...], dtype=self.dtype) + self.bias[...].astype(self.dtype)
        )


class MLMHead(nnx.Module):
    """Masked-LM logits `[..., V]` in float32:

        z = Norm(act(h W + b)),   logits = z E^T + c   (tied, E the token embedding `[V, D]`)
                                  logits = z U + c     (untied, `U [D, V]`)

    `W [D, D]`, `b [D]`, output bias `c [V]`. `act` is the config's activation (exact GELU for BERT); a gated
    activation (swiglu, geglu) falls back to the exact GELU, since the transform is element-wise.
    """

    def __init__(self, cfg: ModelConfig, embed: nn.Embed, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.kernel, self.bias = _dense_params(cfg, rngs)
        self.act = ops.get_activation(_GATED_FALLBACK if cfg.activation in ops.GATED_ACTIVATIONS else cfg.activation)
        self.norm = make_norm(cfg, rngs=rngs)
        if cfg.tie_embeddings:
            self.embed, self.decoder = embed, None
        else:
            self.embed = None
            init = nnx.initializers.normal(stddev=cfg.init_std)
            self.decoder = nn.logical_param(
                rngs, init, (cfg.d_model, cfg.padded_vocab_size), ("embed", "vocab"), cfg.param_dtype
            )
        self.output_bias = nn.logical_param(
            rngs, nnx.initializers.zeros, (cfg.vocab_size,), ("vocab",), cfg.param_dtype
        )

    def __call__(self, hidden: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        cfg = self.cfg
        hidden = checks.check_array("hidden", hidden)
        checks.check_floating("hidden", hidden)
        if hidden.ndim < 2 or hidden.shape[-1] != cfg.d_model:
            raise ValueError(f"`hidden` must be [..., D={cfg.d_model}]; got shape {tuple(hidden.shape)}.")
        valid = check_valid("valid", valid, hidden.shape[:-1])
        h = hidden.astype(cfg.dtype)
        z = ops.dense("...D,DE->...E", h, self.kernel[...], dtype=cfg.dtype) + self.bias[...].astype(cfg.dtype)
        z = self.act(z)
        z = apply_norm(self.norm, z, valid)
        if self.decoder is None:
            logits = self.embed.attend(z)
        else:
            logits = ops.dense("...D,DV->...V", z, self.decoder[...], dtype=cfg.dtype)
        logits = logits[..., : cfg.vocab_size]  # the tables may be padded to vocab_multiple
        chex.assert_shape(logits, (*hidden.shape[:-1], cfg.vocab_size))
        # Add the bias in float32: the softmax / loss wants float32 even when computing in bfloat16.
        return logits.astype(jnp.float32) + self.output_bias[...].astype(jnp.float32)


class BERT(nnx.Module):
    """Encoder-only model: `model(tokens [B, T]) -> BERTOutput(hidden [B, T, D], pooled [B, D])`, bidirectional.

        x = InputEmbedding(tokens, token_types); x = EncoderBlock(x) (L times); hidden = FinalNorm(x)
        pooled = tanh(hidden[:, 0] W_p + b_p);  mlm_logits(hidden) = MLMHead(hidden)   [B, T, V]

    With the `bert-*` variants this is BERT (post-norm, learned positions, segment embeddings, a norm after the
    embedding sum, exact GELU, tied MLM decoder). Pre-norm configs get the final norm their residual stream
    needs; post-norm blocks end normalised. `bert-base` has 109,482,240 parameters without the MLM head (the
    Hugging Face `bert-base-uncased` count, pooler included) and 110,104,890 with it.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.final_logit_softcap is not None:
            raise ValueError("ModelConfig.final_logit_softcap caps a language model's logits; BERT takes None.")
        self.config = config
        self.embed = InputEmbedding(config, rngs=rngs)
        self.blocks = BlockStack(
            lambda r, kind=None: nn.EncoderBlock(config.layer_config(kind), rngs=r),
            config.num_layers,
            scan=config.scan_layers,
            rngs=rngs,
            remat=config.remat,
            kinds=config.layer_types,
        )
        self.final_norm = make_norm(config, rngs=rngs) if config.norm_position == "pre" else None
        self.pooler = Pooler(config, rngs=rngs) if config.pooler else None
        self.mlm_head = MLMHead(config, self.embed.tokens, rngs=rngs) if config.mlm_head else None

    def __call__(
        self,
        tokens: jax.Array,
        *,
        valid: jax.Array | None = None,
        token_types: jax.Array | None = None,
        positions: jax.Array | None = None,
    ) -> BERTOutput:
        """tokens int `[B, T]` -> BERTOutput(hidden `[B, T, D]`, pooled `[B, D]`), in the config's dtype.

        valid: bool `[B, T]`, False at padding. Padding is masked as a key (no real token attends to it) and left
        out of BatchNorm statistics; the states of padding positions are finite but meaningless.
        token_types: int `[B, T]` segment ids in [0, type_vocab_size) (default all 0: sentence A).
        positions: int `[T]` or `[B, T]` (default `arange(T)`).
        """
        cfg = self.config
        tokens = check_tokens("tokens", tokens, cfg.vocab_size, None)  # max_len is checked by the embedding
        if token_types is not None:
            if not cfg.type_vocab_size:
                raise ValueError("`token_types` needs segment embeddings: build the model with type_vocab_size > 0.")
            token_types = check_tokens("token_types", token_types, cfg.type_vocab_size, None)
            if token_types.shape != tokens.shape:
                raise ValueError(
                    f"`token_types` must have the shape of `tokens` {tuple(tokens.shape)}; "
                    f"got {tuple(token_types.shape)}."
                )
        valid = check_valid("valid", valid, tokens.shape)
        if self.pooler is not None and tokens.shape[1] == 0:
            raise ValueError(
                "`tokens` must hold at least one token ([CLS], which the pooler reads); got shape "
                f"{tuple(tokens.shape)}. Build the model with pooler=False to encode empty sequences."
            )
        # [B, 1, T, T]: padded query rows attend to nothing and output zeros
        mask = None if valid is None else ops.padding_mask(valid)
        x = self.embed(tokens, positions=positions, token_types=token_types, valid=valid)
        x = self.blocks(x, mask=mask, valid=valid, positions=positions)
        x = apply_norm(self.final_norm, x, valid)
        return BERTOutput(hidden=x, pooled=None if self.pooler is None else self.pooler(x))

    def mlm_logits(self, hidden: jax.Array, *, valid: jax.Array | None = None) -> jax.Array:
        """Masked-LM logits float32 `[..., V]` from final states `[..., D]` (`[B, T, D]`, or gathered `[M, D]`).

        valid: bool `hidden.shape[:-1]`, used only by a BatchNorm head (its statistics skip padding).
        """
        if self.mlm_head is None:
            raise ValueError("This BERT has no masked-LM head (ModelConfig.mlm_head=False).")
        return self.mlm_head(hidden, valid)
