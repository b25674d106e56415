"""Decoding speed against the peers: `jaxformer.decoding.generate` vs `transformers`' `generate`, in one run.

    python experiments/bench_decode_hf.py --json experiments/results/decode_hf_cpu.json   # ~15 min on a 2-core CPU
    python experiments/bench_decode_hf.py --smoke                                        # tiny shapes, seconds

Needs the optional extra `pip install -e '.[hf]'` (transformers, torch). Float32 on CPU.

Models (random weights, seeded): each is built in `transformers`, written with `save_pretrained` to a temporary
directory and loaded by jaxformer with `jaxformer.pretrained.from_pretrained`, so both libraries run the same
weights and greedy decoding must give the same tokens (checked; a difference is reported with its first position
and the logit gap there, not hidden).

- gpt2:  `GPT2LMHeadModel(GPT2Config())`: GPT-2 small, 12 layers, d 768, 12 heads, vocab 50257, learned positions.
- llama: `LlamaForCausalLM(LlamaConfig(...))`: 12 layers, d 768, 12 heads with 4 KV heads (GQA), SwiGLU d_ff 2048,
  RMSNorm, RoPE, vocab 32000, untied head: about GPT-2 small's parameter count (~124M).

Decoding: greedy (jaxformer temperature=0; transformers do_sample=False) and sampling (temperature 0.8, top-k 50 in
both; transformers do_sample=True, top_p=1.0); prompt of 32 random tokens, 128 new tokens, no end-of-sequence
token (both always generate all 128), batch 1 and 8. transformers runs under `torch.inference_mode()` with
`use_cache=True` (its default dynamic KV cache) and `torch.set_num_threads(os.cpu_count())`.

Timing: for each setting, one warm-up call per library and length (excluded; jaxformer's first call of a shape
compiles, reported as "first call"), then `--rounds` rounds that alternate the libraries (jaxformer first in even
rounds, transformers first in odd ones, so drift of the machine's speed hits both), each timing
`generate(max_new_tokens=1)` (the first-token latency: the prompt's forward plus choosing one token) and
`generate(max_new_tokens=128)`. Medians over rounds. Per-token decode time = (full - first) / 127; "prefill tok/s"
is B * prompt / first-token latency, "decode tok/s" is B / per-token time, "total tok/s" is B * 128 / full call.
Ratios are jaxformer / transformers in tokens/s (> 1: jaxformer is faster).

Measure on a quiet machine: the 1-minute load average is printed before and after. With other processes on the
cores, torch with every core as a thread slows down far more than jaxformer (measured on a shared 2-core VM:
transformers 5x slower per token with 2 threads than with 1), which would inflate the ratios.

Note: jaxformer's `generate(max_new_tokens=n)` runs the prompt and then n cached steps (the model also runs on the
last sampled token, whose logits are discarded), transformers' runs the prompt and n - 1 steps; the per-token time
is unaffected (both difference 127 steps), the first-token latency of jaxformer includes that one extra step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import host
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from jaxformer import pretrained
from jaxformer.decoding import generate

FULL = {
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12, n_inner=None, vocab_size=50257, n_positions=1024),
    "llama": dict(
        num_hidden_layers=12,
        hidden_size=768,
        num_attention_heads=12,
        num_key_value_heads=4,
        intermediate_size=2048,
        vocab_size=32000,
        max_position_embeddings=2048,
    ),
}
SMOKE = {
    "gpt2": dict(n_layer=2, n_embd=64, n_head=4, n_inner=None, vocab_size=256, n_positions=64),
    "llama": dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=256,
        max_position_embeddings=64,
    ),
}


def build_hf(name: str, shape: dict, seed: int) -> torch.nn.Module:
    """A random-init transformers model (seeded), float32, eval, with no end-of-sequence token."""
    torch.manual_seed(seed)
    if name == "gpt2":
        cfg = GPT2Config(**shape, activation_function="gelu_new", bos_token_id=None, eos_token_id=None)
        model = GPT2LMHeadModel(cfg)
    elif name == "llama":
        cfg = LlamaConfig(
            **shape,
            rms_norm_eps=1e-5,
            hidden_act="silu",
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
        model = LlamaForCausalLM(cfg)
    else:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(FULL)}")
    model = model.to(torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights once


def hf_generate(model, prompt: torch.Tensor, n: int, sampling: dict | None, seed: int) -> torch.Tensor:
    kwargs = dict(do_sample=False) if sampling is None else dict(do_sample=True, top_p=1.0, **sampling)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=n,
            min_new_tokens=n,
            use_cache=True,
            pad_token_id=0,
            **kwargs,
        )
    return out[:, prompt.shape[1] :]


def jf_generate(model, prompt: jax.Array, n: int, sampling: dict | None, seed: int) -> jax.Array:
    settings = dict(temperature=0.0) if sampling is None else sampling
    return jax.block_until_ready(generate(model, prompt, n, rng=jax.random.key(seed), **settings))


def clock(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def greedy_difference(hf_model, jf_model, prompt: np.ndarray, hf_tokens: np.ndarray, jf_tokens: np.ndarray) -> dict:
    """Where greedy tokens first differ (row, position among the new tokens) and each library's logit gap there
    between its own choice and the other's (both > 0 and tiny: a float near-tie; large: a real disagreement)."""
    differ = hf_tokens != jf_tokens
    rows, positions = np.nonzero(differ)
    order = np.lexsort((rows, positions))
    row, pos = int(rows[order[0]]), int(positions[order[0]])
    prefix = np.concatenate([prompt[row], hf_tokens[row, :pos]])[None]  # identical in both up to pos
    hf_tok, jf_tok = int(hf_tokens[row, pos]), int(jf_tokens[row, pos])
    with torch.inference_mode():
        hf_logits = hf_model(torch.from_numpy(prefix).long()).logits[0, -1].double().numpy()
    jf_logits = np.asarray(jf_model(jnp.asarray(prefix, jnp.int32))[0, -1], np.float64)
    return dict(
        rows_differing=int(differ.any(axis=1).sum()),
        first_row=row,
        first_position=pos,
        transformers_token=hf_tok,
        jaxformer_token=jf_tok,
        transformers_logit_gap=float(hf_logits[hf_tok] - hf_logits[jf_tok]),
        jaxformer_logit_gap=float(jf_logits[jf_tok] - jf_logits[hf_tok]),
        max_abs_logit_difference=float(np.abs(hf_logits - jf_logits).max()),
    )


