"""The train step of jaxformer against PyTorch's on nanoGPT's CPU recipe (`shakespeare_char_cpu`: 4 layers, 4 heads,
d 128, context 64, batch 12), in one process, interleaved in alternating rounds (this machine's speed drifts by
+-15% over minutes).

    python experiments/bench_step_vs_pytorch.py            # ~3 minutes on 2 cores
    python experiments/bench_step_vs_pytorch.py --smoke    # tiny sizes, under a minute

Timed, each from the same initial parameters (jaxformer's, copied into torch: `experiments/torch_reference.py`)
through the same sequence of batches (`data.pipeline.random_windows`), each implementation advancing its own state:
  jaxformer loop step       the training loop's body (jaxformer/training/loop.py): next(grain iterator) ->
                            StepRunner.train_step -> jax.device_get of loss / nll / grad_norm -> float()
  jaxformer prepared batch  StepRunner.train_step on a host batch already taken from the iterator, until the
                            loss is ready (no batching, no metric fetch)
  torch eager               nanoGPT's step: the batch (NumPy, synchronous), zero_grad, forward + loss, backward,
                            clip_grad_norm_, AdamW.step, LambdaLR.step, loss.item()
  torch.compile             the same with torch.compile(model) (nanoGPT's --compile: the model, not the optimizer)
Each round runs `steps / rounds` steps of every implementation, in an order rotated every round; reported: the
median per step over all rounds, and ratios both from those medians and as the median of the per-round ratios.
The losses of the implementations are compared step by step (same init, same data: they should agree closely).
The record names the CPU and its vector extensions (experiments/host.py): ratios against PyTorch differ with them.

Each implementation's turn in a round starts with 2 untimed steps: the other library's worker threads may still
spin, this one's may have gone to sleep. On a loaded machine torch's two OpenMP threads stall each other (every
parallel region waits for both to be scheduled): a torch p90 far above its median says the machine is not quiet.

The other studies of the recipe against PyTorch: bench_run_vs_pytorch.py (the whole commands), profile_loop_step.py
(where a loop step's time goes), bench_bf16_cpu.py (bfloat16 compute).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import recipe_bench as rb
import torch_reference as ref
from recipe_bench import COMPILED, EAGER, LOOP, PREPARED


def steps(args, config, result: dict) -> None:
    """The interleaved step benchmark (the module doc), into `result`."""
    jx = rb.Jaxformer(config)
    meta = ref.recipe_meta(config, jx.model_cfg, jx.task.tokenizer)
    meta["decayed"] = jx.decayed
    train_tokens = np.asarray(jx.task.train_tokens.tokens)
    eager = rb.Torch(meta, jx.initial_arrays, train_tokens, compile=False)
    check = ref.random_windows(train_tokens, config.batch_size, config.data.seq_len, config.seed, 0)
    forward = float(np.max(np.abs(ref_logits(eager.model, check["inputs"]) - jx.initial_logits(check["inputs"]))))
    assert forward < 1e-4, f"torch and jaxformer logits differ by {forward:.2e}"
    result["forward_max_abs_diff"] = forward
    print(f"{config.name}: initial logits of torch and jaxformer agree to {forward:.1e} (max abs difference)")
    impls = {LOOP: jx.loop_step, PREPARED: jx.prepared_step, EAGER: eager.step}
    compiled = None
    if not args.no_compile:
        compiled = rb.Torch(meta, jx.initial_arrays, train_tokens, compile=True)
        impls[COMPILED] = compiled.step
    t0 = time.perf_counter()
    timed = rb.interleaved(impls, steps=args.steps, rounds=args.rounds, warmup=args.warmup)
    result["timing_seconds"] = time.perf_counter() - t0
    pairs = [(LOOP, EAGER), (LOOP, COMPILED), (PREPARED, EAGER), (PREPARED, COMPILED), (COMPILED, EAGER)]
    result.update(rb.summarize_times(timed, pairs))
    result["loop_parts_ms"] = {k: 1e3 * statistics.median(v) for k, v in jx.parts.items()}
    result["losses"] = {f"jaxformer vs {EAGER}": rb.loss_agreement(jx.losses, eager.losses)}
    if compiled is not None:
        result["losses"][f"jaxformer vs {COMPILED}"] = rb.loss_agreement(jx.losses, compiled.losses)
        result["losses"][f"{EAGER} vs {COMPILED}"] = rb.loss_agreement(eager.losses, compiled.losses)
    print_steps(result, config)
    jx.close()


def ref_logits(model, inputs: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(inputs).long())
    model.train()
    return logits.numpy()


def print_steps(result: dict, config) -> None:
    per = result["per_step_ms"]
    print(
        f"\nTrain step, {config.batch_size} x {config.data.seq_len} tokens, median of "
        f"{per[LOOP]['steps']} steps per implementation in {len(per[LOOP]['round_medians'])} interleaved rounds "
        f"({result['machine']['host']}):"
    )
    print("| implementation | ms / step | p10 | p90 | per-round medians |")
    print("|---|---:|---:|---:|---|")
    for name, p in per.items():
        rounds = ", ".join(f"{x:.1f}" for x in p["round_medians"])
        print(f"| {name} | {p['median']:.2f} | {p['p10']:.2f} | {p['p90']:.2f} | {rounds} |")
    print("\n| ratio | pooled medians | median of per-round ratios (min-max) |")
    print("|---|---:|---:|")
    for name, r in result["ratios"].items():
        spread = f"{r['rounds_min']:.3f}-{r['rounds_max']:.3f}"
        print(f"| {name} | {r['pooled']:.3f} | {r['median_of_rounds']:.3f} ({spread}) |")
    parts = result["loop_parts_ms"]
    print(
        f"\njaxformer loop step parts (medians, no profiler): next(batches) {parts['batch']:.2f} ms, "
        f"train_step call {parts['step_call']:.2f} ms, device_get + float {parts['fetch']:.2f} ms (waits for the step)"
    )
    for name, agreement in result["losses"].items():
        first = next(v for k, v in agreement.items() if k.startswith("max_abs_diff_first"))
        print(
            f"losses, {name}: max |difference| {first:.2e} over the first 50 steps, "
            f"{agreement['max_abs_diff_all']:.2e} over {agreement['steps_compared']} steps; at steps "
            f"{agreement['at_steps']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    rb.add_recipe_arguments(parser)
    parser.add_argument("--steps", type=int, default=300, help="timed steps per implementation, over all rounds")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each implementation first")
    parser.add_argument("--no_compile", action="store_true", help="leave torch.compile out")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.rounds, args.warmup = 8, 2, 2
    import torch

    torch.set_num_threads(args.threads)
    config = rb.recipe_config(args)
    result = rb.record(config)
    steps(args, config, result)
    rb.write_json(args.json, result)


if __name__ == "__main__":
    main()
