"""Position-wise feed-forward network: D -> F -> D with ReLU / GELU, or a gated unit (SwiGLU, GeGLU)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer import checks, ops
from jaxformer.nn import lora
from jaxformer.nn.params import logical_param

# The activations a FeedForward takes: the element-wise ones of jaxformer.ops (ops.ACTIVATIONS) and the gated ones
# (ops.GATED_ACTIVATIONS: SwiGLU, GeGLU).
FFN_ACTIVATIONS = (*ops.ACTIVATIONS, *ops.GATED_ACTIVATIONS)


class FeedForward(nnx.Module):
    """FFN(x) = act(x W_in + b_in) W_out + b_out (Vaswani et al.), or gated (Shazeer, 2020; no biases):
    `activation="swiglu"` FFN(x) = (silu(x W_gate) * (x W_up)) W_out (LLaMA), `"geglu"` the same with the tanh
    GELU as the gate (Gemma).

    D = `d_model` (the model width), F = `d_ff` (the hidden width).
    Weights: `w_in` / `w_gate` / `w_up` `[D, F]` on (`embed`, `mlp`), `w_out` `[F, D]` on (`mlp`, `embed`),
    initialised with variance 1/fan_in (LeCun normal). Dropout (rate `dropout_rate`) follows the activation;
    `model.eval()` turns it off.
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        *,
        activation: str = "gelu",
        use_bias: bool = True,
        dropout_rate: float = 0.0,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        d_model, d_ff = checks.check_positive_int("d_model", d_model), checks.check_positive_int("d_ff", d_ff)
        dropout_rate = checks.check_rate("dropout_rate", dropout_rate)
        checks.check_flag("use_bias", use_bias)
        dtype, param_dtype = (
            checks.check_float_dtype("dtype", dtype),
            checks.check_float_dtype("param_dtype", param_dtype),
        )
        self.d_model, self.d_ff, self.activation, self.dtype = d_model, d_ff, activation, dtype
        init = nnx.initializers.lecun_normal()
        zeros = nnx.initializers.zeros
        self.gated = activation in ops.GATED_ACTIVATIONS
        self.act = ops.GATED_ACTIVATIONS[activation] if self.gated else ops.get_activation(activation)  # checks it
        if self.gated:
            self.w_gate = logical_param(rngs, init, (d_model, d_ff), ("embed", "mlp"), param_dtype)
            self.w_up = logical_param(rngs, init, (d_model, d_ff), ("embed", "mlp"), param_dtype)
            self.b_in = self.b_out = None
        else:
            self.w_in = logical_param(rngs, init, (d_model, d_ff), ("embed", "mlp"), param_dtype)
            self.b_in = logical_param(rngs, zeros, (d_ff,), ("mlp",), param_dtype) if use_bias else None
        self.w_out = logical_param(rngs, init, (d_ff, d_model), ("mlp", "embed"), param_dtype)
        if not self.gated:
            self.b_out = logical_param(rngs, zeros, (d_model,), ("embed",), param_dtype) if use_bias else None
        self.dropout = nnx.Dropout(dropout_rate, rngs=rngs)
        self.lora = nnx.data(None)  # LoRA adapters by weight name, added by jaxformer.lora.add_adapters (nn/lora.py)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = checks.check_array("x", x)
        checks.check_floating("x", x)
        if x.ndim < 1 or x.shape[-1] != self.d_model:
            raise ValueError(f"FeedForward expects inputs [..., D={self.d_model}]; got shape {tuple(x.shape)}.")
        x = x.astype(self.dtype)

        def dense(y, name, b=None):
            out = lora.dense("...D,DF->...F", y, getattr(self, name), lora.adapter(self, name), dtype=self.dtype)
            return out if b is None else out + b[...].astype(self.dtype)

        if self.gated:
            hidden = self.act(dense(x, "w_gate"), dense(x, "w_up"))
        else:
            hidden = self.act(dense(x, "w_in", self.b_in))
        return dense(self.dropout(hidden), "w_out", self.b_out)
