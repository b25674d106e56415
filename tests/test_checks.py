"""jaxformer.checks: the int, choice and segment-id checks, and the TypeError / ValueError rule of its docstring."""

import numpy as np
import pytest

from jaxformer import checks


@pytest.mark.parametrize("value", [1, 7, np.int32(3), np.int64(2**40)])
def test_positive_int_accepts_python_and_numpy_ints(value):
    got = checks.check_positive_int("n", value)
    assert got == int(value) and type(got) is int


@pytest.mark.parametrize(
    "value, error",
    [
        (0, ValueError),
        (-2, ValueError),
        (2.0, ValueError),  # a number, of the wrong sort: ValueError, as check_positive_int always did
        (True, ValueError),
        (np.float32(3.0), ValueError),
        ("3", TypeError),  # no number at all: TypeError
        (None, TypeError),
        ([3], TypeError),
        (np.array([3]), TypeError),
    ],
)
def test_positive_int_refuses(value, error):
    with pytest.raises(error, match=r"^`n` must be a positive int; got "):
        checks.check_positive_int("n", value)


def test_int_checks_word_their_bounds():
    assert checks.check_nonnegative_int("seed", 0) == 0
    assert checks.check_nonnegative_int("step", np.array(5)) == 5  # a 0-d int array, as a checkpoint holds
    with pytest.raises(ValueError, match=r"`seed` must be a non-negative int; got -1"):
        checks.check_nonnegative_int("seed", -1)
    with pytest.raises(TypeError, match=r"`seed` must be a non-negative int; got '1'"):
        checks.check_nonnegative_int("seed", "1")
    assert checks.check_int("k", 5, low=1, high=5) == 5
    with pytest.raises(ValueError, match=r"`k` must be an int in \[1, 5\]; got 6"):
        checks.check_int("k", 6, low=1, high=5)
    with pytest.raises(ValueError, match=r"`k` must be an int >= 0; got -1"):
        checks.check_int("k", -1, low=0)
    with pytest.raises(ValueError, match=r"`layers` must be a positive int or None; got 0"):
        checks.check_positive_int("layers", 0, " or None")


def test_positive_int_or_minus_one():
    assert checks.check_positive_int_or_minus_one("mesh.data", -1, "the rest") == -1
    assert checks.check_positive_int_or_minus_one("mesh.data", np.int64(4), "the rest") == 4
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"`mesh.data` must be a positive int or -1 \(the rest\); got "):
            checks.check_positive_int_or_minus_one("mesh.data", bad, "the rest")
    with pytest.raises(TypeError, match=r"`mesh.data` must be a positive int or -1 \(the rest\); got '-1'"):
        checks.check_positive_int_or_minus_one("mesh.data", "-1", "the rest")


def test_choice():
    assert checks.check_choice("norm", "rmsnorm", ("layernorm", "rmsnorm")) == "rmsnorm"
    with pytest.raises(ValueError, match=r"^norm='groupnorm'; choose one of \('layernorm', 'rmsnorm'\)\.$"):
        checks.check_choice("norm", "groupnorm", ("layernorm", "rmsnorm"))
    for bad in (None, ["rmsnorm"], 1):
        with pytest.raises(TypeError, match=r"^norm=.*; choose one of \('layernorm', 'rmsnorm'\)\.$"):
            checks.check_choice("norm", bad, ("layernorm", "rmsnorm"))


def test_token_id():
    assert checks.check_token_id("eos_id", np.int32(3), 5) == 3
    for bad, error in ((5, ValueError), (-1, ValueError), (1.5, ValueError), (True, ValueError), ("3", TypeError)):
        with pytest.raises(error, match=r"`eos_id` must be a token id"):
            checks.check_token_id("eos_id", bad, 5)


def test_int_vector_and_token_ids():
    assert checks.check_int_vector("starts", [0, 3], "window starts").tolist() == [0, 3]
    assert checks.check_int_vector("starts", [], "window starts").size == 0  # an empty list is float64: fine
    with pytest.raises(ValueError, match=r"^`starts` must be a 1-D array of window starts; got shape \(1, 2\)\.$"):
        checks.check_int_vector("starts", [[0, 1]], "window starts")
    for bad in ([0.0, 1.0], [True], ["a"]):  # an integer-only input given another dtype: the wrong kind
        with pytest.raises(TypeError, match=r"^`starts` must hold integer window starts; got dtype "):
            checks.check_int_vector("starts", bad, "window starts")
    for bad in (None, "0 1"):
        with pytest.raises(TypeError, match=r"^`starts` must be a 1-D array of window starts; got "):
            checks.check_int_vector("starts", bad, "window starts")
    assert checks.check_token_array("tokens", np.array([1, 2], np.int64)).dtype == np.int32
    with pytest.raises(TypeError, match=r"`tokens` must hold integer token ids; got dtype float32"):
        checks.check_token_array("tokens", np.zeros(3, np.float32))
    assert checks.check_token_ids([1, 2], 3).dtype == np.int64
    with pytest.raises(TypeError, match=r"`ids` must hold integer token ids; got dtype float64"):
        checks.check_token_ids([1.0], 3)
    with pytest.raises(ValueError, match=r"`ids` must lie in \[0, vocab_size=3\); got 3 at position 1"):
        checks.check_token_ids([1, 3], 3)


IDS = np.array([[0, 0, 1, 1]], np.int32)


def test_segment_ids_one_array_or_a_pair():
    assert checks.check_segment_ids(None, 1, 4, 4) == (None, None)
    q, kv = checks.check_segment_ids(IDS, 1, 4, 4)
    assert q is kv is IDS  # self-attention: the same ids for queries and keys, returned as given
    q, kv = checks.check_segment_ids((IDS, IDS[:, :3]), 1, 4, 3)
    assert q.shape == (1, 4) and kv.shape == (1, 3)
    q, kv = checks.check_segment_ids(([[0, 1]], [[1, 1, 1]]))  # no sizes given: any, lists accepted
    assert q.shape == (1, 2) and kv.shape == (1, 3)


@pytest.mark.parametrize(
    "segment_ids, sizes, kwargs, error, match",
    [
        (IDS[:, :3], (1, 4, 4), {}, ValueError, r"`segment_ids` must be \[B=1, T=4\]; got shape \(1, 3\)"),
        (IDS.astype(np.float32), (1, 4, 4), {}, TypeError, r"`segment_ids` must have an integer dtype"),
        (IDS, (1, 4, 3), {}, ValueError, r"self-attention \(T == S\); got T=4, S=3\. Pass a pair"),
        ((IDS, IDS), (1, 4, 3), {}, ValueError, r"`kv_segment_ids` must be \[B=1, S=3\]; got shape \(1, 4\)"),
        ((IDS,), (1, 4, 4), {}, ValueError, r"an array \[B, T\] or a pair"),
        ((IDS, IDS), (1, 4, 4), {"allow_pair": False}, ValueError, r"self-attention only"),
        ((IDS, IDS[0]), (), {}, ValueError, r"`kv_segment_ids` must have rank 2 with layout \[B, S\]"),
        ((IDS, np.zeros((2, 4), np.int32)), (), {}, ValueError, r"must have the same batch size"),
        (("a", IDS), (), {}, TypeError, r"`q_segment_ids` must be a numeric array"),
    ],
)
def test_segment_ids_refused(segment_ids, sizes, kwargs, error, match):
    with pytest.raises(error, match=match):
        checks.check_segment_ids(segment_ids, *sizes, **kwargs)
