"""ring_attention equals full attention over the global sequence (values and gradients) on 8 devices, holds no global
T x T array, and its zigzag layout balances causal work; zigzag / unzigzag; n = 1 in process; error messages.

The 8-device checks run in one subprocess (ring_multidevice_run.py): jax reads XLA_FLAGS when it starts, and this
process has one CPU device."""

import functools
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxformer import ops

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_CASES = (
    "causal_contiguous",
    "causal_zigzag",
    "noncausal_gqa",
    "segments_causal_zigzag",
    "window_causal_contiguous",
    "window_gqa_causal_zigzag",
    "empty_rows",
    "softcap_causal_zigzag_gqa",
    "blocks_causal_zigzag_window_segments",
    "sinks_causal_zigzag_window_segments",
    "alibi_causal_zigzag",
    "alibi_given_positions_causal_zigzag_softcap",
    "mesh_2x4_causal_zigzag_segments",
)
SLOW_CASES = (
    "noncausal_zigzag",
    "segments_causal_contiguous",
    "segments_noncausal_unsorted",
    "window_noncausal",
    "window_noncausal_zigzag_segments",
    "mesh_2x4_causal_contiguous_gqa_window",
    "mesh_4x2_noncausal_window_segments",
    "long_causal_zigzag_window_segments",
    "long_causal_contiguous_scale_mqa",
    "softcap_noncausal_window_segments",
    "blocks_noncausal_contiguous_gqa",
    "sinks_noncausal_empty_rows",
    "alibi_noncausal_window_contiguous",
)
OUT_ATOL, GRAD_ATOL = 2e-5, 1e-4


# Once per session (as tests/training/test_sharding.py): xdist may tear a module fixture down between tests.
@functools.cache
def multidevice_runs(names: tuple[str, ...]) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / "ring_multidevice_run.py"), *names], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["devices"] == 8
    return result


@pytest.fixture
def runs():
    """The default cases, the layouts' positions and the compiled program of causal_zigzag, on 8 CPU devices."""
    return multidevice_runs((*DEFAULT_CASES, "positions"))


def assert_matches_reference(case: dict):
    errors = case["errors"]
    assert case["finite"]
    assert errors["out"] < OUT_ATOL, errors
    assert max(errors["dq"], errors["dk"], errors["dv"], errors.get("dsinks", 0.0)) < GRAD_ATOL, errors


@pytest.mark.parametrize("name", DEFAULT_CASES)
def test_ring_attention_equals_full_attention_values_and_gradients(runs, name):
    """Outputs and dq, dk, dv against float64 NumPy attention over the whole sequence (8 devices on `context`, or
    a (data, context) = (2, 4) mesh with the batch split over data)."""
    assert_matches_reference(runs["cases"][name])


# Thirteen more programs: more mask, soft-cap, block, sink and ALiBi combinations, T = 256, a (4, 2) mesh (~10-40 s).
@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_CASES)
def test_ring_attention_more_cases(name):
    assert_matches_reference(multidevice_runs(SLOW_CASES)["cases"][name])


def test_rows_that_see_no_key_are_zeros_with_finite_gradients(runs):
    case = runs["cases"]["empty_rows"]  # (q_ids, kv_ids) where a query id matches no key id
    assert case["empty_rows"] > 0 and case["empty_rows_zero"] and case["finite"]


def test_compiled_program_holds_no_global_square_array(runs):
    """T = 128 on 8 devices, causal zigzag, forward + backward: no array has a 128 x 128 pair of dimensions (the dense
    path's program has), only [16, 16] tiles and the half tiles [16, 8] / [8, 16] of the steps that see half a block;
    the blocks move by collective permutes."""
    hlo = runs["cases"]["causal_zigzag"]["hlo"]
    assert hlo["dense_square"]  # the check sees a T x T array where there is one
    assert hlo["ring_square"] == []
    assert hlo["ring_local_tile"] and hlo["ring_half_tiles"] and hlo["ring_collective_permutes"] > 0


def test_key_blocks_bound_the_scores_a_device_holds(runs):
    """block_size=4 with T_local = 16: the score tiles of the program (dot outputs [B, N, queries, keys]; the other
    dots end in the head size 8) are [16, 4] and the half tiles' [8, 4]: no [16, 16] or [8, 16] tile is left."""
    case = runs["cases"]["blocks_causal_zigzag_window_segments"]
    assert_matches_reference(case)
    shapes = [tuple(map(int, shape.split(","))) for shape in case["hlo"]["dot_shapes"]]
    assert {shape[-1] for shape in shapes} == {4, 8}  # head size 8; key blocks of 4
    assert {shape[-2:] for shape in shapes if shape[-1] != 8} == {(16, 4), (8, 4)}
    # Without blocks the same program's score tiles are whole: [16, 16] and the half tiles [8, 16] (and [16, 8]).
    assert (16, 16) in {tuple(map(int, s.split(",")))[-2:] for s in runs["cases"]["causal_zigzag"]["hlo"]["dot_shapes"]}
    assert case["hlo"]["ring_square"] == []


