"""LoRA against full fine-tuning of the same model on CPU: step time and the training state's memory.

    python experiments/bench_lora.py --json experiments/results/lora_cpu.json      # about 4 minutes
    python experiments/bench_lora.py --smoke                                       # tiny, seconds

A Llama-shaped model of about 100M parameters (vocab 32000 untied, d_model 768, 8 layers, 12 query heads and 4
key/value heads of 64, SwiGLU width 2048, RoPE, RMSNorm; 99.5M parameters), float32, the real jaxformer train step
(`training.make_train_step`: AdamW with weight decay, clipping at 1.0, the warmup-cosine schedule, the state
donated) on random tokens, batch 4 x 256, two ways:

  - full: every parameter trains (`TrainState`);
  - lora: rank 8, alpha 16, every attention and FFN weight ("all-linear"); the base is frozen (`LoRATrainState`:
    only the adapters have gradients and AdamW moments).

Reported per setting, from the same process, in alternating rounds (this machine's speed drifts):
  - step_s: the median step time;
  - state_bytes: the bytes of the TrainState the step takes and returns (parameters, optimizer state, RNG state);
  - temp_bytes: XLA's temporaries for the compiled step (gradients, activations, updates), from its memory
    analysis;
  - peak_bytes = state_bytes + temp_bytes: what the step needs at once (its arguments are donated and reused for
    its outputs).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import numpy as np
from flax import nnx

from jaxformer import lora
from jaxformer.models import GPT, ModelConfig
from jaxformer.training import create_train_state, make_optimizer, make_schedule, make_train_step
from jaxformer.training.tasks.lm import lm_loss

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # experiments/ is not a package
import host

LLAMA_100M = dict(
    vocab_size=32000,
    num_layers=8,
    d_model=768,
    num_heads=12,
    num_kv_heads=4,
    d_ff=2048,
    max_len=256,
    positional="rope",
    rope_interleaved=False,
    norm="rmsnorm",
    activation="swiglu",
    tie_embeddings=False,
    qkv_bias=False,
    out_bias=False,
    mlp_bias=False,
    dropout_rate=0.0,
)
SMOKE = dict(LLAMA_100M, vocab_size=256, num_layers=2, d_model=64, num_heads=4, num_kv_heads=2, d_ff=128, max_len=32)


def setting(cfg: ModelConfig, use_lora: bool, batch_size: int, seq_len: int):
    """(train step compiled for it, initial state, batch maker) of full fine-tuning or LoRA."""
    model = GPT(cfg, rngs=nnx.Rngs(0))
    if use_lora:
        lora.add_adapters(model, rank=8, alpha=16, targets="all-linear", rngs=nnx.Rngs(1))
    schedule = make_schedule("warmup_cosine", learning_rate=1e-4, num_steps=1000, warmup_steps=10)
    optimizer = make_optimizer(schedule, weight_decay=0.01, clip_norm=1.0)
    graphs, state = create_train_state(model, optimizer)
    step = make_train_step(graphs, optimizer, schedule, lm_loss)
    rng = np.random.default_rng(0)

    def batch():
        tokens = rng.integers(0, cfg.vocab_size, size=(batch_size, seq_len + 1)).astype(np.int32)
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

    compiled = step.lower(state, batch()).compile()
    return compiled, state, batch


def tree_bytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype"))


def count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree) if hasattr(x, "size"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and setting")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    cfg = ModelConfig(**(SMOKE if args.smoke else LLAMA_100M))
    seq_len = min(args.seq_len, cfg.max_len)
    cpu = host.cpu_info()
    machine = f"{cpu['model']}, {host.vector_extensions(cpu['flags'])}, {os.cpu_count()} CPUs, jax {jax.__version__}"
    print(machine)

    runs = {}
    for name in ("full", "lora"):
        start = time.perf_counter()
        compiled, state, batch = setting(cfg, name == "lora", args.batch_size, seq_len)
        memory = compiled.memory_analysis()
        runs[name] = {
            "compiled": compiled,
            "state": state,
            "batch": batch,
            "compile_s": time.perf_counter() - start,
            "parameters": count(state.params) + sum(count(f) for f in state.frozen_states()),
            "trained_parameters": count(state.params),
            "optimizer_bytes": tree_bytes(state.opt_state),
            "state_bytes": tree_bytes(state),
            "temp_bytes": int(memory.temp_size_in_bytes),
            "times": [],
            "losses": [],
        }
        for _ in range(2):  # warm up
            runs[name]["state"], metrics = compiled(runs[name]["state"], batch())
        jax.block_until_ready(metrics)
    for _ in range(args.rounds):
        for run in runs.values():
            for _ in range(args.steps):
                b = run["batch"]()
                start = time.perf_counter()
                run["state"], metrics = run["compiled"](run["state"], b)
                jax.block_until_ready(metrics)
                run["times"].append(time.perf_counter() - start)
                run["losses"].append(float(metrics["loss"]))

    mib = lambda n: f"{n / 2**20:,.0f} MiB"
    rows = {}
    print(f"\nbatch {args.batch_size} x {seq_len}, {args.rounds} rounds x {args.steps} steps each")
    print("| setting | parameters (trained) | step s | state | XLA temporaries | state + temporaries |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, run in runs.items():
        rows[name] = {k: v for k, v in run.items() if k not in ("compiled", "state", "batch")}
        rows[name]["step_s"] = statistics.median(run["times"])
        rows[name]["peak_bytes"] = run["state_bytes"] + run["temp_bytes"]
        print(
            f"| {name} | {run['parameters'] / 1e6:.1f}M ({run['trained_parameters'] / 1e6:.2f}M) | "
            f"{rows[name]['step_s']:.3f} | {mib(run['state_bytes'])} | {mib(run['temp_bytes'])} | "
            f"{mib(rows[name]['peak_bytes'])} |"
        )
    full, low = rows["full"], rows["lora"]
    ratios = {
        "step_time": low["step_s"] / full["step_s"],
        "state": low["state_bytes"] / full["state_bytes"],
        "peak": low["peak_bytes"] / full["peak_bytes"],
    }
    print(
        f"\nlora / full: step time {ratios['step_time']:.2f}x, state {ratios['state']:.2f}x, "
        f"state + temporaries {ratios['peak']:.2f}x"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "cpu": cpu, "args": vars(args), "rows": rows, "ratios": ratios}, f, indent=1)


if __name__ == "__main__":
    main()
