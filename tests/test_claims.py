"""The claims lab's machinery (experiments/claims/lab.py, report.py) and every claim experiment's default run."""

import glob
import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLAIMS = os.path.join(ROOT, "experiments", "claims")
sys.path.insert(0, CLAIMS)

import lab  # noqa: E402
import report  # noqa: E402


def fake_claim(tmp_path, supported):
    module = types.ModuleType("fake")
    module.__file__ = str(tmp_path / "99_fake.py")
    module.CLAIM, module.SETUP = "Two is more than one.", "Compare 2 with 1."
    module.run = lambda size: lab.Outcome(f"2 > 1 is {2 > 1} ({size=}).", supported, {"values": [1, 2]})

    def plot(numbers, path):
        import matplotlib.pyplot as plt

        plt.figure()
        plt.plot(numbers["values"])
        plt.savefig(path)
        plt.close()

    module.plot = plot
    return module


@pytest.mark.parametrize("supported, verdict", [(True, "supported"), (False, "not supported"), (None, "partly")])
def test_main_writes_a_record_and_a_figure(tmp_path, monkeypatch, supported, verdict):
    monkeypatch.setattr(sys, "argv", ["99_fake.py", "--out", str(tmp_path)])
    record = lab.main(fake_claim(tmp_path, supported))
    saved = json.loads((tmp_path / "99_fake.json").read_text())
    assert saved == record and saved["verdict"].startswith(verdict) and saved["size"] == "default"
    assert saved["result"] == "2 > 1 is True (size='default')." and (tmp_path / "99_fake.png").stat().st_size > 0


def test_the_report_lays_out_every_record_from_its_files(tmp_path, monkeypatch):
    for supported in (True, False):
        monkeypatch.setattr(sys, "argv", ["99_fake.py", "--out", str(tmp_path)])
        module = fake_claim(tmp_path, supported)
        module.__file__ = str(tmp_path / f"9{int(supported)}_fake.py")
        lab.main(module)
    text = report.render([json.load(open(p)) for p in sorted(glob.glob(str(tmp_path / "*.json")))], "results")
    assert text.count("**Claim.** Two is more than one.") == 2
    assert "**Verdict: not supported.**" in text and "**Verdict: supported.**" in text
    assert "![90_fake](results/90_fake.png)" in text and "| 2 | [91_fake](#91_fake) | supported |" in text
    assert "--full size" not in text
    full = json.load(open(tmp_path / "91_fake.json")) | {"size": "full", "machine": "a GPU"}
    text = report.render([], "results", [full], "results_full")
    assert "## Runs at the --full size" in text and "| 91_fake | supported | " in text and "a GPU |" in text
    assert "![91_fake full](results_full/91_fake.png)" in text


SCRIPTS = sorted(glob.glob(os.path.join(CLAIMS, "[0-9][0-9]_*.py")))
NAMES = [os.path.splitext(os.path.basename(s))[0] for s in SCRIPTS]
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "tensorflow_datasets")  # as the Makefile's TFDS_DATA_DIR


def load_claim(name: str) -> types.ModuleType:
    """experiments/claims/<name>.py as a module (its name starts with a digit: imported by path)."""
    spec = importlib.util.spec_from_file_location(f"claim_{name}", os.path.join(CLAIMS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The tiny runs the default suite keeps (3-10 s each, one of each kind: a plot from records, attention internals,
# the exactness verdict); the others train one or several models each (8 to 56 s) and run with `make test-all`,
# which is run before an issue is called resolved.
DEFAULT_TINY = ("01_scaling", "04_shared_qk", "05_masks")


@pytest.mark.parametrize(
    "name", [n if n in DEFAULT_TINY else pytest.param(n, marks=pytest.mark.slow) for n in NAMES], ids=NAMES
)
def test_every_claim_runs_end_to_end_at_the_tiny_size(tmp_path, monkeypatch, name):
    """Every line of every claim, in seconds to a minute: a refactor of the library cannot break one unseen (claims
    03, 06, 07, 08 and 15 crashed since the data refactor with only a slow test to notice). In this process,
    sharing its imports."""
    if os.path.isdir(SHARED_DATA) and not os.environ.get("TFDS_DATA_DIR"):
        monkeypatch.setenv("TFDS_DATA_DIR", SHARED_DATA)
    record = lab.record(load_claim(name), "tiny", str(tmp_path))
    assert record["size"] == "tiny" and record["claim"] and record["result"]
    assert json.loads((tmp_path / f"{name}.json").read_text()) == json.loads(json.dumps(record))  # tuples: lists
    assert (tmp_path / f"{name}.png").stat().st_size > 0
    if name == "05_masks":  # exactness holds at any size: masked differences are exactly 0 under jit too
        assert record["verdict"] == "supported", record["result"]


@pytest.mark.slow  # each claim's default size takes up to a few minutes
@pytest.mark.parametrize("script", SCRIPTS, ids=NAMES)
def test_every_claim_runs_at_its_default_size(tmp_path, script):
    out = subprocess.run(
        [sys.executable, script, "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    name = os.path.splitext(os.path.basename(script))[0]
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert record["claim"] and record["result"] and (tmp_path / f"{name}.png").exists()
    assert record["size"] == "default"


def test_every_claim_in_the_repository_has_its_record_and_figure():
    for script in SCRIPTS:
        name = os.path.splitext(os.path.basename(script))[0]
        assert os.path.exists(os.path.join(CLAIMS, "results", f"{name}.json")), name
        assert os.path.exists(os.path.join(CLAIMS, "results", f"{name}.png")), name


@pytest.mark.slow  # ~8 s of compiles for a GPU-only failure path
def test_long_sequences_records_a_program_that_does_not_compile(monkeypatch):
    """Claim 13 at --full on an accelerator: a dense program XLA refuses is recorded, not a crash."""
    claim = load_claim("13_long_sequences")
    tiny = dict(B=1, N=1, H=8, window=16, block=16, lengths=[32, 64, 128], rounds_cheap=1, rounds=1)
    tiny["timed_up_to"] = dict(dense=64, blockwise=64, blockwise_window=128)
    monkeypatch.setattr(claim, "sizes", lambda size: tiny)
    real = claim.compiled

    def compiled(name, T, s):
        if name == "dense" and T == 128:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 64.0GiB.\nmore")
        return real(name, T, s)

    monkeypatch.setattr(claim, "compiled", compiled)
    outcome = claim.run("full")
    assert outcome.numbers["compile_failures"] == {
        "dense": {"128": "RuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate 64.0GiB."}
    }
    assert "dense did not compile at T=128 (RuntimeError: RESOURCE_EXHAUSTED" in outcome.result
    assert "128" not in outcome.numbers["temp_mib"]["dense"] and "128" in outcome.numbers["temp_mib"]["blockwise"]