def causal_work(positions: np.ndarray):
    """Per device ([n, T_local] global positions, keys laid out as the queries): the (query, key) pairs the causal
    mask leaves visible over all ring steps, and the tile area a step computes when it keeps only the query rows and
    key columns that hold a visible pair (what the kernel's steps compute: whole, half or no tiles)."""
    n = len(positions)
    pairs, area = np.zeros(n, int), np.zeros(n, int)
    for i in range(n):
        for step in range(n):
            visible = positions[(i - step) % n][None, :] <= positions[i][:, None]  # [T_local, S_local]
            pairs[i] += visible.sum()
            area[i] += visible.any(axis=1).sum() * visible.any(axis=0).sum()
    return pairs, area


def test_positions_follow_the_layouts(runs):
    pos = {layout: np.asarray(p) for layout, p in runs["positions"].items()}  # 8 devices x 8 of T = 64
    np.testing.assert_array_equal(pos["contiguous"], np.arange(64).reshape(8, 8))
    chunks = np.arange(64).reshape(16, 4)
    np.testing.assert_array_equal(pos["zigzag"], [np.concatenate([chunks[i], chunks[15 - i]]) for i in range(8)])
    np.testing.assert_array_equal(np.asarray(ops.zigzag(np.arange(64)[None], 8)).reshape(8, 8), pos["zigzag"])


def test_zigzag_balances_causal_work(runs):
    pos = {layout: np.asarray(p) for layout, p in runs["positions"].items()}
    pairs, area = causal_work(pos["zigzag"])
    assert pairs.sum() == 64 * 65 // 2  # every causal pair once
    assert pairs.max() / pairs.min() <= 1.1
    # Each device: its own tile and 7 half tiles, 4.5 tiles of 8 x 8.
    np.testing.assert_array_equal(area, np.full(8, 64 + 7 * 32))
    pairs, area = causal_work(pos["contiguous"])
    assert pairs.sum() == 64 * 65 // 2
    assert pairs.max() / pairs.min() > 10  # 484 pairs on the last device, 36 on the first
    np.testing.assert_array_equal(area, 64 * np.arange(1, 9))  # device i: i + 1 whole tiles, the last 8


# -- In process: one device --------------------------------------------------------------------------------------


def one_device_ring(**kwargs):
    """jit(shard_map) of ring attention's vjp over a one-device `context` axis: (q, k, v, ids, w) -> (out, dq, dk,
    dv)."""
    mesh = jax.make_mesh((1,), ("context",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])

    def local(q, k, v, ids, w):
        out, vjp = jax.vjp(lambda q, k, v: ops.ring_attention(q, k, v, segment_ids=ids, **kwargs), q, k, v)
        return (out, *vjp(w))

    spec = P(None, "context")
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec,) * 5, out_specs=(spec,) * 4))


def dense_reference(q, k, v, ids, w, *, causal=False, window=None, scale=None, logit_softcap=None):
    T = q.shape[1]
    masks = [ops.segment_mask(ids)]
    if causal:
        masks.append(ops.causal_mask(T))
    if window is not None:
        masks.append(ops.sliding_window_mask(T, window=window, causal=causal))
    mask = ops.combine_masks(*masks)
    attend = lambda q, k, v: ops.dot_product_attention(q, k, v, mask=mask, scale=scale, logit_softcap=logit_softcap)
    out, vjp = jax.vjp(attend, q, k, v)
    return (out, *vjp(w))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(causal=True, window=5, layout="zigzag"),
        dict(causal=False, scale=0.2, layout="contiguous"),
        dict(causal=True, layout="contiguous", logit_softcap=0.7),
        dict(causal=True, window=4, layout="contiguous", block_size=3),
    ],
    ids=["causal_window_zigzag", "noncausal_scale", "causal_softcap", "causal_window_blocks"],
)
def test_one_device_ring_is_full_attention(kwargs):
    """n = 1: no shift; the one step is the whole (masked) tile. GQA (4 query heads over 2) and packed segments."""
    rng = np.random.default_rng(1)
    B, T, N, K, H = 2, 12, 4, 2, 8
    q, w = (jnp.asarray(rng.standard_normal((B, T, N, H)), jnp.float32) for _ in range(2))
    k, v = (jnp.asarray(rng.standard_normal((B, T, K, H)), jnp.float32) for _ in range(2))
    ids = jnp.asarray(np.cumsum(rng.random((B, T)) < 0.25, axis=1), jnp.int32)
    got = one_device_ring(**kwargs)(q, k, v, ids, w)
    reference_kwargs = {key: val for key, val in kwargs.items() if key not in ("layout", "block_size")}
    want = dense_reference(q, k, v, ids, w, **reference_kwargs)
    for name, g, r, atol in zip(("out", "dq", "dk", "dv"), got, want, (OUT_ATOL,) + (GRAD_ATOL,) * 3, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), atol=atol, rtol=0, err_msg=name)


