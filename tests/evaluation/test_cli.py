"""`jaxformer eval` without lm_eval installed: it says how to install it (and nothing is loaded first). With
lm_eval, the command is compared with lm_eval's own table in test_harness.py (slow)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_eval(tmp_path, *args):
    # An `lm_eval` package that cannot be imported stands in front of any installed one.
    blocker = tmp_path / "blocker" / "lm_eval"
    blocker.mkdir(parents=True, exist_ok=True)
    (blocker / "__init__.py").write_text("raise ImportError('lm_eval is not installed (test stand-in)')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker.parent), ROOT])}
    command = [sys.executable, "-m", "jaxformer.cli", "eval", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)


def test_without_lm_eval_the_command_says_how_to_install_it(tmp_path):
    done = run_eval(tmp_path, "--pretrained=tests/fixtures/pretrained/llama", "--tasks=jaxformer_mc")
    assert done.returncode == 2
    assert "pip install 'jaxformer[eval]'" in done.stderr and "Traceback" not in done.stderr


def test_bad_command_lines_are_refused_before_anything_loads(tmp_path):
    done = run_eval(tmp_path, "--tasks=jaxformer_mc")
    assert done.returncode != 0 and "exactly one of --workdir" in done.stderr
    done = run_eval(tmp_path, "--pretrained=tests/fixtures/pretrained/llama")
    assert done.returncode != 0 and "--tasks" in done.stderr
