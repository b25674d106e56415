"""The experiment scripts still run (tiny sizes); their real results are in BENCHMARKS.md."""

import json
import pathlib
import random
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


@pytest.mark.slow  # ~10 s; cached decoding equals the full pass in tests/models and tests/decoding
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


def test_matmul_ceiling_counts_every_dot_of_a_scanned_gradient():
    sys.path.insert(0, str(ROOT / "experiments"))
    import jax
    import jax.numpy as jnp
    import matmul_ceiling_cpu

    def loss(w, x):  # 3 layers in a scan: forward h @ w, backward dh @ w^T and h^T @ dh per layer
        return jax.lax.scan(lambda h, w_l: (jnp.tanh(h @ w_l), None), x, w)[0].sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss))(jnp.ones((3, 8, 8)), jnp.ones((4, 8))).jaxpr
    dots = matmul_ceiling_cpu.collect_dots(jaxpr)
    assert sum(dots.values()) == 9
    assert {key[0] for key in dots} == {(4, 8)}  # every operand pair involves a [4, 8] activation
    flops = sum(matmul_ceiling_cpu.dot_flops(k[0], k[2], k[4]) * n for k, n in dots.items())
    assert flops == 9 * 2 * 4 * 8 * 8
    batched = (((2,), (1,)), ((0,), (0,)))  # [B, T, H] . [B, H, S] -> [B, T, S]
    assert matmul_ceiling_cpu.dot_flops((5, 3, 4), (5, 4, 7), batched) == 2 * 5 * 3 * 4 * 7


@pytest.mark.slow
def test_matmul_ceiling_smoke(tmp_path):
    run_script("experiments/matmul_ceiling_cpu.py", "--smoke", "--json", str(tmp_path / "c.json"))
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["dots_per_step"] == sum(row["count"] for row in result["dots"]) and result["ceiling_mfu"] > 0


@pytest.mark.slow
def test_pretrained_max_delta_lists_every_fixture_within_tolerance():
    rows = [line.split() for line in run_script("experiments/pretrained_max_delta.py").splitlines()]
    assert {row[0] for row in rows} == {
        p.name for p in (ROOT / "tests" / "fixtures" / "pretrained").iterdir() if p.is_dir()
    }
    assert all(float(row[-1]) < 1e-4 for row in rows)


@pytest.mark.slow
def test_bench_data_smoke(tmp_path):
    seed = tmp_path / "seed.txt"
    seed.write_text("".join(f"line {i} of a tiny generated corpus\n" for i in range(2000)))
    out = run_script(
        "experiments/bench_data.py",
        f"--dir={tmp_path / 'bench'}",
        f"--seed_text={seed}",
        "--gb=0.002",
        "--file_mb=0.5",
        "--steps=4",
        "--pipeline_workers=0",
        f"--json={tmp_path / 'result.json'}",
    )
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["corpus"]["bytes"] >= 2e6 and result["prepare"]["peak_rss_bytes"] > 0
    assert result["train"]["steps"] == 4 and result["pipeline"]["workers_0"]["gpu_recipe"]["batches_per_s"] > 0
    assert "prepare:" in out and "pipeline, 0 grain workers" in out


def _small_text(tmp_path: pathlib.Path) -> pathlib.Path:
    """A text of ~30k characters with a vocabulary like tiny Shakespeare's, so that the smoke runs need no tfds."""
    rng = random.Random(0)
    words = ["the", "king", "queen", "my", "lord", "thou", "art", "and", "to", "be", "or", "not", "What!", "Ay,"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) for _ in range(1500)]
    path = tmp_path / "text.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow
