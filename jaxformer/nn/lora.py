"""LoRA: a trainable low-rank update of a frozen weight (Hu et al. 2021), as `peft` computes it.

For a weight `W` whose einsum contracts its input axes `I` with `x` and produces its output axes `O`,

    y = x W  +  s * (dropout(x) A) B,      A: [*I, r],  B: [r, *O],  s = alpha / r   (rsLoRA: alpha / sqrt(r))

A starts as peft's kaiming-uniform (U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = prod(I)) and B at zero, so an
added adapter leaves the outputs unchanged; only A and B (`nnx.LoRAParam`) are trained. Merging folds the update
into the weight: W' = W + s * A B (`LoRA.weight_delta`).

A layer keeps its adapters in `self.lora`, a `nnx.Dict` keyed by the weight's name ("w_q", "w_o", "w_up", ...),
or None when it has none; `dense` is the one place a weight and its adapter are applied together. Adapters are
added to a built model by `jaxformer.lora.add_adapters` (models/lora.py), never by a layer's constructor.
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import checks, ops

FUSED_QKV = "w_qkv"  # the name of one adapter over a self-attention's [w_q | w_k | w_v] (GPT-2's c_attn in peft)


class LoRA(nnx.Module):
    """The adapter of one weight with input axes `in_shape` and output axes `out_shape` (see the module docstring).

    Args:
      in_shape, out_shape: the weight's contracted (input) and produced (output) axes, e.g. (D,) and (N, H) for
        a query projection `[D, N, H]`.
      rank: r >= 1. alpha: the scale's numerator (> 0). use_rslora: scale alpha / sqrt(r) instead of alpha / r.
      in_axes, out_axes: the weight's logical axis names for those axes (A is sharded like the input axes, B like
        the output axes; the rank axis is never sharded).
      dropout_rate: dropout on the adapter's input (peft's lora_dropout); the base path is not affected.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        out_shape: Sequence[int],
        *,
        rank: int,
        alpha: float,
        use_rslora: bool = False,
        in_axes: Sequence[str | None] | None = None,
        out_axes: Sequence[str | None] | None = None,
        dropout_rate: float = 0.0,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        rank = checks.check_positive_int("rank", rank)
        alpha = checks.check_positive_real("alpha", alpha)
        checks.check_flag("use_rslora", use_rslora)
        dropout_rate = checks.check_rate("dropout_rate", dropout_rate)
        param_dtype = checks.check_float_dtype("param_dtype", param_dtype)
        in_shape, out_shape = tuple(in_shape), tuple(out_shape)
        in_axes = (None,) * len(in_shape) if in_axes is None else tuple(in_axes)
        out_axes = (None,) * len(out_shape) if out_axes is None else tuple(out_axes)
        if len(in_axes) != len(in_shape) or len(out_axes) != len(out_shape):
            raise ValueError(f"in_axes {in_axes} / out_axes {out_axes} must name the axes of {in_shape} / {out_shape}.")
        self.in_shape, self.out_shape = in_shape, out_shape
        self.rank, self.alpha, self.use_rslora = rank, alpha, use_rslora
        self.scale = alpha / (math.sqrt(rank) if use_rslora else rank)
        bound = 1.0 / math.sqrt(math.prod(in_shape))
        a = jax.random.uniform(rngs.params(), (*in_shape, rank), param_dtype, -bound, bound)
        with nnx.use_eager_sharding(False):
            self.a = nnx.LoRAParam(a, out_sharding=(*in_axes, None))
            self.b = nnx.LoRAParam(jnp.zeros((rank, *out_shape), param_dtype), out_sharding=(None, *out_axes))
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)

    def __call__(self, subscripts: str, x: jax.Array, *, dtype) -> jax.Array:
        """The update `s * (dropout(x) A) B` for the weight product `einsum(subscripts, x, W)`, in `dtype`."""
        to_rank, from_rank = _rank_subscripts(subscripts)
        h = ops.dense(to_rank, self.dropout(x), self.a[...], dtype=dtype)
        return ops.dense(from_rank, h, self.b[...], dtype=dtype) * jnp.asarray(self.scale, dtype)

    def weight_delta(self) -> jax.Array:
        """s * A B, float32, shaped like the weight `[*in_shape, *out_shape]` (with the leading `[L]` of a scanned
        stack, when the adapter is stacked)."""
        a, b = self.a[...].astype(jnp.float32), self.b[...].astype(jnp.float32)
        lead = a.shape[: a.ndim - 1 - len(self.in_shape)]
        fan_in, fan_out = math.prod(self.in_shape), math.prod(self.out_shape)
        flat = jnp.matmul(a.reshape(*lead, fan_in, self.rank), b.reshape(*lead, self.rank, fan_out))
        return self.scale * flat.reshape(*lead, *self.in_shape, *self.out_shape)


def adapter(module: nnx.Module, name: str) -> LoRA | None:
    """`module`'s adapter of its weight `name`, or None."""
    adapters = getattr(module, "lora", None)
    return adapters[name] if adapters is not None and name in adapters else None


def dense(subscripts: str, x: jax.Array, w: nnx.Variable, lora: LoRA | None, *, dtype) -> jax.Array:
    """`ops.dense(subscripts, x, w)` plus, when `lora` is given, its low-rank update."""
    out = ops.dense(subscripts, x, w[...], dtype=dtype)
    return out if lora is None else out + lora(subscripts, x, dtype=dtype)


def _rank_subscripts(subscripts: str) -> tuple[str, str]:
    """ "BTD,DNH->BTNH" -> ("BTD,Dr->BTr", "BTr,rNH->BTNH"): the products through A and B, with r a free letter.

    The weight's subscripts must list its input (contracted) axes before its output axes, as every jaxformer
    weight does."""
    inputs, out = subscripts.replace(" ", "").split("->")
    xs, ws = inputs.split(",")
    ins = "".join(c for c in ws if c in xs)
    outs = "".join(c for c in ws if c not in xs)
    if ws != ins + outs:
        raise ValueError(f"LoRA needs a weight whose input axes come first; got {subscripts!r}.")
    r = next(c for c in string.ascii_letters if c not in subscripts)
    x_free = xs
    for c in ins:
        x_free = x_free.replace(c, "")
    return f"{xs},{ins}{r}->{x_free}{r}", f"{x_free}{r},{r}{outs}->{out}"
