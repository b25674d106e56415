"""How full are packed SFT rows? `data.pipeline.pack_rows` (best-fit decreasing) against the simpler layouts.

    python experiments/bench_packing.py                 # a few seconds
    python experiments/bench_packing.py --json out.json

For each length mix and row length T it prints the share of the row slots that hold real tokens (the rest is
padding) for
  one_per_row   every conversation alone in its row, padded to T (what an unpacked trainer does);
  first_fit     conversations kept in arrival order, each into the first row with room (greedy, no sorting);
  best_fit_dec  `pack_rows`: longest first, each into the fullest row that still fits it (what `task="sft"` uses);
and the rows each needs, and pack_rows' time. The acceptance is >= 90% real tokens on a realistic mix.

The mixes (token counts of one conversation after the chat template, clipped to [16, T]; no dataset can be
downloaded here, so the shapes are stated, not sampled from a corpus):
  chat        log-normal, median 600 tokens, sigma 1.0 (multi-turn assistant data: a long right tail);
  instruct    log-normal, median 160 tokens, sigma 0.7 (single-turn instruction pairs);
  mixed       70% instruct + 30% chat;
  synthetic   the `chat_sft_cpu` recipe's own conversations (`synthetic_chat` "strings" in byte-level ChatML),
              measured by encoding them (T = 128, the recipe's row).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from jaxformer.data import chat, pipeline, synthetic_chat

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import describe

N = 20_000


def mixes(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    chat_lengths = rng.lognormal(np.log(600), 1.0, size=N)
    instruct = rng.lognormal(np.log(160), 0.7, size=N)
    mixed = np.where(rng.random(N) < 0.7, rng.lognormal(np.log(160), 0.7, size=N), rng.lognormal(np.log(600), 1.0, N))
    return {"chat": chat_lengths, "instruct": instruct, "mixed": mixed}


def first_fit(sizes: np.ndarray, capacity: int) -> int:
    """Rows used by first fit in arrival order (the open rows are scanned in order)."""
    rooms: list[int] = []
    for size in sizes:
        for r, room in enumerate(rooms):
            if room >= size:
                rooms[r] -= size
                break
        else:
            rooms.append(capacity - int(size))
    return len(rooms)


def measure(name: str, sizes: np.ndarray, capacity: int) -> dict:
    sizes = np.asarray(sizes, np.int64)
    t0 = time.perf_counter()
    rows = pipeline.pack_rows(sizes, capacity, seed=0)
    seconds = time.perf_counter() - t0
    total = int(sizes.sum())
    ff = first_fit(sizes[:5000], capacity)  # quadratic: on the first 5,000 only
    return {
        "mix": name,
        "T": capacity,
        "conversations": len(sizes),
        "one_per_row": total / (len(sizes) * capacity),
        "first_fit": int(sizes[:5000].sum()) / (ff * capacity),
        "best_fit_dec": total / (len(rows) * capacity),
        "rows": len(rows),
        "rows_lower_bound": int(np.ceil(total / capacity)),
        "pack_rows_s": seconds,
    }


def synthetic_sizes() -> np.ndarray:
    template = chat.byte_chatml()
    conversations = synthetic_chat.chat_task("strings", num_examples=N, split="train", seed=0)
    lengths = []
    for messages in conversations:
        kept = chat.truncate(*template.encode(messages), 129)
        if kept is not None:
            lengths.append(len(kept[0]) - 1)  # input / target pairs: one fewer than tokens
    return np.asarray(lengths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    results = []
    for name, lengths in mixes(0).items():
        for capacity in (2048, 4096, 8192):
            results.append(measure(name, np.clip(lengths, 16, capacity).astype(np.int64), capacity))
    results.append(measure("synthetic", synthetic_sizes(), 128))
    print(f"{describe(with_jax=False)}; {N:,} conversations per mix")
    print(f"{'mix':<10} {'T':>5} {'one/row':>8} {'first-fit':>9} {'BFD':>7} {'rows':>6} {'bound':>6} {'time':>7}")
    for r in results:
        print(
            f"{r['mix']:<10} {r['T']:>5} {r['one_per_row']:>8.1%} {r['first_fit']:>9.1%} {r['best_fit_dec']:>7.1%} "
            f"{r['rows']:>6} {r['rows_lower_bound']:>6} {r['pack_rows_s']:>6.2f}s"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
