"""Decoding benchmark: KV-cached `jaxformer.decoding.generate` against recomputing the full forward every step.

    python experiments/bench_decode.py             # batch 1 and 8, 512 new tokens; a few minutes on a 2-core CPU
    python experiments/bench_decode.py --smoke     # tiny sizes, seconds (checks the script still works)

Model: the `gpt2-tiny` variant (L=2, D=64, N=4, F=256, V=256) with max_len raised to hold prompt + new tokens,
greedy (temperature 0), prompt of 16 tokens.

- cached: `generate`: one prefill call, then one KV-cached step per token inside a `lax.while_loop`.
- recompute: the same jitted `while_loop`, but each step runs the model over the whole fixed-size buffer
  `[B, prompt + new]` (causal, so the future slots do not matter) and reads the logits at the current position:
  what decoding costs without a cache when shapes must stay static under jit.

Both produce the same tokens (checked). Times are medians over rounds after a compile-and-warm-up call; the first
token's latency is `generate(..., max_new_tokens=1)`: prefill plus one sampling step.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time

import host
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformer.decoding import generate
from jaxformer.models import GPT, ModelConfig


@functools.partial(jax.jit, static_argnames=("graphdef", "new_tokens"))
def generate_by_recomputing(graphdef, state, prompt, *, new_tokens):
    """Greedy decoding without a cache: a full forward over the `[B, P + new_tokens]` buffer per new token."""
    model = nnx.merge(graphdef, state)
    model.eval()
    B, P = prompt.shape
    buffer = jnp.concatenate([prompt, jnp.zeros((B, new_tokens), prompt.dtype)], axis=1)

    def body(i, buffer):
        logits = model(buffer)[:, P + i - 1]
        return jax.lax.dynamic_update_slice_in_dim(
            buffer, jnp.argmax(logits, -1)[:, None].astype(buffer.dtype), P + i, 1
        )

    return jax.lax.fori_loop(0, new_tokens, body, buffer)[:, P:]


def timed(fn, rounds: int, *args, **kwargs) -> tuple[float, list[float]]:
    """(compile + first call seconds, list of per-round seconds) for `fn(*args, **kwargs)`."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args, **kwargs))
    first = time.perf_counter() - start
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args, **kwargs))
        times.append(time.perf_counter() - start)
    return first, times


def run(batch_sizes, new_tokens: int, prompt_len: int, rounds: int) -> list[dict]:
    cfg = ModelConfig.variant("gpt2-tiny", max_len=prompt_len + new_tokens, dropout_rate=0.0)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    rows = []
    for B in batch_sizes:
        prompt = jax.random.randint(jax.random.key(B), (B, prompt_len), 0, cfg.vocab_size, jnp.int32)
        key = jax.random.key(0)
        cached = generate(model, prompt, new_tokens, rng=key, temperature=0.0)
        recomputed = generate_by_recomputing(graphdef, state, prompt, new_tokens=new_tokens)
        same = bool(np.array_equal(np.asarray(cached), np.asarray(recomputed)))
        greedy = dict(rng=key, temperature=0.0)
        _, first_token = timed(generate, rounds, model, prompt, 1, **greedy)
        compile_cached, t_cached = timed(generate, rounds, model, prompt, new_tokens, **greedy)
        compile_recompute, t_recompute = timed(
            generate_by_recomputing, rounds, graphdef, state, prompt, new_tokens=new_tokens
        )
        cached_s, recompute_s = statistics.median(t_cached), statistics.median(t_recompute)
        rows.append(
            dict(
                batch=B,
                prompt=prompt_len,
                new_tokens=new_tokens,
                same_tokens=same,
                first_token_ms=1e3 * statistics.median(first_token),
                cached_s=cached_s,
                recompute_s=recompute_s,
                cached_tokens_per_s=B * new_tokens / cached_s,
                recompute_tokens_per_s=B * new_tokens / recompute_s,
                speedup=recompute_s / cached_s,
                first_call_cached_s=compile_cached,
                first_call_recompute_s=compile_recompute,
            )
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| batch | new tokens | first token | cached | recompute | cached tok/s | recompute tok/s | speedup "
        "| same tokens |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['new_tokens']} | {r['first_token_ms']:.1f} ms | {r['cached_s']:.3f} s | "
            f"{r['recompute_s']:.2f} s | {r['cached_tokens_per_s']:.0f} | {r['recompute_tokens_per_s']:.0f} | "
            f"**{r['speedup']:.1f}x** | {'yes' if r['same_tokens'] else 'NO'} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks that the script runs")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    if args.smoke:
        rows = run([1, 2], new_tokens=8, prompt_len=4, rounds=1)
    else:
        rows = run([1, 8], new_tokens=512, prompt_len=16, rounds=5)
    print(f"\n{host.describe()}, backend {jax.default_backend()}\n")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            record = {"jax": jax.__version__, "host": host.describe(), "backend": jax.default_backend(), "rows": rows}
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
