"""experiments/plot_schedules.py: the --smoke run writes a PNG, and what it plots is `make_schedule` itself."""

import importlib.util
import pathlib

import numpy as np
import pytest

from jaxformer.training.schedules import SCHEDULES, make_schedule

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "plot_schedules.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("plot_schedules", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_writes_a_png(script, tmp_path):
    out = tmp_path / "sub" / "schedules.png"
    assert script.main(["--smoke", "--out", str(out)]) == str(out)
    data = out.read_bytes()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", SCHEDULES)
def test_plotted_values_are_make_schedule(script, name):
    num_steps, warmup_steps = 100, 10
    values = script.schedule_values(name, num_steps, warmup_steps)
    assert values.shape == (num_steps,)
    schedule = make_schedule(name, **script.schedule_kwargs(name, num_steps, warmup_steps))
    for step in (0, 5, warmup_steps - 1, warmup_steps, 50, 79, 80, num_steps - 1):
        np.testing.assert_allclose(values[step], float(schedule(step)), rtol=1e-6, atol=1e-12)


def test_inverse_sqrt_is_the_noam_curve(script):
    # learning_rate 1: the peak, at n = s + 1 = w, is d_model^-0.5 * w^-0.5 (the value the plot annotates).
    kwargs = script.schedule_kwargs("inverse_sqrt", 10_000, 1_000)
    assert kwargs["learning_rate"] == 1.0
    values = script.schedule_values("inverse_sqrt", 2_000, 1_000)
    assert int(np.argmax(values)) == 999
    np.testing.assert_allclose(values.max(), kwargs["d_model"] ** -0.5 * 1_000**-0.5, rtol=1e-5)
