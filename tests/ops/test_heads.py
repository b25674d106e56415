"""Tests for jaxformer.ops.heads: split_heads / merge_heads."""

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest

from jaxformer.ops import heads


def test_split_heads_head_n_takes_features_n_times_h():
    B, T, N, H = 2, 3, 4, 5
    x = np.arange(B * T * N * H, dtype=np.float32).reshape(B, T, N * H)
    got = np.asarray(heads.split_heads(x, N))
    assert got.shape == (B, T, N, H)
    for n in range(N):
        np.testing.assert_array_equal(got[:, :, n, :], x[:, :, n * H : (n + 1) * H])


def test_merge_heads_is_the_inverse_of_split_heads():
    x = np.random.default_rng(0).standard_normal((2, 3, 12)).astype(np.float32)
    split = heads.split_heads(x, 4)
    np.testing.assert_array_equal(heads.merge_heads(split), x)
    np.testing.assert_array_equal(heads.split_heads(heads.merge_heads(split), 4), split)


def test_eager_and_jit_agree():
    x = np.random.default_rng(0).standard_normal((2, 3, 12)).astype(np.float32)
    split = jax.jit(heads.split_heads, static_argnums=1)
    np.testing.assert_array_equal(split(x, 3), heads.split_heads(x, 3))
    np.testing.assert_array_equal(jax.jit(heads.merge_heads)(split(x, 3)), x)


@hypothesis.given(B=st.integers(1, 3), T=st.integers(1, 4), N=st.integers(1, 4), H=st.integers(1, 4))
def test_round_trip_any_shape(B, T, N, H):
    x = np.random.default_rng(B * T * N * H).standard_normal((B, T, N * H)).astype(np.float32)
    split = np.asarray(heads.split_heads(x, N))
    assert split.shape == (B, T, N, H)
    np.testing.assert_array_equal(split[:, :, -1], x[:, :, (N - 1) * H :])
    np.testing.assert_array_equal(heads.merge_heads(split), x)


def test_split_heads_non_divisible_width_raises():
    with pytest.raises(ValueError, match=r"D=10.*num_heads=3"):
        heads.split_heads(np.zeros((1, 2, 10), np.float32), 3)


@pytest.mark.parametrize("num_heads", [0, -2, 2.0])
def test_split_heads_bad_num_heads_raises(num_heads):
    with pytest.raises(ValueError, match="num_heads"):
        heads.split_heads(np.zeros((1, 2, 4), np.float32), num_heads)


def test_split_heads_wrong_rank_raises():
    with pytest.raises(ValueError, match=r"`x`.*\[B, T, D\]"):
        heads.split_heads(np.zeros((2, 4), np.float32), 2)


def test_merge_heads_wrong_rank_raises():
    with pytest.raises(ValueError, match=r"`x`.*\[B, T, N, H\]"):
        heads.merge_heads(np.zeros((1, 2, 4), np.float32))