def test_torch_reference_smoke_matches_jaxformer_at_init(tmp_path):
    pytest.importorskip("torch")
    summary = tmp_path / "summary.json"
    out = run_script(
        "experiments/torch_reference.py",
        "--smoke",
        f"--text={_small_text(tmp_path)}",
        f"--out_dir={tmp_path / 'run'}",
        f"--summary_json={summary}",
    )
    result = json.loads(summary.read_text())
    assert result["forward_max_abs_diff"] < 1e-4 and result["schedule_max_rel_diff"] < 1e-6
    assert result["steps"] == 20 and 0 < result["val_loss"] < 5
    assert "sampled characters" in out and (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_bench_step_vs_pytorch_smoke_losses_track(tmp_path):
    pytest.importorskip("torch")
    out_json = tmp_path / "bench.json"
    out = run_script(
        "experiments/bench_step_vs_pytorch.py",
        "--smoke",
        "--no_compile",
        f"--text={_small_text(tmp_path)}",
        f"--json={out_json}",
    )
    result = json.loads(out_json.read_text())
    assert result["forward_max_abs_diff"] < 1e-4
    assert {"jaxformer loop step", "jaxformer prepared batch", "torch eager"} <= set(result["per_step_ms"])
    assert result["ratios"]["jaxformer loop step / torch eager"]["pooled"] > 0
    # Same initial parameters, same batches, same optimizer: the losses agree step by step.
    assert result["losses"]["jaxformer vs torch eager"]["max_abs_diff_all"] < 1e-3
    # The record and the table name the CPU and its vector extensions (ratios against PyTorch differ with them).
    machine = result["machine"]
    assert machine["vector_extensions"] in machine["host"] and machine["host"] in out


@pytest.mark.slow
def test_profile_loop_step_smoke_splits_each_step(tmp_path):
    out_json = tmp_path / "profile.json"
    out = run_script(
        "experiments/profile_loop_step.py",
        "--smoke",
        f"--text={_small_text(tmp_path)}",
        f"--profile={tmp_path / 'trace'}",
        f"--json={out_json}",
    )
    result = json.loads(out_json.read_text())
    profile = result["profile"]["per_step_ms"]
    assert profile["wall"] > 0 and profile["device_span"] > 0 and result["profile"]["ops_matched_to_hlo"] > 0
    assert result["machine"]["host"] in out and "Where a jaxformer loop step's time goes" in out


@pytest.mark.slow
def test_hlo_text_finds_the_dots_inside_fusions():
    sys.path.insert(0, str(ROOT / "experiments"))
    import hlo_text
    import jax
    import jax.numpy as jnp

    x = jnp.ones((16, 8))
    text = jax.jit(lambda x, w: jnp.tanh(x @ w).sum()).lower(x, jnp.ones((8, 4))).compile().as_text()
    instructions = hlo_text.hlo_instructions(text)
    dots = hlo_text.dots_of(instructions)
    assert [d["signature"] for d in dots] == ["dot(f32, f32) -> f32"]
    kinds = hlo_text.op_kinds(instructions)
    assert kinds[dots[0]["run_by"]] == "matmul" and "other" in kinds.values()


@pytest.mark.slow
def test_bench_decode_hf_smoke_greedy_tokens_match_transformers(tmp_path):
    pytest.importorskip("transformers")
    out = run_script("experiments/bench_decode_hf.py", "--smoke", "--json", str(tmp_path / "decode_hf.json"))
    rows = json.loads((tmp_path / "decode_hf.json").read_text())["rows"]
    greedy = [r for r in rows if r["mode"] == "greedy"]
    assert {(r["model"], r["batch"]) for r in greedy} == {("gpt2", 1), ("gpt2", 2), ("llama", 1), ("llama", 2)}
    assert all(r["same_tokens"] for r in greedy), out
    assert all(r["jaxformer"]["full_s"] > 0 and r["transformers"]["full_s"] > 0 for r in rows)
    table = [
        line
        for line in out.splitlines()
        if line.startswith(("| gpt2 | float32 | greedy |", "| llama | float32 | greedy |"))
    ]
    table = [line for line in table if "x** |" in line]  # the results table, not the first-call one
    assert len(table) == 4 and all("x** | yes (" in line for line in table), out
    assert "| total ratio |" in out and "Greedy tokens identical in 4 of 4 greedy settings." in out


@pytest.mark.slow  # ~10 s of packing 200,000 conversations; pack_rows itself runs in tests/data/test_packing.py
def test_bench_packing_fills_at_least_90_percent_of_every_row_with_best_fit_decreasing():
    out = run_script("experiments/bench_packing.py")
    rows = [line.split() for line in out.splitlines()[2:] if line.strip()]
    assert len(rows) == 10
    assert all(float(row[4].rstrip("%")) >= 90.0 for row in rows), out


@pytest.mark.slow
def test_bench_eval_smoke_agrees_with_lm_evals_hf_backend(tmp_path):
    pytest.importorskip("lm_eval")
    pytest.importorskip("transformers")
    out = run_script("experiments/bench_eval.py", "--smoke", "--json", str(tmp_path / "eval.json"))
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["requests"] == 32 and record["accuracy_equal"], out
    assert record["max_loglikelihood_excess_over_1e-6_rel"] < 1e-4, out
    assert record["jaxformer_compiles_per_round"][0] >= 1 and record["jaxformer_compiles_per_round"][-1] == 0
    assert "req/s" in out


@pytest.mark.slow
def test_bench_moe_smoke_variants_agree(tmp_path):
    out = run_script("experiments/bench_moe.py", "--smoke", "--json", str(tmp_path / "moe.json"))
    assert "| grouped (blocks of 128) |" in out and "| every expert (dense) |" in out
    record = json.loads((tmp_path / "moe.json").read_text())
    assert len(record["agree"]) == 3 and all(v < 1e-4 for v in record["agree"].values()), out
