"""Data that outgrows memory: `jaxformer prepare` on a generated multi-GB corpus, then training on it.

    python experiments/bench_data.py                        # 2 GB corpus in /tmp/jaxformer_bench_data (~10 min)
    python experiments/bench_data.py --gb 0.05 --steps 20   # a smoke run (about a minute)

Measures, each command in its own process with its peak resident memory summed over the process and all its
children (sampled every 0.1 s with psutil):
  1. prepare: `jaxformer prepare --source text:DIR/*.txt --tokenizer char` over the corpus: wall time, MB/s of
     text, peak RSS (the pool's workers included).
  2. train: `jaxformer train --config shakespeare_char_cpu --config.data.prepared=...` for `--steps` steps: wall
     time, the median step time from metrics.jsonl, peak RSS.
  3. the input pipeline alone (in this process, after the runs): batches/s of `data.pipeline.random_windows` over
     the prepared train split through `data.pipeline.iterator` at the CPU recipe's batch (12 x 64) and at the GPU
     recipe's (`shakespeare_char`: 64 x 256), against what the train step consumes: the CPU step measured in (2),
     and the GPU recipe's step at 100% and at 41% MFU of the H100 peak measured in BENCHMARKS.md (659 TFLOP/s;
     41% is what jaxformer's GPT-2 step reached there), tokens/s = MFU * peak / (6 N + 12 L T D); with no grain
     worker process and with `--pipeline_workers` of them.

The corpus: `--gb` GB of text in files of `--file_mb` MB, made of tiny Shakespeare's lines in a fresh random
order per file (`--seed_text`, default ../shared/data/tinyshakespeare.txt), so the character vocabulary is the
recipe's 65. Results go to `--json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time

import numpy as np
import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
H100_PEAK_TFLOPS = 659.0  # BENCHMARKS.md, "GPU: one NVIDIA H100 80GB HBM3": bf16 matmul, same-run measurement
GPT2_H100_MFU = 0.41  # BENCHMARKS.md: jaxformer's GPT-2 small step with cuDNN attention on that H100


def make_corpus(directory: str, gb: float, file_mb: float, seed_text: str) -> dict:
    """`gb` GB of text in files of `file_mb` MB: tiny Shakespeare's lines, shuffled afresh for each file."""
    os.makedirs(directory, exist_ok=True)
    with open(seed_text, encoding="utf-8") as f:
        lines = np.array(f.read().splitlines(keepends=True), dtype=object)
    target, per_file = int(gb * 1e9), int(file_mb * 1e6)
    rng = np.random.default_rng(0)
    written, index = 0, 0
    t0 = time.perf_counter()
    while written < target:
        size = min(per_file, target - written)
        parts, n = [], 0
        while n < size:
            block = "".join(lines[rng.permutation(len(lines))])
            parts.append(block)
            n += len(block)
        text = "".join(parts)[:size]
        text = text[: text.rfind("\n") + 1] or text  # end on a line
        with open(os.path.join(directory, f"part-{index:04d}.txt"), "w", encoding="utf-8") as f:
            f.write(text)
        written += len(text)
        index += 1
    return {"bytes": written, "files": index, "seconds": time.perf_counter() - t0}


