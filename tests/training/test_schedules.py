"""Every schedule against its formula, written here in NumPy float64."""

import math

import numpy as np
import pytest

from jaxformer.training.schedules import SCHEDULES, make_schedule

N, W, LR, END = 1000, 100, 3e-3, 3e-4
STEPS = np.array([0, 1, 50, 99, 100, 101, 400, 799, 800, 801, 999, 1000])


def warmup(s):
    return LR * s / W


def reference(name, s):
    if name == "inverse_sqrt":
        n = s + 1
        return LR * 512**-0.5 * min(n**-0.5, n * W**-1.5)
    if s < W:
        return warmup(s)
    t = s - W
    if name == "warmup_cosine":
        return END + (LR - END) * 0.5 * (1 + math.cos(math.pi * min(t, N - W) / (N - W)))
    if name == "warmup_linear":
        return LR + (END - LR) * min(t, N - W) / (N - W)
    if name == "constant":
        return LR
    if name == "step":
        return LR * 0.1 ** sum(s >= b for b in (400, 800))
    if name == "exponential":
        return LR * 0.5 ** (t / 250)
    if name == "warmup_stable_decay":
        decay_start = N - 200
        return LR if s < decay_start else LR + (END - LR) * min(s - decay_start, 200) / 200
    raise AssertionError(name)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_matches_its_formula(name):
    schedule = make_schedule(
        name,
        learning_rate=LR,
        num_steps=N,
        warmup_steps=W,
        end_learning_rate=END,
        d_model=512,
        boundaries=(400, 800),
        decay_factor=0.1,
        decay_rate=0.5,
        decay_steps=250,
        decay_fraction=0.2,
    )
    got = np.array([float(schedule(s)) for s in STEPS])
    want = np.array([reference(name, int(s)) for s in STEPS])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-10)


def test_noam_peaks_at_the_end_of_warmup():
    schedule = make_schedule("inverse_sqrt", learning_rate=1.0, num_steps=10000, warmup_steps=4000, d_model=512)
    values = np.array([float(schedule(s)) for s in range(0, 10000, 7)])
    assert abs(int(np.argmax(values)) * 7 - 3999) <= 7
    np.testing.assert_allclose(values.max(), 512**-0.5 * 4000**-0.5, rtol=1e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="schedule='cosine'; choose one of"):
        make_schedule("cosine", learning_rate=1.0, num_steps=10)
    with pytest.raises(TypeError, match="schedule=None; choose one of"):
        make_schedule(None, learning_rate=1.0, num_steps=10)
    with pytest.raises(ValueError, match=r"`warmup_steps` must be an int in \[0, num_steps=10\]; got 11"):
        make_schedule("warmup_cosine", learning_rate=1.0, num_steps=10, warmup_steps=11)
    with pytest.raises(ValueError, match=r"`num_steps` must be a positive int; got 0"):
        make_schedule("constant", learning_rate=1.0, num_steps=0)
    with pytest.raises(TypeError, match=r"`num_steps` must be a positive int; got '10'"):
        make_schedule("constant", learning_rate=1.0, num_steps="10")
    with pytest.raises(ValueError, match=r"`learning_rate` must be a finite number > 0; got 0.0"):
        make_schedule("constant", learning_rate=0.0, num_steps=10)
    with pytest.raises(ValueError, match=r"`decay_fraction` must be a finite number in \(0, 1\]; got 1.5"):
        make_schedule("warmup_stable_decay", learning_rate=1.0, num_steps=10, decay_fraction=1.5)
    with pytest.raises(ValueError, match="needs d_model"):
        make_schedule("inverse_sqrt", learning_rate=1.0, num_steps=10, warmup_steps=2)
    with pytest.raises(ValueError, match="must not fall inside the warmup"):
        make_schedule("step", learning_rate=1.0, num_steps=10, warmup_steps=5, boundaries=(3,))
