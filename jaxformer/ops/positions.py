"""Positional information: sinusoidal encodings, rotary embeddings (RoPE) and ALiBi biases."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import checks
from jaxformer.ops.masks import query_key_positions


def sinusoidal_positions(length: int, dim: int, *, base: float = 10000.0) -> jax.Array:
    """The fixed encodings of "Attention Is All You Need", interleaved as in the paper:

        PE[p, 2i] = sin(p / base^(2i / dim)),   PE[p, 2i + 1] = cos(p / base^(2i / dim)).

    For every offset k, PE[p + k] is a fixed rotation of PE[p] (each (sin, cos) pair turns by k / base^(2i/dim)),
    which is why the paper hoped the model could attend by relative position.

    Returns:
      float32 `[length, dim]`.
    """
    length = checks.check_positive_int("length", length)
    dim = checks.check_positive_int("dim", dim)
    if dim % 2:
        raise ValueError(f"`dim` must be even (sin/cos pairs); got {dim}.")
    base = checks.check_positive_real("base", base)
    inv_freq = base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)  # [dim / 2]
    angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]  # [length, dim / 2]
    # Computed in float64 on the host: float32 angles lose digits for long lengths.
    pe = np.stack([np.sin(angles), np.cos(angles)], axis=-1).reshape(length, dim)
    return jnp.asarray(pe, dtype=jnp.float32)


ROPE_SCALINGS = ("linear", "llama3", "proportional", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """A rescaling of RoPE's frequencies for contexts longer than the training one (frozen, hashable: a config field).

    linear        theta_i / factor: position interpolation (Chen et al. 2023); the same as
                  `apply_rope(scale=factor)`
    llama3        Llama 3.1's: with wavelength w_i = 2 pi / theta_i and L = original_max_len, frequencies whose
                  w_i < L / high_freq_factor are kept, those with w_i > L / low_freq_factor divided by `factor`,
                  and those between interpolated: theta_i ((1 - a) / factor + a), a = (L / w_i - low) / (high - low)
    proportional  Gemma 4's partial RoPE: the first floor(fraction * H / 2) pairs turn at theta_i / factor (the
                  exponent still over the full H), the other pairs not at all (theta_i = 0)
    yarn          YaRN (Peng et al. 2023; GPT-OSS, DeepSeek, Qwen), as transformers' `_compute_yarn_parameters`: with
                  L = original_max_len, pair i's frequency blends extrapolation and interpolation,
                      theta_i' = theta_i (1 - r_i) + (theta_i / factor) r_i,   r_i = clip((i - lo) / (hi - lo), 0, 1)
                  (hi += 0.001 when lo == hi), a ramp over the correction range of pairs
                      d(beta) = H ln(L / (2 pi beta)) / (2 ln base),   lo = max(d(beta_fast), 0),
                      hi = min(d(beta_slow), H - 1)
                  (floor / ceil first when `truncate`): pairs turning more than beta_fast times over L keep
                  theta_i, those turning fewer than beta_slow times are divided by `factor`. cos and sin are also
                  multiplied by the attention factor `attention_scaling` (`attention_factor`, default
                  0.1 ln(factor) + 1, or 1 when factor <= 1), which scales every q . k by its square
    """

    kind: str
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_len: int = 8192
    fraction: float = 1.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float | None = None
    truncate: bool = True

    def __post_init__(self):
        checks.check_choice("RopeScaling.kind", self.kind, ROPE_SCALINGS)
        checks.check_positive_real("RopeScaling.factor", self.factor)
        if self.kind == "llama3":
            checks.check_positive_real("RopeScaling.low_freq_factor", self.low_freq_factor)
            checks.check_positive_real("RopeScaling.high_freq_factor", self.high_freq_factor)
            if not 0 < self.low_freq_factor < self.high_freq_factor:
                raise ValueError(
                    f"RopeScaling: llama3 needs 0 < low_freq_factor < high_freq_factor; got "
                    f"{self.low_freq_factor}, {self.high_freq_factor}."
                )
            checks.check_positive_int("RopeScaling.original_max_len", self.original_max_len)
        if self.kind == "proportional":
            checks.check_real("RopeScaling.fraction", self.fraction, low=0.0, high=1.0)
        if self.kind == "yarn":
            checks.check_positive_real("RopeScaling.beta_fast", self.beta_fast)
            checks.check_positive_real("RopeScaling.beta_slow", self.beta_slow)
            if not self.beta_slow < self.beta_fast:
                raise ValueError(
                    f"RopeScaling: yarn needs 0 < beta_slow < beta_fast; got beta_fast={self.beta_fast}, "
                    f"beta_slow={self.beta_slow}."
                )
            checks.check_positive_int("RopeScaling.original_max_len", self.original_max_len)
            if self.attention_factor is not None:
                checks.check_positive_real("RopeScaling.attention_factor", self.attention_factor, " or None")
            checks.check_flag("RopeScaling.truncate", self.truncate)

    @property
    def attention_scaling(self) -> float:
        """What RoPE multiplies cos and sin by: yarn's attention factor (`attention_factor`, or by default
        0.1 ln(factor) + 1 when factor > 1, else 1, YaRN's mscale); 1.0 for every other kind."""
        if self.kind != "yarn":
            return 1.0
        if self.attention_factor is not None:
            return float(self.attention_factor)
        return 1.0 if self.factor <= 1 else 0.1 * math.log(self.factor) + 1.0