def bench_setting(hf_model, jf_model, name: str, mode: str, sampling, B: int, prompt_len: int, new: int, rounds: int):
    vocab = jf_model.config.vocab_size
    prompt_np = np.random.default_rng(1000 + B).integers(0, vocab, (B, prompt_len)).astype(np.int32)
    prompt_t, prompt_j = torch.from_numpy(prompt_np).long(), jnp.asarray(prompt_np)
    libs = {
        "jaxformer": lambda n, seed: np.asarray(jf_generate(jf_model, prompt_j, n, sampling, seed)),
        "transformers": lambda n, seed: hf_generate(hf_model, prompt_t, n, sampling, seed).numpy(),
    }
    first_call, tokens = {}, {}
    for lib, fn in libs.items():  # warm-up: jaxformer compiles one program per length here
        first_call[lib + "_1"], _ = clock(fn, 1, 0)
        first_call[lib + "_full"], tokens[lib] = clock(fn, new, 0)
    times = {f"{lib}_{n}": [] for lib in libs for n in ("1", "full")}
    for r in range(rounds):
        for lib in list(libs) if r % 2 == 0 else list(libs)[::-1]:
            times[lib + "_1"].append(clock(libs[lib], 1, r + 1)[0])
            times[lib + "_full"].append(clock(libs[lib], new, r + 1)[0])
    med = {key: statistics.median(values) for key, values in times.items()}
    row = dict(model=name, mode=mode, batch=B, prompt=prompt_len, new_tokens=new, rounds=rounds)
    for lib in libs:
        first, full = med[lib + "_1"], med[lib + "_full"]
        step = (full - first) / (new - 1) if new > 1 else float("nan")
        row[lib] = dict(
            first_token_s=first,
            full_s=full,
            decode_step_s=step,
            prefill_tokens_per_s=B * prompt_len / first,
            decode_tokens_per_s=B / step,
            total_tokens_per_s=B * new / full,
            first_call_1_s=first_call[lib + "_1"],
            first_call_full_s=first_call[lib + "_full"],
            times_1_s=times[lib + "_1"],
            times_full_s=times[lib + "_full"],
        )
    jf, hf = row["jaxformer"], row["transformers"]
    row["ratio"] = {k: jf[k] / hf[k] for k in ("prefill_tokens_per_s", "decode_tokens_per_s", "total_tokens_per_s")}
    row["distinct_tokens"] = len(np.unique(tokens["jaxformer"]))  # of B * new: a collapsed output checks less
    if sampling is None:
        row["same_tokens"] = bool(np.array_equal(tokens["jaxformer"], tokens["transformers"]))
        if not row["same_tokens"]:
            hf_tokens, jf_tokens = tokens["transformers"], tokens["jaxformer"]
            row["difference"] = greedy_difference(hf_model, jf_model, prompt_np, hf_tokens, jf_tokens)
    else:
        row["same_tokens"] = None  # sampled tokens come from different random generators: speed only
    return row


