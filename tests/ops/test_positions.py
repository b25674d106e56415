"""Tests for jaxformer.ops.positions: sinusoidal encodings, RoPE and ALiBi against float64 NumPy references."""

import functools
import math

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer.ops import positions


def normal(seed, shape, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ---------------------------------------------------------------------------------------------------------------------
# sinusoidal_positions


def np_sinusoidal(length, dim, base=10000.0):
    pe = np.zeros((length, dim), np.float64)
    for p in range(length):
        for i in range(dim // 2):
            angle = p / base ** (2 * i / dim)
            pe[p, 2 * i] = math.sin(angle)
            pe[p, 2 * i + 1] = math.cos(angle)
    return pe


@pytest.mark.parametrize(("length", "dim", "base"), [(16, 8, 10000.0), (7, 6, 100.0), (1, 2, 10000.0), (50, 32, 500.0)])
def test_sinusoidal_positions_matches_formula(length, dim, base):
    pe = positions.sinusoidal_positions(length, dim, base=base)
    assert pe.shape == (length, dim)
    assert pe.dtype == jnp.float32
    np.testing.assert_allclose(pe, np_sinusoidal(length, dim, base), rtol=1e-6, atol=1e-6)


def test_sinusoidal_positions_long_lengths_stay_accurate():
    # The angles are computed in float64: at p ~ 1e5 float32 angles would be off by ~1e-2.
    pe = positions.sinusoidal_positions(100_000, 4)
    np.testing.assert_allclose(pe[-3:], np_sinusoidal(100_000, 4)[-3:], atol=1e-6)


def rotation_matrix(k, dim, base=10000.0):
    """Block-diagonal M_k with PE[p + k] = M_k @ PE[p] for every p: pair i turns by k / base^(2i / dim)."""
    m = np.zeros((dim, dim), np.float64)
    for i in range(dim // 2):
        w = k / base ** (2 * i / dim)
        # (sin(a + w), cos(a + w)) = (sin a cos w + cos a sin w, cos a cos w - sin a sin w)
        m[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = [[math.cos(w), math.sin(w)], [-math.sin(w), math.cos(w)]]
    return m


@pytest.mark.parametrize("k", [1, 3, 10])
def test_sinusoidal_positions_shift_is_a_fixed_rotation(k):
    dim = 16
    pe = np.asarray(positions.sinusoidal_positions(40, dim), np.float64)
    m_k = rotation_matrix(k, dim)
    for p in (0, 1, 7, 20, 40 - k - 1):
        np.testing.assert_allclose(m_k @ pe[p], pe[p + k], atol=1e-6)


def test_sinusoidal_positions_odd_dim_raises():
    with pytest.raises(ValueError, match="dim"):
        positions.sinusoidal_positions(4, 5)


@pytest.mark.parametrize(("length", "dim", "name"), [(0, 4, "length"), (4, 0, "dim"), (4.0, 4, "length")])
def test_sinusoidal_positions_bad_sizes_raise(length, dim, name):
    with pytest.raises(ValueError, match=name):
        positions.sinusoidal_positions(length, dim)


# ---------------------------------------------------------------------------------------------------------------------
# apply_rope


def np_rope(x, pos, *, base=10000.0, interleaved=True, scale=1.0):
    """Float64 reference: pair i of each head turns by (p / scale) * base^(-2i / H)."""
    x = np.asarray(x, np.float64)
    B, T, _, H = x.shape
    pos = np.broadcast_to(np.asarray(pos, np.float64), (B, T))
    out = np.empty_like(x)
    for i in range(H // 2):
        theta = (pos / scale * base ** (-2 * i / H))[:, :, None]  # [B, T, 1]
        a, b = (2 * i, 2 * i + 1) if interleaved else (i, i + H // 2)
        out[..., a] = x[..., a] * np.cos(theta) - x[..., b] * np.sin(theta)
        out[..., b] = x[..., a] * np.sin(theta) + x[..., b] * np.cos(theta)
    return out


def rope_jit(x, pos, **kwargs):
    return jax.jit(functools.partial(positions.apply_rope, **kwargs))(x, pos)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("batched_positions", [False, True])
@pytest.mark.parametrize(("scale", "base"), [(1.0, 10000.0), (2.5, 10000.0), (1.0, 100.0)])
def test_apply_rope_matches_reference(interleaved, batched_positions, scale, base):
    B, T, N, H = 2, 5, 3, 8
    x = normal(0, (B, T, N, H))
    if batched_positions:
        pos = np.random.default_rng(1).integers(0, 50, (B, T)).astype(np.int32)
    else:
        pos = np.array([0, 1, 2, 7, 40], np.int32)
    got = rope_jit(x, pos, base=base, interleaved=interleaved, scale=scale)
    assert got.shape == x.shape
    assert got.dtype == jnp.float32
    want = np_rope(x, pos, base=base, interleaved=interleaved, scale=scale)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_apply_rope_eager_and_jit_agree():
    x, pos = normal(0, (2, 4, 2, 6)), np.array([3, 4, 5, 6], np.int32)
    np.testing.assert_allclose(positions.apply_rope(x, pos), rope_jit(x, pos), rtol=1e-6, atol=1e-6)


def test_apply_rope_layouts_differ_by_a_feature_permutation():
    # "rotate half" on x is the interleaved rotation on x with features reordered so that (i, i + H/2) -> (2i, 2i + 1).
    H = 8
    x, pos = normal(0, (1, 4, 2, H)), np.arange(4, dtype=np.int32)
    perm = np.stack([np.arange(H // 2), np.arange(H // 2) + H // 2], axis=-1).reshape(H)  # 0, 4, 1, 5, ...
    half = rope_jit(x, pos, interleaved=False)
    inter = rope_jit(x[..., perm], pos, interleaved=True)
    np.testing.assert_allclose(np.asarray(inter), np.asarray(half)[..., perm], rtol=1e-6, atol=1e-6)


def test_apply_rope_position_zero_is_identity():
    x = normal(0, (1, 3, 2, 4))
    np.testing.assert_allclose(rope_jit(x, np.zeros(3, np.int32)), x, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("interleaved", [True, False])
def test_apply_rope_preserves_norms(interleaved):
    x, pos = normal(0, (2, 6, 3, 8)), np.arange(100, 106, dtype=np.int32)
    got = np.asarray(rope_jit(x, pos, interleaved=interleaved))
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-5)
    assert not np.allclose(got, x, atol=1e-2), "positions 100.. should rotate the vectors"


@pytest.mark.parametrize("interleaved", [True, False])
def test_apply_rope_dot_product_depends_only_on_relative_position(interleaved):
    H = 16
    q, k = normal(0, (H,)), normal(1, (H,))
    p1 = np.array([10, 13, 20, 27, 40], np.int32)
    rope = jax.jit(functools.partial(positions.apply_rope, interleaved=interleaved))
    q_rot = np.asarray(rope(np.broadcast_to(q, (1, len(p1), 1, H)), p1), np.float64)[0, :, 0]
    dot_by_shift = {}
    for shift in (-9, 0, 2, 7):
        k_rot = np.asarray(rope(np.broadcast_to(k, (1, len(p1), 1, H)), p1 + shift), np.float64)[0, :, 0]
        dots = np.einsum("th,th->t", q_rot, k_rot)  # <rope(q, p1), rope(k, p1 + shift)> for 5 values of p1
        np.testing.assert_allclose(dots, dots[0], rtol=1e-4, atol=1e-4)
        dot_by_shift[shift] = dots[0]
    # ... and it does change with the shift (the test would pass trivially for a rope that did nothing).
    assert len({round(float(d), 3) for d in dot_by_shift.values()}) == len(dot_by_shift), dot_by_shift


def test_apply_rope_bf16_keeps_dtype():
    x = jnp.asarray(normal(0, (2, 4, 2, 8)), jnp.bfloat16)
    pos = np.arange(4, dtype=np.int32)
    got = rope_jit(x, pos)
    assert got.dtype == jnp.bfloat16
    want = np_rope(np.asarray(x.astype(jnp.float32)), pos)
    np.testing.assert_allclose(np.asarray(got.astype(jnp.float32)), want, rtol=2e-2, atol=2e-2)


@hypothesis.given(
    B=st.integers(1, 3),
    T=st.integers(1, 5),
    N=st.integers(1, 3),
    half_H=st.integers(1, 5),
    interleaved=st.booleans(),
    batched=st.booleans(),
)
def test_apply_rope_any_shape(B, T, N, half_H, interleaved, batched):
    H = 2 * half_H
    x = normal(B * 1000 + T * 100 + N * 10 + H, (B, T, N, H))
    pos = np.random.default_rng(H).integers(0, 64, (B, T) if batched else (T,)).astype(np.int32)
    got = rope_jit(x, pos, interleaved=interleaved)
    np.testing.assert_allclose(got, np_rope(x, pos, interleaved=interleaved), rtol=1e-5, atol=5e-5)


def test_apply_rope_odd_head_dim_raises():
    with pytest.raises(ValueError, match="H=5"):
        positions.apply_rope(np.zeros((1, 2, 1, 5), np.float32), np.arange(2, dtype=np.int32))


@pytest.mark.parametrize("shape", [(3,), (2, 3), (1, 2), (2, 2, 1), ()])
def test_apply_rope_positions_wrong_shape_raises(shape):
    x = np.zeros((2, 2, 1, 4), np.float32)  # positions must be [2] or [2, 2]
    with pytest.raises(ValueError, match="`positions`"):
        positions.apply_rope(x, np.zeros(shape, np.int32))


def test_apply_rope_float_positions_raise():
    with pytest.raises(TypeError, match="positions"):
        positions.apply_rope(np.zeros((1, 2, 1, 4), np.float32), np.arange(2, dtype=np.float32))


def test_apply_rope_wrong_rank_raises():
    with pytest.raises(ValueError, match="`x`"):
        positions.apply_rope(np.zeros((2, 1, 4), np.float32), np.arange(2, dtype=np.int32))


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_apply_rope_non_positive_scale_raises(scale):
    with pytest.raises(ValueError, match="scale"):
        positions.apply_rope(np.zeros((1, 2, 1, 4), np.float32), np.arange(2, dtype=np.int32), scale=scale)


# ---------------------------------------------------------------------------------------------------------------------
# ALiBi


def paper_alibi_slopes(n):
    """The reference algorithm of the ALiBi paper's code (ofirpress/attention_with_linear_biases)."""

    def get_slopes_power_of_2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        ratio = start
        return [start * ratio**i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return (
        get_slopes_power_of_2(closest_power_of_2)
        + paper_alibi_slopes(2 * closest_power_of_2)[0::2][: n - closest_power_of_2]
    )


def test_alibi_slopes_eight_heads():
    slopes = positions.alibi_slopes(8)
    assert slopes.shape == (8,)
    assert slopes.dtype == np.float32
    np.testing.assert_allclose(slopes, [2.0 ** -(i + 1) for i in range(8)], rtol=1e-7)


def test_alibi_slopes_six_heads():
    # Slopes of 4 heads (2^-2, 2^-4, 2^-6, 2^-8), then every other slope of 8 heads, first 2 (2^-1, 2^-3).
    want = paper_alibi_slopes(6)
    np.testing.assert_allclose(want, [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3])
    np.testing.assert_allclose(positions.alibi_slopes(6), want, rtol=1e-7)


@pytest.mark.parametrize("num_heads", [1, 2, 3, 4, 5, 12, 16, 24, 32])
def test_alibi_slopes_match_paper_code(num_heads):
    np.testing.assert_allclose(positions.alibi_slopes(num_heads), paper_alibi_slopes(num_heads), rtol=1e-6)


def test_alibi_slopes_bad_num_heads_raises():
    with pytest.raises(ValueError, match="num_heads"):
        positions.alibi_slopes(0)


def np_alibi_bias(num_heads, T, S, offset=0):
    slopes = paper_alibi_slopes(num_heads)
    out = np.zeros((1, num_heads, T, S), np.float64)
    for n in range(num_heads):
        for t in range(T):
            for s in range(S):
                out[0, n, t, s] = -slopes[n] * abs(t + offset - s)
    return out


@pytest.mark.parametrize(("num_heads", "q_len", "kv_len", "offset"), [(4, 5, None, 0), (6, 3, 7, 0), (8, 2, 6, 4)])
def test_alibi_bias_matches_reference(num_heads, q_len, kv_len, offset):
    got = positions.alibi_bias(num_heads, q_len, kv_len, offset=offset)
    S = q_len if kv_len is None else kv_len
    assert got.shape == (1, num_heads, q_len, S)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_alibi_bias(num_heads, q_len, S, offset), rtol=1e-6, atol=1e-6)


def test_alibi_bias_traced_offset_under_jit():
    fn = jax.jit(lambda offset: positions.alibi_bias(2, 2, 5, offset=offset))
    for offset in (0, 3):
        np.testing.assert_allclose(fn(jnp.int32(offset)), np_alibi_bias(2, 2, 5, offset), rtol=1e-6, atol=1e-6)


def test_alibi_bias_per_example_offset_raises():
    with pytest.raises(ValueError, match="offset"):
        positions.alibi_bias(2, 2, 5, offset=np.array([0, 1], np.int32))


def test_linear_rope_scaling_equals_dividing_positions():
    x = np.random.default_rng(0).normal(size=(1, 6, 2, 8)).astype(np.float32)
    pos = np.arange(6)
    by_scale = positions.apply_rope(x, pos, scale=4.0)
    by_scaling = positions.apply_rope(x, pos, scaling=positions.RopeScaling("linear", 4.0))
    np.testing.assert_allclose(by_scaling, by_scale, rtol=1e-6, atol=1e-6)


def test_llama3_rope_scaling_keeps_high_and_divides_low_frequencies():
    """Llama 3.1: wavelengths below L / high_freq_factor kept, above L / low_freq_factor divided by the factor,
    and in between interpolated (float64 reference written from the formula in the docstring)."""
    H, base, s = (
        16,
        10000.0,
        positions.RopeScaling("llama3", 8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_len=64),
    )
    theta = base ** (-np.arange(0, H, 2) / H)
    wave = 2 * np.pi / theta
    a = (64 / wave - 1.0) / (4.0 - 1.0)
    want = np.where(wave < 16, theta, np.where(wave > 64, theta / 8.0, theta * ((1 - a) / 8.0 + a)))
    got = positions.rope_frequencies(H, base=base, scaling=s)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == theta[0] and got[-1] == theta[-1] / 8.0  # both regimes occur at this size
    assert np.any((wave >= 16) & (wave <= 64))  # and the interpolated one


def test_rope_scaling_refuses_bad_settings():
    with pytest.raises(ValueError, match=r"RopeScaling.kind='dynamic'; choose one of"):
        positions.RopeScaling("dynamic", 2.0)
    for factor in (0.0, -2.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"`RopeScaling.factor` must be a finite number > 0"):
            positions.RopeScaling("linear", factor)
    with pytest.raises(TypeError, match=r"`RopeScaling.factor` must be a real number; got '2'"):
        positions.RopeScaling("linear", "2")
    with pytest.raises(ValueError, match="needs 0 < low_freq_factor < high_freq_factor"):
        positions.RopeScaling("llama3", 8.0, low_freq_factor=4.0, high_freq_factor=1.0)
    with pytest.raises(TypeError, match=r"`RopeScaling.low_freq_factor` must be a real number"):
        positions.RopeScaling("llama3", 8.0, low_freq_factor="1")


# ---------------------------------------------------------------------------------------------------------------------
# YaRN


def yarn64(head_dim, base, factor, original, beta_fast=32.0, beta_slow=1.0, truncate=True, attention_factor=None):
    """(inverse frequencies, attention factor) re-derived in float64 from transformers 5's _compute_yarn_parameters:
    the correction range of pair indices from the rotation counts beta_fast / beta_slow over the original length,
    a linear ramp over it blending extrapolation (theta) into interpolation (theta / factor), and mscale."""

    def dim_of(rotations):
        return head_dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(head_dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    pos_freqs = base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    extrapolation_factor = 1 - ramp
    inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0
    return inv_freq, attention_factor


YARN_CASES = {
    # GPT-OSS: head_dim 64, rope_theta 150000, factor 32, beta 32 / 1, original 4096, truncate False
    "gpt_oss": dict(head_dim=64, base=150000.0, factor=32.0, original=4096, truncate=False),
    "gpt_oss_truncated": dict(head_dim=64, base=150000.0, factor=32.0, original=4096),
    "small": dict(head_dim=16, base=10000.0, factor=4.0, original=64, beta_fast=8.0, beta_slow=2.0),
    "explicit_attention_factor": dict(head_dim=32, base=500000.0, factor=8.0, original=1024, attention_factor=1.25),
    "factor_below_one": dict(head_dim=8, base=100.0, factor=0.5, original=16),
}


def yarn_scaling(case):
    return positions.RopeScaling(
        "yarn",
        case["factor"],
        original_max_len=case["original"],
        beta_fast=case.get("beta_fast", 32.0),
        beta_slow=case.get("beta_slow", 1.0),
        attention_factor=case.get("attention_factor"),
        truncate=case.get("truncate", True),
    )


@pytest.mark.parametrize("case", YARN_CASES.values(), ids=YARN_CASES.keys())
def test_yarn_frequencies_and_attention_factor_are_transformers_formula(case):
    scaling = yarn_scaling(case)
    want, factor = yarn64(**case)
    got = positions.rope_frequencies(case["head_dim"], base=case["base"], scaling=scaling)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert scaling.attention_scaling == pytest.approx(factor, rel=1e-15)
    theta = case["base"] ** (-np.arange(0, case["head_dim"], 2) / case["head_dim"])
    # Both ends: the fastest pairs keep theta, the slowest are divided by the factor (ramp clipped to 0 and 1).
    assert got[0] == theta[0] and got[-1] == pytest.approx(theta[-1] / case["factor"], rel=1e-12)


def test_yarn_truncate_rounds_the_correction_range_outward():
    """GPT-OSS's truncate=False keeps the fractional correction range; True floors its low end and ceils its high
    end, so some pairs blend differently."""
    exact = positions.rope_frequencies(64, base=150000.0, scaling=yarn_scaling(YARN_CASES["gpt_oss"]))
    rounded = positions.rope_frequencies(64, base=150000.0, scaling=yarn_scaling(YARN_CASES["gpt_oss_truncated"]))
    assert np.any(exact != rounded)


@pytest.mark.parametrize("interleaved", [True, False])
@pytest.mark.parametrize("batched", [False, True])
def test_apply_rope_with_yarn_rotates_by_its_frequencies_and_scales_by_its_attention_factor(interleaved, batched):
    """transformers multiplies its cos and sin tables by the attention factor m: the output is m times the rotation
    at YaRN's frequencies (float64 reference from the formula), so q . k grows by m^2."""
    case = YARN_CASES["small"]
    scaling = yarn_scaling(case)
    inv_freq, m = yarn64(**case)
    B, T, N, H = 2, 6, 3, case["head_dim"]
    x = normal(5, (B, T, N, H))
    pos = np.random.default_rng(6).integers(0, 300, (B, T) if batched else (T,)).astype(np.int32)
    got = rope_jit(x, pos, base=case["base"], interleaved=interleaved, scaling=scaling)
    angles = np.broadcast_to(np.asarray(pos, np.float64), (B, T))[:, :, None, None] * inv_freq  # [B, T, 1, H / 2]
    x64 = np.asarray(x, np.float64)
    if interleaved:
        xa, xb = x64[..., 0::2], x64[..., 1::2]
        want = np.stack([xa * np.cos(angles) - xb * np.sin(angles), xa * np.sin(angles) + xb * np.cos(angles)], -1)
        want = want.reshape(x.shape)
    else:
        xa, xb = x64[..., : H // 2], x64[..., H // 2 :]
        want = np.concatenate(
            [xa * np.cos(angles) - xb * np.sin(angles), xa * np.sin(angles) + xb * np.cos(angles)], -1
        )
    np.testing.assert_allclose(got, m * want, rtol=2e-5, atol=2e-5)
    assert m > 1
    np.testing.assert_allclose(np.linalg.norm(got, axis=-1), m * np.linalg.norm(x, axis=-1), rtol=1e-5)


def test_other_scalings_have_no_attention_factor():
    for scaling in (
        positions.RopeScaling("linear", 4.0),
        positions.RopeScaling("llama3", 8.0, original_max_len=64),
        positions.RopeScaling("proportional", 2.0, fraction=0.5),
        positions.RopeScaling("linear", 4.0, attention_factor=3.0),  # a yarn field, ignored by the other kinds
    ):
        assert scaling.attention_scaling == 1.0
    x, pos = normal(7, (1, 5, 2, 8)), np.arange(5)
    # Unchanged: the same numbers as rotating by the scaled frequencies alone (no extra multiply by 1.0).
    linear = positions.apply_rope(x, pos, scaling=positions.RopeScaling("linear", 4.0))
    np.testing.assert_array_equal(linear, positions.apply_rope(x, pos, scale=4.0))


def test_yarn_refuses_bad_settings():
    with pytest.raises(ValueError, match=r"yarn needs 0 < beta_slow < beta_fast; got beta_fast=1.0, beta_slow=32.0"):
        positions.RopeScaling("yarn", 32.0, original_max_len=4096, beta_fast=1.0, beta_slow=32.0)
    with pytest.raises(ValueError, match=r"`RopeScaling.beta_fast` must be a finite number > 0"):
        positions.RopeScaling("yarn", 32.0, beta_fast=0.0)
    with pytest.raises(ValueError, match=r"`RopeScaling.beta_slow` must be a finite number > 0"):
        positions.RopeScaling("yarn", 32.0, beta_slow=float("nan"))
    with pytest.raises(ValueError, match=r"`RopeScaling.attention_factor` must be a finite number > 0 or None"):
        positions.RopeScaling("yarn", 32.0, attention_factor=-1.0)
    with pytest.raises(ValueError, match=r"`RopeScaling.original_max_len` must be a positive int; got 0"):
        positions.RopeScaling("yarn", 32.0, original_max_len=0)
    with pytest.raises(TypeError, match=r"`RopeScaling.truncate` must be True or False; got 'no'"):
        positions.RopeScaling("yarn", 32.0, truncate="no")
    with pytest.raises(ValueError, match=r"needs a RoPE base != 1"):
        positions.rope_frequencies(8, base=1.0, scaling=positions.RopeScaling("yarn", 2.0))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["gpt_oss", "gpt_oss_truncated", "small", "explicit_attention_factor"])
def test_yarn_equals_transformers_own_rope_init_function(case):
    """transformers' ROPE_INIT_FUNCTIONS["yarn"] on a small config (float32 torch: to float32 rounding)."""
    pytest.importorskip("torch")
    rope_utils = pytest.importorskip("transformers.modeling_rope_utils")
    from transformers import PretrainedConfig

    case = YARN_CASES[case]
    rope_parameters = {
        "rope_type": "yarn",
        "rope_theta": case["base"],
        "factor": case["factor"],
        "original_max_position_embeddings": case["original"],
        "beta_fast": case.get("beta_fast", 32.0),
        "beta_slow": case.get("beta_slow", 1.0),
        "truncate": case.get("truncate", True),
    }
    if case.get("attention_factor") is not None:
        rope_parameters["attention_factor"] = case["attention_factor"]
    config = PretrainedConfig(
        hidden_size=case["head_dim"] * 2,
        num_attention_heads=2,
        head_dim=case["head_dim"],
        max_position_embeddings=case["original"] * int(case["factor"]),
        rope_parameters=rope_parameters,
    )
    inv_freq, attention_factor = rope_utils.ROPE_INIT_FUNCTIONS["yarn"](config, "cpu")
    scaling = yarn_scaling(case)
    ours = positions.rope_frequencies(case["head_dim"], base=case["base"], scaling=scaling)
    np.testing.assert_allclose(ours, inv_freq.numpy(), rtol=2e-6)
    assert scaling.attention_scaling == pytest.approx(attention_factor, rel=1e-12)


def test_apply_rope_refuses_a_scaling_that_is_not_a_rope_scaling():
    with pytest.raises(TypeError, match=r"`scaling` must be an ops.RopeScaling or None; got dict"):
        positions.apply_rope(np.zeros((1, 2, 1, 4), np.float32), np.arange(2), scaling={"kind": "linear"})


@pytest.mark.parametrize("base", [0.0, -1.0, float("nan")])
def test_bases_must_be_positive(base):
    """A base <= 0 gives inf / NaN frequencies: refused by every function that takes one."""
    with pytest.raises(ValueError, match=r"`base` must be a finite number > 0"):
        positions.sinusoidal_positions(4, 8, base=base)
    with pytest.raises(ValueError, match=r"`base` must be a finite number > 0"):
        positions.rope_frequencies(8, base=base)
    with pytest.raises(ValueError, match=r"`base` must be a finite number > 0"):
        positions.apply_rope(np.zeros((1, 2, 1, 4), np.float32), np.arange(2), base=base)
    with pytest.raises(TypeError, match=r"`base` must be a real number"):
        positions.rope_frequencies(8, base="1e4")


def test_rope_frequencies_refuse_an_odd_head_dim_and_a_bad_scaling():
    with pytest.raises(ValueError, match=r"`head_dim` must be even"):
        positions.rope_frequencies(7)
    with pytest.raises(TypeError, match=r"`scaling` must be an ops.RopeScaling or None; got str"):
        positions.rope_frequencies(8, scaling="linear")


def test_apply_rope_refuses_integer_x_and_a_bad_scale():
    """An integer x would be rotated in float32 and cast back to integers: silently wrong, so refused."""
    x = np.ones((1, 3, 2, 4), np.int32)
    with pytest.raises(TypeError, match=r"`x` must have a floating dtype; got int32"):
        positions.apply_rope(x, np.arange(3))
    for scale in (0.0, float("nan")):
        with pytest.raises(ValueError, match=r"`scale` must be a finite number > 0"):
            positions.apply_rope(x.astype(np.float32), np.arange(3), scale=scale)


@pytest.mark.parametrize("batched", [False, True])
def test_apply_rope_of_an_empty_sequence_is_empty(batched):
    x = np.zeros((2, 0, 3, 4), np.float32)
    pos = np.zeros((2, 0) if batched else (0,), np.int32)
    assert positions.apply_rope(x, pos).shape == (2, 0, 3, 4)
    assert jax.jit(positions.apply_rope)(x, pos).shape == (2, 0, 3, 4)
