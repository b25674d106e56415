"""GPT: a decoder-only language model (Radford et al. 2018/2019), and its modern relatives by config."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import nn, ops
from jaxformer.models.config import ModelConfig
from jaxformer.models.embedding import InputEmbedding, check_tokens, check_valid
from jaxformer.models.stack import BlockStack
from jaxformer.nn.blocks import ABSOLUTE_POSITIONAL, apply_norm, make_norm
from jaxformer.nn.constraints import sequence_positions

# What `GPT.router_losses` reports of a mixture of experts' routing (the training log's `train_moe_*`).
ROUTER_METRICS = ("moe_balance_loss", "moe_z_loss", "moe_max_load", "moe_dropped")


class OutputHead(nnx.Module):
    """Logits `[B, T, V]` in float32: `x E^T` with the input embedding E when tied, else `x W` (`W [D, V]`).

    E and W have `cfg.padded_vocab_size` rows / columns (V rounded up to `vocab_multiple`, so that the largest
    matmul of a GPT has a friendly shape); the logits of the padding columns are sliced off. With
    `cfg.head_bias` a bias `b [V]` is added (as some checkpoints have). With `cfg.final_logit_softcap` = c the
    logits z become `c * tanh(z / c)` in float32 (Gemma 2), bounded to (-c, c)."""

    def __init__(self, cfg: ModelConfig, embed: nn.Embed, *, rngs: nnx.Rngs):
        self.cfg = cfg
        if cfg.tie_embeddings:
            self.embed, self.kernel = embed, None
        else:
            self.embed = None
            init = nnx.initializers.normal(stddev=cfg.init_std)
            self.kernel = nn.logical_param(
                rngs, init, (cfg.d_model, cfg.padded_vocab_size), ("embed", "vocab"), cfg.param_dtype
            )
        zeros = nnx.initializers.zeros
        self.bias = (
            nn.logical_param(rngs, zeros, (cfg.padded_vocab_size,), ("vocab",), cfg.param_dtype)
            if cfg.head_bias
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.kernel is None:
            logits = self.embed.attend(x)
        else:
            logits = ops.dense("BTD,DV->BTV", x, self.kernel[...], dtype=self.cfg.dtype)
        if self.bias is not None:
            logits = logits + self.bias[...].astype(logits.dtype)
        logits = logits[..., : self.cfg.vocab_size]  # a no-op unless the tables are padded
        chex.assert_shape(logits, (*x.shape[:-1], self.cfg.vocab_size))  # an invariant: V columns, whatever padding
        logits = logits.astype(jnp.float32)  # the softmax / loss wants float32 even when computing in bfloat16
        cap = self.cfg.final_logit_softcap
        return logits if cap is None else cap * jnp.tanh(logits / cap)


class GPT(nnx.Module):
    """Decoder-only LM: `model(tokens [B, T]) -> logits [B, T, V]`, causal.

        x = InputEmbedding(tokens); x = DecoderBlock(x) (L times); logits = Head(FinalNorm(x))

    With the `gpt2-*` variants this is GPT-2 (pre-norm, learned positions, GELU, tied embeddings); switch to
    `positional="rope", norm="rmsnorm", activation="swiglu", num_kv_heads=...` for a LLaMA-style model.
    Pre-norm models get the final norm that their residual stream needs; post-norm blocks end normalised.

    Decoding: `init_cache(batch_size, max_len)`, then calls with `decode=True` append to the KV cache (prefill a
    whole prompt in one call, then one or more tokens per call); see `jaxformer.decoding.generate`.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed = InputEmbedding(config, rngs=rngs)
        if config.scan_layers and config.num_kv_shared_layers:
            raise ValueError(
                "ModelConfig.num_kv_shared_layers > 0 needs scan_layers=False: a KV-shared layer reads another "
                "layer's keys and values, which a scan over the layers does not hand out."
            )
        self.blocks = BlockStack(
            lambda r, kind=(None, False, None): nn.DecoderBlock(config.layer_config(*kind), rngs=r),
            config.num_layers,
            scan=config.scan_layers,
            rngs=rngs,
            remat=config.remat,
            kinds=config.layer_kinds,
        )
        self.final_norm = make_norm(config, rngs=rngs) if config.norm_position == "pre" else None
        self.head = OutputHead(config, self.embed.tokens, rngs=rngs)
        # Gemma 4's per-layer inputs (`per_layer_inputs`)
        L, P, D = config.num_layers, config.per_layer_input_dim, config.d_model
        kwargs = {"init_std": config.init_std, "dtype": config.dtype, "param_dtype": config.param_dtype, "rngs": rngs}
        vocab = config.per_layer_vocab_size or config.vocab_size
        self.per_layer_embed = nn.Embed(vocab, L * P, **kwargs) if P else None
        init, dtype = nnx.initializers.lecun_normal(), config.param_dtype
        self.per_layer_projection = nn.logical_param(rngs, init, (D, L * P), ("embed", None), dtype) if P else None
        norm = dict(epsilon=config.norm_epsilon, plus_one=config.norm_plus_one, param_dtype=dtype, axis=None)
        self.per_layer_norm = nn.RMSNorm(P, **norm, rngs=rngs) if P else None

    def init_cache(self, batch_size: int, max_len: int | None = None, dtype=None) -> None:
        """An empty KV cache for `batch_size` sequences of up to `max_len` tokens (default `config.max_len`)."""
        self.blocks.init_cache(batch_size, self.config.max_len if max_len is None else max_len, dtype)

    def __call__(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        valid: jax.Array | None = None,
        decode: bool = False,
    ) -> jax.Array:
        """tokens int `[B, T]` -> logits float32 `[B, T, V]`: `head(hidden_states(...))`.

        positions: int `[B, T]` (default `arange(T)`, or onwards from the cache index with `decode=True`).
        segment_ids: int `[B, T]` for packed sequences: tokens attend only within their segment (pass the
        per-segment `positions` too). valid: bool `[B, T]`, False at padding (masked as keys; BatchNorm stats);
        with `decode=True` right padding only (a True prefix per row: each row's cache advances by its count).
        """
        return self.head(
            self.hidden_states(tokens, positions=positions, segment_ids=segment_ids, valid=valid, decode=decode)
        )

    def router_losses(self) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The auxiliary loss of a mixture of experts after a forward pass, and its metrics; (0, {}) without experts.

            aux = router_aux_loss_coef * E sum_e f_e P_e + router_z_loss_coef * mean_t logsumexp(logits_t)^2

        f_e and P_e over every sparse layer's (valid) tokens of the last call (`nn.router_stats`;
        `ops.load_balancing_loss_from_stats`). Metrics: `moe_balance_loss` (k when perfectly balanced),
        `moe_z_loss`, `moe_max_load` (the busiest expert's share of the choices times E: 1 when balanced, E / k
        at worst; the mean over layers) and `moe_dropped` (the share of assignments over capacity)."""
        found = nn.router_stats(self)
        if found is None:
            return jnp.zeros((), jnp.float32), {}
        stats, dropped = found
        cfg = self.config
        balance = ops.load_balancing_loss_from_stats(stats)
        z = ops.router_z_loss_from_stats(stats)
        max_load = jnp.mean(jnp.max(stats.load, axis=-1)) * cfg.num_experts / cfg.experts_per_token
        metrics = dict(zip(ROUTER_METRICS, (balance, z, max_load, dropped.mean()), strict=True))
        return cfg.router_aux_loss_coef * balance + cfg.router_z_loss_coef * z, metrics

    def per_layer_inputs(self, tokens: jax.Array, embedded: jax.Array) -> jax.Array:
        """Gemma 4's per-layer inputs `[L, B, T, P]` from the tokens `[B, T]` and their embedding `[B, T, D]`:

            e_l = (RMSNorm((x W) / sqrt(D))_l + E'[tokens]_l * sqrt(P)) / sqrt(2)

        with `W [D, L P]`, the second embedding `E' [V', L P]` (its factor rounded to the compute dtype, as the
        token embedding's) and the RMSNorm over each layer's P features."""
        cfg = self.config
        B, T = tokens.shape
        L, P, dtype = cfg.num_layers, cfg.per_layer_input_dim, cfg.dtype
        projected = ops.dense("BTD,DE->BTE", embedded, self.per_layer_projection[...], dtype=dtype)
        projected = self.per_layer_norm((projected * jnp.asarray(cfg.d_model**-0.5, dtype)).reshape(B, T, L, P))
        per_token = self.per_layer_embed(tokens) * jnp.asarray(math.sqrt(P), dtype)
        inputs = (projected + per_token.reshape(B, T, L, P)) * jnp.asarray(2**-0.5, dtype)
        return jnp.moveaxis(inputs, 2, 0)

    def hidden_states(
        self,
        tokens: jax.Array,
        *,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        valid: jax.Array | None = None,
        decode: bool = False,
    ) -> jax.Array:
        """The final-normed residual stream `[B, T, D]` that the head maps to logits (arguments as `__call__`):
        for reading a few positions' logits (`head(h[rows, cols][:, None])`) without computing all T x V."""
        cfg = self.config
        max_len = cfg.max_len if cfg.positional in ABSOLUTE_POSITIONAL else None
        tokens = check_tokens("tokens", tokens, cfg.vocab_size, max_len)
        T = tokens.shape[1]
        valid = check_valid("valid", valid, tokens.shape)
        if decode and segment_ids is not None:
            raise ValueError("decode=True takes no segment_ids: the KV cache holds one sequence per row.")
        if decode:
            index = self.blocks.cache_index(T)  # raises if the T tokens would not fit the cache
            if positions is None:
                positions = index[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]
        elif positions is None:  # a sequence split over devices in zigzag order: its positions follow (else None)
            positions = sequence_positions(*tokens.shape)
        # Segment ids go to attention as they are: blockwise / pallas then need no [B, T, T] mask array (and
        # blockwise skips the key blocks of other documents). Decoding takes `valid` as right padding: the cache
        # advances by each row's real tokens, and causality hides the padding keys (no mask needed).
        mask = None if valid is None or decode else ops.padding_mask(valid)
        x = self.embed(tokens, positions=positions, valid=valid)
        layer_inputs = None if self.per_layer_embed is None else self.per_layer_inputs(tokens, x)
        x = self.blocks(
            x,
            mask=mask,
            valid=valid,
            positions=positions,
            segment_ids=segment_ids,
            decode=decode,
            layer_inputs=layer_inputs,
            kv_sources=cfg.kv_sources if cfg.num_kv_shared_layers else None,
        )
        chex.assert_shape(x, (*jnp.shape(tokens), self.config.d_model))  # the residual stream, [B, T, D]
        return apply_norm(self.final_norm, x, valid)
