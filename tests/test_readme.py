"""The README's example runs and says what it claims."""

import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_ops_example_runs_and_blockwise_matches_dense_on_real_rows():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    out, same, valid = (np.asarray(scope[name]) for name in ("out", "same", "valid"))
    assert out.shape == (2, 128, 8, 64)
    np.testing.assert_allclose(out[valid], np.asarray(same)[valid], atol=1e-5)
    assert np.all(out[~valid] == 0)


def test_readme_model_example_runs():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[1]
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["logits"].shape == (2, 4, 256)
    assert scope["tokens"].shape == (2, 16)