def rope_frequencies(head_dim: int, *, base: float = 10000.0, scaling: RopeScaling | None = None) -> np.ndarray:
    """theta_i = base^(-2i / H) for the H / 2 feature pairs of a head (H even, base > 0), rescaled by `scaling`:
    float64 `[H / 2]`."""
    head_dim = checks.check_positive_int("head_dim", head_dim)
    if head_dim % 2:
        raise ValueError(f"`head_dim` must be even (RoPE rotates pairs of features); got {head_dim}.")
    base = checks.check_positive_real("base", base)
    if scaling is not None and not isinstance(scaling, RopeScaling):
        raise TypeError(f"`scaling` must be an ops.RopeScaling or None; got {type(scaling).__name__}.")
    theta = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is None:
        return theta
    if scaling.kind == "linear":
        return theta / scaling.factor
    if scaling.kind == "proportional":
        rotated = int(scaling.fraction * head_dim // 2)
        return np.where(np.arange(head_dim // 2) < rotated, theta / scaling.factor, 0.0)
    if scaling.kind == "yarn":
        return _yarn_frequencies(theta, head_dim, base, scaling)
    wavelength = 2 * np.pi / theta
    length, low, high = scaling.original_max_len, scaling.low_freq_factor, scaling.high_freq_factor
    a = (length / wavelength - low) / (high - low)
    between = theta * ((1 - a) / scaling.factor + a)
    return np.where(
        wavelength < length / high, theta, np.where(wavelength > length / low, theta / scaling.factor, between)
    )


def _yarn_frequencies(theta: np.ndarray, head_dim: int, base: float, scaling: RopeScaling) -> np.ndarray:
    """YaRN's blend of theta (extrapolation) and theta / factor (interpolation), float64 `[H / 2]` (see
    `RopeScaling`)."""
    if base == 1.0:
        raise ValueError("RopeScaling('yarn') needs a RoPE base != 1 (its correction range divides by ln(base)).")

    def correction_dim(rotations: float) -> float:  # the pair index that turns `rotations` times over L
        return head_dim * math.log(scaling.original_max_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001  # as transformers: no division by zero
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    return theta / scaling.factor * ramp + theta * (1.0 - ramp)


def apply_rope(
    x,
    positions,
    *,
    base: float = 10000.0,
    interleaved: bool = True,
    scale: float = 1.0,
    scaling: RopeScaling | None = None,
) -> jax.Array:
    """Rotary position embedding (Su et al., RoFormer): rotates feature pairs of each head by position.

    Pair i of a head of size H turns by angle `theta_i(p) = (p / scale) * base^(-2i / H)`:

        (x_a, x_b) -> (x_a cos theta - x_b sin theta,  x_a sin theta + x_b cos theta)

    where the pairs are (x[2i], x[2i+1]) with `interleaved=True` (RoFormer, the paper) and (x[i], x[i + H/2])
    with `interleaved=False` (GPT-NeoX / LLaMA "rotate half"). Because rotations compose, the dot product of a
    rotated query at p and a rotated key at p' depends only on p - p'. `scale > 1` is linear position
    interpolation (positions are divided by it) for running at longer contexts; `scaling` rescales the
    frequencies instead (`RopeScaling`, e.g. Llama 3.1's; `rope_frequencies` gives them). A yarn scaling also
    multiplies cos and sin by its `attention_scaling` m (so the output is m times a rotation of x).

    Args:
      x: floating `[B, T, N, H]` queries or keys, H even.
      positions: integer `[T]` or `[B, T]`.
      base: a number > 0; scale: a number > 0.

    Returns:
      `[B, T, N, H]` in x's dtype (the rotation is computed in float32).
    """
    x = checks.check_array("x", x)
    checks.check_rank("x", x, 4, "[B, T, N, H]")
    checks.check_floating("x", x)
    B, T, _, H = x.shape
    if H % 2:
        raise ValueError(f"apply_rope needs an even head dim H (x shape {checks.shape_str(x.shape)}); got H={H}.")
    positions = checks.check_array("positions", positions)
    checks.check_integer("positions", positions)
    if positions.shape not in ((T,), (B, T)):
        raise ValueError(
            f"`positions` must have shape [T] = ({T},) or [B, T] = ({B}, {T}) to match x of shape "
            f"{checks.shape_str(x.shape)}; got {checks.shape_str(positions.shape)}."
        )
    scale = checks.check_positive_real("scale", scale)
    inv_freq = jnp.asarray(rope_frequencies(H, base=base, scaling=scaling), jnp.float32)  # [H / 2]
    angles = (positions.astype(jnp.float32) / scale)[..., None] * inv_freq  # [(B,) T, H / 2]
    angles = angles.reshape((B if positions.ndim == 2 else 1, T, 1, H // 2))  # [B|1, T, 1, H / 2]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    attention_scaling = 1.0 if scaling is None else scaling.attention_scaling
    if attention_scaling != 1.0:  # yarn's attention factor (transformers multiplies its cos and sin tables)
        cos, sin = cos * attention_scaling, sin * attention_scaling
    xf = x.astype(jnp.float32)
    if interleaved:
        xa, xb = xf[..., 0::2], xf[..., 1::2]
        rotated = jnp.stack([xa * cos - xb * sin, xa * sin + xb * cos], axis=-1).reshape(x.shape)
    else:
        xa, xb = xf[..., : H // 2], xf[..., H // 2 :]
        rotated = jnp.concatenate([xa * cos - xb * sin, xa * sin + xb * cos], axis=-1)
    return rotated.astype(x.dtype)


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi head slopes (Press et al., 2022): 2^(-8/n), 2^(-16/n), ... for n heads when n is a power of two;
    otherwise the slopes of the nearest lower power of two followed by every other slope of the next one.

    Returns:
      float32 NumPy `[num_heads]`.
    """
    num_heads = checks.check_positive_int("num_heads", num_heads)

    def power_of_two_slopes(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    closest = 2 ** math.floor(math.log2(num_heads))
    slopes = power_of_two_slopes(closest)
    if closest != num_heads:
        slopes += power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
    return np.asarray(slopes, dtype=np.float32)


def alibi_bias(num_heads: int, q_len: int, kv_len: int | None = None, *, offset=0) -> jax.Array:
    """ALiBi attention bias: `bias[0, n, t, s] = -slope_n * |(t + offset) - s|`.

    Under a causal mask this is the paper's `slope_n * (s - t)`; without one it penalises distance both ways.
    `offset` is the number of cached positions before the queries, as in `causal_mask`.

    Returns:
      float32 `[1, N, T, S]` (add it through `bias=`).
    """
    slopes = jnp.asarray(alibi_slopes(num_heads))
    q_pos, k_pos = query_key_positions(q_len, kv_len, offset)
    if q_pos.shape[0] != 1:
        raise ValueError("`offset` must be a scalar for alibi_bias.")
    distance = jnp.abs(q_pos - k_pos).astype(jnp.float32)  # [1, 1, T, S]
    return -slopes[None, :, None, None] * distance