def run(models, modes, batches, prompt_len: int, new: int, rounds: int, smoke: bool, sampling: dict) -> list[dict]:
    rows = []
    for i, name in enumerate(models):
        hf_model = build_hf(name, (SMOKE if smoke else FULL)[name], seed=i)
        with tempfile.TemporaryDirectory() as tmp:
            hf_model.save_pretrained(tmp)
            start = time.perf_counter()
            jf_model = pretrained.from_pretrained(tmp)
            load_s = time.perf_counter() - start
        print(f"# {name}: {n_params(hf_model) / 1e6:.1f}M parameters, jaxformer load {load_s:.1f} s", flush=True)
        for mode in modes:
            for B in batches:
                row = bench_setting(
                    hf_model, jf_model, name, mode, None if mode == "greedy" else sampling, B, prompt_len, new, rounds
                )
                row["params_m"] = n_params(hf_model) / 1e6
                rows.append(row)
                brief = {k: v for k, v in row.items() if k not in ("jaxformer", "transformers")}
                print(json.dumps(brief), flush=True)
        del hf_model, jf_model
    return rows


def fmt_ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f} ms"


def table(rows: list[dict]) -> str:
    lines = [
        "| model | decoding | batch | first token jf / hf | prefill ratio | per token jf / hf | decode tok/s jf / hf "
        "| decode ratio | total tok/s jf / hf | total ratio | same greedy tokens |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        jf, hf, ratio = r["jaxformer"], r["transformers"], r["ratio"]
        same = {True: "yes", False: "**NO**", None: "n/a (sampled)"}[r["same_tokens"]]
        if r["same_tokens"] is not None:
            same += f" ({r['distinct_tokens']} distinct ids)"
        if r.get("difference"):
            d = r["difference"]
            same += f" (from token {d['first_position']}, logit gap {d['transformers_logit_gap']:.2e})"
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['batch']} | {fmt_ms(jf['first_token_s'])} / "
            f"{fmt_ms(hf['first_token_s'])} | {ratio['prefill_tokens_per_s']:.2f}x | {fmt_ms(jf['decode_step_s'])} / "
            f"{fmt_ms(hf['decode_step_s'])} | {jf['decode_tokens_per_s']:.0f} / {hf['decode_tokens_per_s']:.0f} | "
            f"{ratio['decode_tokens_per_s']:.2f}x | {jf['total_tokens_per_s']:.0f} / {hf['total_tokens_per_s']:.0f} | "
            f"**{ratio['total_tokens_per_s']:.2f}x** | {same} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict], goal: float = 1.5) -> str:
    """One line on the >= 1.5x goal (total tokens/s) and one on the greedy token check."""
    ratios = [(r["ratio"]["total_tokens_per_s"], f"{r['model']} {r['mode']} batch {r['batch']}") for r in rows]
    low = min(ratios)
    greedy = [r for r in rows if r["same_tokens"] is not None]
    differ = [f"{r['model']} batch {r['batch']}" for r in greedy if not r["same_tokens"]]
    return (
        f"Total tokens/s, jaxformer / transformers: >= {goal}x in {sum(x >= goal for x, _ in ratios)} of "
        f"{len(ratios)} settings; lowest {low[0]:.2f}x ({low[1]}).\n"
        f"Greedy tokens identical in {len(greedy) - len(differ)} of {len(greedy)} greedy settings"
        + (f"; different in: {', '.join(differ)}." if differ else ".")
    )


