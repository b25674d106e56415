"""ViT: the Vision Transformer, an encoder over image patches (Dosovitskiy et al. 2021)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import checks, nn, ops
from jaxformer.models.bert import Pooler
from jaxformer.models.config import ModelConfig
from jaxformer.models.stack import BlockStack
from jaxformer.nn.blocks import make_norm


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """`[B, H, W, C]` -> `[B, (H/P) (W/P), P P C]`: non-overlapping P x P patches in row-major order, each
    flattened as (row in patch, column in patch, channel), the order of a `[P, P, C, D]` (HWIO) conv kernel."""
    B, H, W, C = images.shape
    P = patch_size
    x = images.reshape(B, H // P, P, W // P, P, C)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, H/P, W/P, P, P, C]
    return x.reshape(B, (H // P) * (W // P), P * P * C)


class PatchEmbedding(nnx.Module):
    """`images [B, H, W, C] -> [B, num_patches, D]`: each flattened patch p `[P P C]` maps to p W + b.

    `W [P P C, D]` (logical axes None, `embed`) and `b [D]`. This is the paper's stride-P, P x P convolution:
    `W.reshape(P, P, C, D)` is its HWIO kernel (from PyTorch's `[D, C, P, P]` weight: `transpose(2, 3, 1, 0)`).
    A matmul (`ops.dense`) keeps the layer a plain einsum, as every other projection in jaxformer.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.patch_size, self.dtype = cfg.patch_size, cfg.dtype
        fan_in = cfg.patch_size**2 * cfg.num_channels
        init = nnx.initializers.lecun_normal()
        self.kernel = nn.logical_param(rngs, init, (fan_in, cfg.d_model), (None, "embed"), cfg.param_dtype)
        self.bias = nn.logical_param(rngs, nnx.initializers.zeros, (cfg.d_model,), ("embed",), cfg.param_dtype)

    def __call__(self, images: jax.Array) -> jax.Array:
        patches = patchify(images.astype(self.dtype), self.patch_size)
        return ops.dense("...P,PD->...D", patches, self.kernel[...], dtype=self.dtype) + self.bias[...].astype(
            self.dtype
        )


class ViT(nnx.Module):
    """Vision Transformer: `model(images [B, H, W, C]) -> logits float32 [B, num_classes]`.

        x = [cls; PatchEmbedding(images)] + P        [B, 1 + num_patches, D]   (P: positions, learned)
        x = EncoderBlock(x) (L times);  z = FinalNorm(x)[:, 0];  logits = z W_h + b_h

    With `num_classes=0` there is no head and the call returns the class token's representation z `[B, D]`;
    such a ViT has a pooler, tanh(z W_p + b_p) (`pool`), unless `pooler=False` (as Hugging Face's ViTModel).
    `vit-b16` is ViT-B/16 with an ImageNet-1k head (86,567,656 parameters, as timm's `vit_base_patch16_224`).
    The class token and the head start at zero, as in the paper's code; positions ~ N(0, init_std^2).
    `positional="sinusoidal"` adds fixed sinusoids instead of the learned table, "rope" / "alibi" act inside
    attention, and "none" adds nothing. Pre-norm configs (ViT's) get a final norm; post-norm blocks end normalised.
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        cfg = config
        num_tokens = cfg.num_patches + 1
        if cfg.max_len < num_tokens:
            raise ValueError(
                f"ViT needs max_len >= num_patches + 1 = {num_tokens} ((image_size / patch_size)^2 = "
                f"({cfg.image_size} / {cfg.patch_size})^2 patches and a class token); got max_len={cfg.max_len}. "
                f"Set max_len={num_tokens}."
            )
        if cfg.final_logit_softcap is not None:
            raise ValueError("ModelConfig.final_logit_softcap caps a language model's logits; ViT takes None.")
        self.config = config
        self.patch_embed = PatchEmbedding(cfg, rngs=rngs)
        self.cls_token = nn.logical_param(rngs, nnx.initializers.zeros, (cfg.d_model,), ("embed",), cfg.param_dtype)
        # The sequence length is fixed by the image size, so the table holds num_patches + 1 rows, not max_len.
        self.positions = (
            nn.LearnedPositions(
                num_tokens, cfg.d_model, init_std=cfg.init_std, dtype=cfg.dtype, param_dtype=cfg.param_dtype, rngs=rngs
            )
            if cfg.positional == "learned"
            else None
        )
        self.dropout = nnx.Dropout(cfg.dropout_rate, rngs=rngs)
        self.blocks = BlockStack(
            lambda r, kind=None: nn.EncoderBlock(cfg.layer_config(kind), rngs=r),
            cfg.num_layers,
            scan=cfg.scan_layers,
            rngs=rngs,
            remat=cfg.remat,
            kinds=cfg.layer_types,
        )
        self.final_norm = make_norm(cfg, rngs=rngs) if cfg.norm_position == "pre" else None
        if cfg.num_classes:
            zeros = nnx.initializers.zeros
            self.head_kernel = nn.logical_param(
                rngs, zeros, (cfg.d_model, cfg.num_classes), ("embed", None), cfg.param_dtype
            )
            self.head_bias = nn.logical_param(rngs, zeros, (cfg.num_classes,), (None,), cfg.param_dtype)
        else:
            self.head_kernel = self.head_bias = None
        # Without a head a ViT may keep a [CLS] pooler (a ViTModel checkpoint has one): `pool(encode(images))`.
        self.pooler = Pooler(cfg, rngs=rngs) if cfg.pooler and not cfg.num_classes else None

    def check_images(self, images) -> jax.Array:
        """`images` must be float `[B, image_size, image_size, num_channels]` (NHWC)."""
        cfg = self.config
        images = jnp.asarray(checks.check_array("images", images))
        want = f"[B, H={cfg.image_size}, W={cfg.image_size}, C={cfg.num_channels}]"
        if images.ndim != 4:
            raise ValueError(f"`images` must be {want} (NHWC); got shape {tuple(images.shape)}.")
        if images.shape[1:] != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(
                f"`images` must be {want} (NHWC); got shape {tuple(images.shape)}. Resize the images, or build "
                "the model with the matching image_size / num_channels."
            )
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise TypeError(f"`images` must be floating point (e.g. scaled to [-1, 1]); got dtype {images.dtype}.")
        return images

    def encode(self, images: jax.Array) -> jax.Array:
        """images `[B, H, W, C]` -> final token states `[B, 1 + num_patches, D]` (token 0: the class token)."""
        cfg = self.config
        images = self.check_images(images)
        x = self.patch_embed(images)
        cls = jnp.broadcast_to(self.cls_token[...].astype(cfg.dtype), (x.shape[0], 1, cfg.d_model))
        x = jnp.concatenate([cls, x], axis=1)
        T = x.shape[1]
        if self.positions is not None:
            x = x + self.positions(jnp.arange(T, dtype=jnp.int32))
        elif cfg.positional == "sinusoidal":
            x = x + ops.sinusoidal_positions(T, cfg.d_model).astype(cfg.dtype)
        x = self.dropout(x)
        x = self.blocks(x)
        if self.final_norm is not None:
            x = self.final_norm(x)  # a BatchNorm here sees every token: images have no padding
        return x

    def __call__(self, images: jax.Array) -> jax.Array:
        """images float `[B, H, W, C]` -> logits float32 `[B, num_classes]` (or `[B, D]` when num_classes = 0)."""
        cfg = self.config
        images = self.check_images(images)
        z = self.encode(images)[:, 0]
        if self.head_kernel is None:
            return z.astype(jnp.float32)
        logits = ops.dense("...D,DC->...C", z, self.head_kernel[...], dtype=cfg.dtype) + self.head_bias[...].astype(
            cfg.dtype
        )
        chex.assert_shape(logits, (images.shape[0], cfg.num_classes))
        return logits.astype(jnp.float32)

    def pool(self, hidden: jax.Array) -> jax.Array:
        """The pooler's `[B, D]` from final states `[B, T, D]` (`encode`'s): tanh(h_0 W + b) of the class token."""
        if self.pooler is None:
            raise ValueError("This ViT has no pooler (a classifier head, or ModelConfig.pooler=False).")
        return self.pooler(hidden)
