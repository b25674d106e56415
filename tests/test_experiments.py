"""The experiment scripts still run (tiny sizes); their real results are in BENCHMARKS.md."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_script(*args: str) -> str:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_demo_ops_runs_and_blockwise_matches_dense():
    out = run_script("experiments/demo_ops.py")
    assert "causal_mask(12)" in out
    gradient_difference = float(out.split("max |gradient difference| ")[1].split()[0])
    assert gradient_difference < 1e-4


@pytest.mark.slow
def test_bench_attention_smoke():
    out = run_script("experiments/bench_attention.py", "--smoke")
    assert "| B=2,T=32,N=2,H=8 | jax.nn | " in out
    assert "peak RSS MiB" in out


def test_bench_decode_smoke_cached_and_recomputed_tokens_agree():
    out = run_script("experiments/bench_decode.py", "--smoke")
    rows = [line for line in out.splitlines() if line.startswith("| 1 | 8 |") or line.startswith("| 2 | 8 |")]
    assert len(rows) == 2 and all(row.rstrip().endswith("| yes |") for row in rows), out


@pytest.mark.slow
def test_bench_train_smoke():
    out = run_script("experiments/bench_train.py", "--smoke")
    assert '"mfu":' in out


@pytest.mark.slow
def test_bench_gpu_smoke_runs_every_part_on_cpu(tmp_path):
    out = run_script("experiments/bench_gpu.py", "--smoke", "--json", str(tmp_path / "gpu.json"))
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert {"peak", "attention", "train", "decode"} <= set(result), out
    assert "cuDNN" in out  # on CPU the cuDNN rows record jax's error instead of a time


@pytest.mark.slow
def test_ablate_train_cpu_smoke_times_each_variant(tmp_path):
    variants = "baseline,before,scan_remat_dots_no_batch,no_gelu"
    run_script("experiments/ablate_train_cpu.py", "--smoke", "--variants", variants, "--json", str(tmp_path / "a.json"))
    result = json.loads((tmp_path / "a.json").read_text())
    assert list(result["variants"]) == variants.split(",")
    assert result["variants"]["baseline"]["ratio"] == 1.0 and result["variants"]["before"]["step_ms"] > 0