def warmup_table(rows: list[dict]) -> str:
    lines = [
        "| model | decoding | batch | jaxformer first call, 1 / all tokens | of which compiling (first - median) "
        "| transformers first call, 1 / all tokens |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        jf, hf = r["jaxformer"], r["transformers"]
        compile_1, compile_full = jf["first_call_1_s"] - jf["first_token_s"], jf["first_call_full_s"] - jf["full_s"]
        lines.append(
            f"| {r['model']} | {r['mode']} | {r['batch']} "
            f"| {jf['first_call_1_s']:.2f} / {jf['first_call_full_s']:.2f} s | {compile_1:.2f} / {compile_full:.2f} s "
            f"| {hf['first_call_1_s']:.2f} / {hf['first_call_full_s']:.2f} s |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models and lengths: checks that the script runs")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--models", default="gpt2,llama", help="comma-separated: gpt2, llama")
    parser.add_argument("--modes", default="greedy,sample", help="comma-separated: greedy, sample")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8; smoke 1,2)")
    parser.add_argument("--prompt_len", type=int, default=None, help="prompt tokens (default 32; smoke 8)")
    parser.add_argument("--new_tokens", type=int, default=None, help="generated tokens (default 128; smoke 8)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per setting (default 5; smoke 1)")
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    parser.add_argument("--top_k", type=int, default=50, help="sampling top-k")
    parser.add_argument(
        "--torch_threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: every CPU)"
    )
    args = parser.parse_args()
    pick = lambda value, full, smoke: value if value is not None else (smoke if args.smoke else full)
    batches = [int(b) for b in pick(args.batches, "1,8", "1,2").split(",")]
    prompt_len, new = pick(args.prompt_len, 32, 8), pick(args.new_tokens, 128, 8)
    rounds = pick(args.rounds, 5, 1)
    models, modes = args.models.split(","), args.modes.split(",")
    if not set(modes) <= {"greedy", "sample"}:
        parser.error(f"--modes: greedy and/or sample; got {args.modes}")
    if new < 2:
        parser.error("--new_tokens must be >= 2 (the per-token time is (full - first token) / (new_tokens - 1))")
    torch.set_num_threads(args.torch_threads)
    transformers.utils.logging.disable_progress_bar()
    sampling = dict(temperature=args.temperature, top_k=args.top_k)
    load_before = os.getloadavg()
    rows = run(models, modes, batches, prompt_len, new, rounds, args.smoke, sampling)
    load_after = os.getloadavg()
    machine = (
        f"{host.describe()} (backend {jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}; 1-minute load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after"
    )
    print(
        f"\n{machine}\nprompt {prompt_len}, {new} new tokens, float32, medians of {rounds} alternating rounds; "
        f"sampling: temperature {args.temperature}, top-k {args.top_k}; ratios: jaxformer / transformers tokens/s\n"
    )
    print(table(rows))
    print(f"\n{summary(rows)}")
    print("\nFirst calls (excluded above):\n")
    print(warmup_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            meta = dict(machine=machine, prompt=prompt_len, new_tokens=new, rounds=rounds, sampling=sampling)
            json.dump(dict(meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