# -- zigzag / unzigzag -------------------------------------------------------------------------------------------


def test_zigzag_order_and_inverse():
    x = np.arange(2 * 8 * 3).reshape(2, 8, 3)
    laid = np.asarray(ops.zigzag(x, 2))  # 4 chunks of 2: device 0 holds chunks 0 and 3, device 1 chunks 1 and 2
    np.testing.assert_array_equal(laid[0, :, 0] // 3, [0, 1, 6, 7, 2, 3, 4, 5])
    np.testing.assert_array_equal(np.asarray(ops.unzigzag(laid, 2)), x)
    y = np.arange(24).reshape(4, 6)
    np.testing.assert_array_equal(np.asarray(ops.unzigzag(ops.zigzag(y, 3, axis=-1), 3, axis=-1)), y)
    np.testing.assert_array_equal(np.asarray(ops.zigzag(y, 1, axis=0)), y)  # n = 1: chunks 0 and 1, in order
    assert isinstance(ops.zigzag(x, 2), np.ndarray)  # a host batch stays on the host
    assert isinstance(ops.zigzag(jnp.asarray(x), 2), jax.Array)


def test_zigzag_needs_a_multiple_of_2n():
    with pytest.raises(ValueError, match=r"2n = 4 chunks.*multiple of 4; got shape \(2, 6\)"):
        ops.zigzag(np.zeros((2, 6)), 2)


# -- Errors ------------------------------------------------------------------------------------------------------


def qkv(T=8, S=8, N=4, K=2, H=8):
    return np.zeros((2, T, N, H), np.float32), np.zeros((2, S, K, H), np.float32), np.zeros((2, S, K, H), np.float32)


def test_unbound_axis_name_is_named():
    with pytest.raises(NameError, match=r"axis_name='context' is not bound.*inside jax.shard_map"):
        ops.ring_attention(*qkv())
    with pytest.raises(NameError, match=r"axis_name='seq' is not bound"):
        jax.jit(lambda q, k, v: ops.ring_attention(q, k, v, axis_name="seq"))(*qkv())
    with pytest.raises(NameError, match=r"axis_name='context' is not bound"):
        ops.ring_positions(8)


def test_shape_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"N=3.*multiple of the number of key/value heads K=2"):
        ops.ring_attention(*qkv(N=3))
    with pytest.raises(ValueError, match=r"query of shape \(2, 8, 4, 8\) has T_local=8, key of shape \(2, 6, 2, 8\)"):
        ops.ring_attention(*qkv(S=6), causal=True)
    with pytest.raises(ValueError, match=r"T == S"):
        ops.ring_attention(*qkv(S=6), segment_ids=np.zeros((2, 8), np.int32))
    with pytest.raises(ValueError, match=r"`segment_ids` must be \[B=2, T=8\]; got shape \(2, 4\)"):
        ops.ring_attention(*qkv(), segment_ids=np.zeros((2, 4), np.int32))
    with pytest.raises(ValueError, match=r"`value` of shape \(2, 6, 2, 8\) must share \[B, S, K\]"):
        q, k, _ = qkv()
        ops.ring_attention(q, k, np.zeros((2, 6, 2, 8), np.float32))
    with pytest.raises(ValueError, match=r"zigzag.*even; got query shape \(2, 7, 4, 8\)"):
        ops.ring_attention(*qkv(T=7, S=7), layout="zigzag")


def test_bad_options_are_named():
    with pytest.raises(ValueError, match=r"layout='ring'; choose one of \('contiguous', 'zigzag'\)"):
        ops.ring_attention(*qkv(), layout="ring")
    with pytest.raises(ValueError, match=r"`window` must be a positive int; got 0"):
        ops.ring_attention(*qkv(), window=0)
    with pytest.raises(ValueError, match=r"block_size=3 must divide .* S_local=8; key shape \(2, 8, 2, 8\)"):
        ops.ring_attention(*qkv(), block_size=3)
    with pytest.raises(ValueError, match=r"block_size=8 must divide .* S_local=8 and its half 4 \(causal zigzag\)"):
        ops.ring_attention(*qkv(), block_size=8, causal=True, layout="zigzag")
    with pytest.raises(ValueError, match=r"logit_softcap"):
        ops.ring_attention(*qkv(), logit_softcap=-1.0)
    with pytest.raises(TypeError, match=r"`causal` must be True or False"):
        ops.ring_attention(*qkv(), causal=1)