def run_measured(args: list[str], *, env: dict | None = None) -> dict:
    """Runs `args`; returns wall seconds, the exit code and the peak RSS of the process tree (bytes)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]
    done = threading.Event()

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total)
            except psutil.Error:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = proc.communicate()[0]
    done.set()
    sampler.join()
    return {
        "seconds": time.perf_counter() - t0,
        "returncode": proc.returncode,
        "peak_rss_bytes": peak[0],
        "output_tail": output[-2000:],
    }


def pipeline_rate(store, batch_size: int, seq_len: int, *, num_workers: int = 0, seconds: float = 5.0) -> float:
    """Batches per second of `random_windows` over `store`, read through grain's iterator (the loop's defaults: 2
    threads, 4 batches ahead; plus `num_workers` grain worker processes)."""
    from jaxformer.data import pipeline

    dataset = pipeline.random_windows(store, batch_size=batch_size, seq_len=seq_len, seed=0)
    batches = pipeline.iterator(dataset, num_workers=num_workers)
    for _ in range(50):  # warm: threads (and workers) started, files opened
        next(batches)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        next(batches)
        n += 1
    rate = n / (time.perf_counter() - t0)
    batches.close()
    return rate


def gpu_recipe_need() -> dict:
    """Tokens/s the GPU recipe's train step would consume on the H100 of BENCHMARKS.md, at 100% and 41% MFU."""
    from jaxformer.configs import load_config
    from jaxformer.training import build_run

    config = load_config("shakespeare_char")
    cfg = build_run(config, data_fields={"vocab_size": 65, "max_len": config.data.seq_len}).model_config
    d, layers, t, v = cfg.d_model, cfg.num_layers, config.data.seq_len, cfg.vocab_size
    per_layer = 4 * d * d + 2 * d * cfg.d_ff  # attention and FFN matrices (biases and norms are negligible)
    n = layers * per_layer + v * d  # non-embedding-position parameters, tied output head
    flops_per_token = 6 * n + 12 * layers * t * d
    peak = H100_PEAK_TFLOPS * 1e12
    return {
        "batch_size": config.batch_size,
        "seq_len": t,
        "params": n,
        "flops_per_token": flops_per_token,
        "tokens_per_s_at_100pct_mfu": peak / flops_per_token,
        f"tokens_per_s_at_{int(GPT2_H100_MFU * 100)}pct_mfu": GPT2_H100_MFU * peak / flops_per_token,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="/tmp/jaxformer_bench_data")
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--file_mb", type=float, default=64.0)
    parser.add_argument("--seed_text", default=os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=0, help="prepare's --workers (0: its default)")
    parser.add_argument("--validation_fraction", type=float, default=0.001)
    parser.add_argument("--pipeline_workers", type=int, nargs="+", default=[0, 2], help="grain worker processes")
    parser.add_argument("--keep", action="store_true", help="keep the corpus and prepared shards afterwards")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    bin_dir = os.path.dirname(sys.executable)
    jaxformer = os.path.join(bin_dir, "jaxformer")
    corpus_dir = os.path.join(args.dir, "text")
    prepared = os.path.join(args.dir, "prepared")
    workdir = os.path.join(args.dir, "run")
    for path in (args.dir,):
        shutil.rmtree(path, ignore_errors=True)
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    import host
    import jax

    result["machine"].update(jax=jax.__version__, host=host.describe())
    print(result["machine"]["host"])

    corpus = make_corpus(corpus_dir, args.gb, args.file_mb, args.seed_text)
    result["corpus"] = corpus
    print(f"corpus: {corpus['bytes'] / 1e9:.2f} GB in {corpus['files']} files ({corpus['seconds']:.0f} s)")

    cmd = [
        jaxformer,
        "prepare",
        f"--source=text:{corpus_dir}/*.txt",
        "--tokenizer=char",
        f"--out={prepared}",
        f"--validation_fraction={args.validation_fraction}",
    ]
    if args.workers:
        cmd.append(f"--workers={args.workers}")
    prep = run_measured(cmd)
    if prep["returncode"]:
        sys.exit(f"prepare failed:\n{prep['output_tail']}")
    prep["text_mb_per_s"] = corpus["bytes"] / 1e6 / prep["seconds"]
    prep["prepared_bytes"] = sum(
        os.path.getsize(os.path.join(prepared, f)) for f in os.listdir(prepared) if f.endswith(".array_record")
    )
    result["prepare"] = prep
    print(
        f"prepare: {prep['seconds']:.1f} s, {prep['text_mb_per_s']:.1f} MB/s, peak RSS "
        f"{prep['peak_rss_bytes'] / 2**30:.2f} GiB, shards {prep['prepared_bytes'] / 1e9:.2f} GB"
    )

    steps = args.steps
    train = run_measured(
        [
            jaxformer,
            "train",
            "--config=shakespeare_char_cpu",
            f"--workdir={workdir}",
            f"--config.data.prepared={prepared}",
            f"--config.num_steps={steps}",
            f"--config.warmup_steps={min(100, steps // 2)}",
            f"--config.log_every={min(50, steps)}",
            f"--config.eval_every={steps}",
            f"--config.checkpoint_every={steps}",
            "--config.sample.num_tokens=100",
        ]
    )
    if train["returncode"]:
        sys.exit(f"train failed:\n{train['output_tail']}")
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    step_ms = statistics.median(r["step_ms"] for r in rows if r.get("step_ms"))
    train.update(step_ms=step_ms, val_loss=rows[-1]["val_loss"], steps=steps)
    result["train"] = train
    print(
        f"train: {train['seconds']:.1f} s for {steps} steps, median step {step_ms:.1f} ms, peak RSS "
        f"{train['peak_rss_bytes'] / 2**30:.2f} GiB, val_loss {train['val_loss']:.3f}"
    )

    from jaxformer import data

    store = data.open_prepared(prepared).split("train")
    from jaxformer.configs import load_config

    cpu = load_config("shakespeare_char_cpu")
    gpu = gpu_recipe_need()
    cpu_tokens = cpu.batch_size * cpu.data.seq_len
    gpu_tokens = gpu["batch_size"] * gpu["seq_len"]
    result["pipeline"] = {}
    for workers in args.pipeline_workers:
        cpu_rate = pipeline_rate(store, cpu.batch_size, cpu.data.seq_len, num_workers=workers)
        gpu_rate = pipeline_rate(store, gpu["batch_size"], gpu["seq_len"], num_workers=workers)
        result["pipeline"][f"workers_{workers}"] = {
            "cpu_recipe": {
                "batch": [cpu.batch_size, cpu.data.seq_len],
                "batches_per_s": cpu_rate,
                "tokens_per_s": cpu_rate * cpu_tokens,
                "train_step_batches_per_s": 1e3 / step_ms,
                "ratio_to_train_step": cpu_rate * step_ms / 1e3,
            },
            "gpu_recipe": {
                "batch": [gpu["batch_size"], gpu["seq_len"]],
                "batches_per_s": gpu_rate,
                "tokens_per_s": gpu_rate * gpu_tokens,
                **gpu,
                "ratio_to_100pct_mfu": gpu_rate * gpu_tokens / gpu["tokens_per_s_at_100pct_mfu"],
                "ratio_to_41pct_mfu": gpu_rate * gpu_tokens / gpu["tokens_per_s_at_41pct_mfu"],
            },
        }
        p = result["pipeline"][f"workers_{workers}"]
        for name, r in p.items():
            rate = f"{r['batches_per_s']:.0f} batches/s, {r['tokens_per_s']:,.0f} tok/s"
            print(f"pipeline, {workers} grain workers ({name}, batch {r['batch']}): {rate}")
        print(
            f"  CPU recipe: {p['cpu_recipe']['ratio_to_train_step']:.0f}x the train step's batches/s; GPU recipe: "
            f"{p['gpu_recipe']['ratio_to_100pct_mfu']:.1f}x its need at 100% MFU, "
            f"{p['gpu_recipe']['ratio_to_41pct_mfu']:.1f}x at 41%"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
