"""Claim 13: long sequences. Dense attention is O(T^2) in time and memory; a sliding window or a block-sparse
pattern needs only O(T w) of the work, and blockwise (flash-style) attention gives the exact dense result in O(T)
memory.

    python experiments/claims/13_long_sequences.py            # default size: a 2-core CPU, minutes
    python experiments/claims/13_long_sequences.py --full     # longer sequences (an accelerator)

Every variant is one jitted forward+backward pass (`jax.vjp` with a random cotangent, gradients for q, k and v)
of causal self-attention from jaxformer.ops. Memory is XLA's compiled memory analysis (`temp_size_in_bytes` of
`jax.jit(f).lower(...).compile().memory_analysis()`): the scratch memory the program needs besides its inputs
and outputs. It is deterministic and needs no run, so it is taken at lengths too long to time on a CPU.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab

from jaxformer import ops

CLAIM = (
    "Dense self-attention costs O(T^2) time and memory; a sliding window or block-sparse pattern cuts the work to "
    "O(T w), and blockwise (flash-style) attention keeps exact dense results in O(T) memory."
)
SETUP = (
    "Causal self-attention, B=1, N=4 heads, H=64, float32, one jitted forward+backward pass (gradients for q, k "
    "and v) per variant: dense (`ops.dot_product_attention(is_causal=True)`), dense with a sliding-window mask "
    "(w=256), dense with a causal block-sparse mask (`ops.block_sparse_mask`, 256-token blocks: the diagonal "
    "block, the one before it and the first (global) block), blockwise causal and blockwise with the window "
    "(`ops.blockwise_attention`, block_size=256, which skips key blocks that are entirely masked). Time: median "
    "of interleaved calls: every (variant, T) pair in one pool, in a new random order each round, so that a change "
    "in the machine's load hits all lengths alike (7 rounds for calls under 1 s, 3 for longer ones), at T = 512, "
    "1024, ... up to "
    "4096 for the three dense-kernel variants, 8192 for blockwise causal and 32768 for blockwise + window. Memory: "
    "XLA's compiled temp bytes of every variant at T = 512 ... 32768 (compiled, not run). Exactness: max |Δ| of "
    "outputs and of dq, dk, dv between blockwise and dense (causal; and windowed vs the dense window mask) at "
    "T=512. --full: T = 1024 ... 65536, window and block 512, dense timed to 16384, blockwise to 32768. "
    "Supported if the dense temp memory grows with a log-log slope in [1.8, 2.2] and both blockwise ones "
    "with a slope <= 1.2 (over the three longest lengths), the dense time grows with a slope >= 1.6 and the "
    "windowed blockwise time with a slope <= 1.3 (over the three longest timed lengths of each), and blockwise "
    "matches dense to max |Δ| < 1e-4; partly supported if only some of these hold, not supported if none does."
)

EXACT_MAX = 1e-4  # blockwise vs dense: float32 round-off, not a different function
DENSE_MEM_SLOPE = (1.8, 2.2)
LINEAR_MEM_SLOPE_MAX = 1.2
DENSE_TIME_SLOPE_MIN = 1.6
LINEAR_TIME_SLOPE_MAX = 1.3

# name -> (label in the figure, uses the dense kernel)
VARIANTS = {
    "dense": ("dense (causal)", True),
    "dense_window": ("dense + window mask", True),
    "dense_block_sparse": ("dense + block-sparse mask", True),
    "blockwise": ("blockwise (causal)", False),
    "blockwise_window": ("blockwise + window", False),
}
STYLE = {
    "dense": dict(color="tab:red", marker="o"),
    "dense_window": dict(color="tab:orange", marker="s", ls="--"),
    "dense_block_sparse": dict(color="tab:brown", marker="^", ls=":"),
    "blockwise": dict(color="tab:blue", marker="o"),
    "blockwise_window": dict(color="tab:green", marker="D", ms=4, ls="--"),  # dashed: blockwise shows through
}


def sizes(size: str) -> dict:
    """timed_up_to: the longest length timed per kernel ("dense" stands for the three dense-kernel variants)."""
    return lab.pick(
        size,
        tiny=dict(
            B=1,
            N=1,
            H=8,
            window=16,
            block=16,
            lengths=[32, 64, 128],
            timed_up_to=dict(dense=64, blockwise=64, blockwise_window=128),
            rounds_cheap=2,
            rounds=1,
        ),
        default=dict(
            B=1,
            N=4,
            H=64,
            window=256,
            block=256,
            lengths=[512, 1024, 2048, 4096, 8192, 16384, 32768],
            timed_up_to=dict(dense=4096, blockwise=8192, blockwise_window=32768),
            rounds_cheap=7,
            rounds=3,
        ),
        full=dict(
            B=1,
            N=4,
            H=64,
            window=512,
            block=512,
            lengths=[1024, 2048, 4096, 8192, 16384, 32768, 65536],
            timed_up_to=dict(dense=16384, blockwise=32768, blockwise_window=65536),
            rounds_cheap=7,
            rounds=5,
        ),
    )


def attention_fn(name: str, T: int, s: dict):
    """q, k, v -> causal attention output `[B, T, N, H]` for one variant."""
    w, bs = s["window"], s["block"]
    if name == "dense":
        return lambda q, k, v: ops.dot_product_attention(q, k, v, is_causal=True)
    if name == "dense_window":
        return lambda q, k, v: ops.dot_product_attention(q, k, v, mask=ops.sliding_window_mask(T, window=w))
    if name == "dense_block_sparse":
        pattern = dict(block_size=bs, window_blocks=1, global_blocks=1, random_blocks=0)
        return lambda q, k, v: ops.dot_product_attention(
            q, k, v, mask=ops.block_sparse_mask(T, T, **pattern), is_causal=True
        )
    if name == "blockwise":
        return lambda q, k, v: ops.blockwise_attention(q, k, v, is_causal=True, block_size=bs)
    if name == "blockwise_window":
        return lambda q, k, v: ops.blockwise_attention(q, k, v, is_causal=True, window=w, block_size=bs)
    raise ValueError(name)


def forward_and_backward(fn):
    """q, k, v, cotangent -> (dq, dk, dv): one forward and one backward pass."""

    def run(q, k, v, cot):
        _, vjp = jax.vjp(fn, q, k, v)
        return vjp(cot)

    return run


def compiled(name: str, T: int, s: dict):
    """The compiled forward+backward program of a variant at length T (compiled only, not run)."""
    spec = jax.ShapeDtypeStruct((s["B"], T, s["N"], s["H"]), jnp.float32)
    return jax.jit(forward_and_backward(attention_fn(name, T, s))).lower(spec, spec, spec, spec).compile()


def temp_mib(program) -> float:
    return program.memory_analysis().temp_size_in_bytes / 2**20


def make_inputs(T: int, s: dict, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 4)
    return tuple(jax.random.normal(key, (s["B"], T, s["N"], s["H"]), jnp.float32) for key in keys)


def scores_computed(name: str, T: int, s: dict) -> int:
    """Query-key scores the kernel computes per head: T^2 for a dense kernel (mask or not), the visited tiles for
    blockwise (a query block visits the key blocks from the first one its window reaches up to the diagonal)."""
    if VARIANTS[name][1]:
        return T * T
    bs = s["block"]
    blocks = -(-T // bs)
    left = None if name == "blockwise" else s["window"] - 1
    tiles = 0
    for i in range(blocks):
        lo = 0 if left is None else max(0, (i * bs - left) // bs)
        tiles += i + 1 - lo
    return tiles * bs * bs


def scores_needed(name: str, T: int, s: dict) -> int:
    """Query-key pairs the mask lets through, per head."""
    t = np.arange(T)
    if name in ("dense", "blockwise"):
        return T * (T + 1) // 2
    if name in ("dense_window", "blockwise_window"):
        return int(np.minimum(t + 1, s["window"]).sum())
    bs = s["block"]  # causal block-sparse: diagonal block, the block before it, and the first block
    block_of = t // bs
    first = np.minimum(t + 1, bs)  # keys in block 0 (all of them once past it)
    local_lo = np.maximum(block_of - 1, 1) * bs  # the local blocks, not counting block 0 twice
    local = np.maximum(t + 1 - local_lo, 0)
    return int((first + local).sum())


def time_once(fn, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


CHEAP_S = 1.0  # a call under this many seconds (at warm-up) gets `rounds_cheap` rounds instead of `rounds`


def interleaved_medians(programs: dict, inputs: dict, s: dict, seed: int = 0) -> dict:
    """programs {(name, T): compiled}, inputs {T: args}. One warm-up call each, then rounds over the whole pool in
    a new random order each round (the cheap calls stay in the pool for more rounds); median seconds per key."""
    rounds = {}
    for key, program in programs.items():
        rounds[key] = s["rounds_cheap"] if time_once(program, *inputs[key[1]]) < CHEAP_S else s["rounds"]
    times = {key: [] for key in programs}
    rng = random.Random(seed)
    for r in range(max(rounds.values())):
        order = [key for key in programs if rounds[key] > r]
        rng.shuffle(order)
        start = time.perf_counter()
        for key in order:
            times[key].append(time_once(programs[key], *inputs[key[1]]))
        print(f"round {r + 1}: {len(order)} calls, {time.perf_counter() - start:.0f} s", flush=True)
    return {key: statistics.median(ts) for key, ts in times.items()}


def max_abs(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)))


def exactness(T: int, s: dict) -> dict:
    """Blockwise vs its dense reference at length T: max |Δ| of the output and of each gradient."""
    q, k, v, cot = make_inputs(T, s, seed=1)

    def out_and_grads(name):
        return jax.jit(lambda q, k, v, c: (lambda o, vjp: (o, *vjp(c)))(*jax.vjp(attention_fn(name, T, s), q, k, v)))(
            q, k, v, cot
        )

    checks = {}
    for blockwise, dense in (("blockwise", "dense"), ("blockwise_window", "dense_window")):
        a, b = out_and_grads(blockwise), out_and_grads(dense)
        diffs = {part: max_abs(x, y) for part, x, y in zip(("out", "dq", "dk", "dv"), a, b, strict=True)}
        scale = max(float(jnp.max(jnp.abs(y))) for y in b)
        checks[blockwise] = dict(**diffs, max=max(diffs.values()), scale=scale)
    return dict(T=T, checks=checks)


def slope(xs, ys) -> float:
    """Log-log slope of the last three points."""
    return float(np.polyfit(np.log(xs[-3:]), np.log(ys[-3:]), 1)[0])


def run(size: str) -> lab.Outcome:
    s = sizes(size)
    times = {name: {} for name in VARIANTS}
    memory = {name: {} for name in VARIANTS}
    up_to = {name: s["timed_up_to"]["dense" if VARIANTS[name][1] else name] for name in VARIANTS}
    programs, failures = {}, {name: {} for name in VARIANTS}
    for T in s["lengths"]:
        for name in VARIANTS:
            try:
                program = compiled(name, T, s)
            except Exception as err:  # an accelerator's XLA may refuse the longest dense programs (memory)
                failures[name][T] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
                print(f"T={T} {name}: did not compile: {failures[name][T]}", flush=True)
                continue
            memory[name][T] = temp_mib(program)
            if T <= up_to[name]:
                programs[(name, T)] = program
    inputs = {T: make_inputs(T, s) for T in sorted({T for _, T in programs})}
    for (name, T), seconds in interleaved_medians(programs, inputs, s).items():
        times[name][T] = seconds
    del programs, inputs
    for T in s["lengths"]:
        print(f"T={T}: " + ", ".join(f"{n} {1e3 * times[n][T]:.0f} ms" for n in VARIANTS if T in times[n]), flush=True)
    exact = exactness(s["lengths"][0], s)

    def series(d, name):
        Ts = sorted(d[name])
        return Ts, [d[name][T] for T in Ts]

    mem_slopes = {name: slope(*series(memory, name)) for name in VARIANTS}
    time_slopes = {name: slope(*series(times, name)) for name in VARIANTS}
    work = {
        name: {T: dict(computed=scores_computed(name, T, s), needed=scores_needed(name, T, s)) for T in memory[name]}
        for name in VARIANTS
    }
    worst = max(c["max"] for c in exact["checks"].values())
    checks = dict(
        dense_memory_quadratic=DENSE_MEM_SLOPE[0] <= mem_slopes["dense"] <= DENSE_MEM_SLOPE[1],
        blockwise_memory_linear=max(mem_slopes["blockwise"], mem_slopes["blockwise_window"]) <= LINEAR_MEM_SLOPE_MAX,
        dense_time_quadratic=time_slopes["dense"] >= DENSE_TIME_SLOPE_MIN,
        window_time_linear=time_slopes["blockwise_window"] <= LINEAR_TIME_SLOPE_MAX,
        blockwise_exact=worst < EXACT_MAX,
    )
    supported = True if all(checks.values()) else (None if any(checks.values()) else False)

    Tt = max(times["dense"])
    Tm = max(T for T in s["lengths"] if all(T in memory[n] for n in VARIANTS))  # the longest every variant compiled
    Tb, Tw = max(times["blockwise"]), max(times["blockwise_window"])
    t, m = {n: times[n][Tt] for n in VARIANTS}, {n: memory[n][Tm] for n in VARIANTS}
    mt = {n: memory[n][Tt] for n in VARIANTS}
    w = s["window"]
    win_needed = work["blockwise_window"][Tt]["needed"] / work["dense"][Tt]["needed"]
    win_computed = work["blockwise_window"][Tt]["computed"] / work["dense"][Tt]["computed"]
    causal_computed = work["blockwise"][Tt]["computed"] / work["dense"][Tt]["computed"]
    bs_needed = work["dense_block_sparse"][Tt]["needed"] / work["dense"][Tt]["needed"]
    cb, cw = exact["checks"]["blockwise"], exact["checks"]["blockwise_window"]
    result = (
        f"Memory (XLA compiled temp bytes, forward+backward, log-log slope over the three longest lengths up to "
        f"T={Tm}): dense grows with slope {mem_slopes['dense']:.2f} and needs {m['dense'] / 1024:.1f} GiB at "
        f"T={Tm}; blockwise causal grows with slope {mem_slopes['blockwise']:.2f} and needs {m['blockwise']:.0f} "
        f"MiB ({m['dense'] / m['blockwise']:.0f}x less; with the window too: {m['blockwise_window']:.0f} MiB, the same "
        f"buffers). Masks do not help the dense kernel: with the window mask "
        f"it needs {m['dense_window'] / 1024:.1f} GiB and with the block-sparse mask "
        f"{m['dense_block_sparse'] / 1024:.1f} GiB at T={Tm} (slopes {mem_slopes['dense_window']:.2f}, "
        f"{mem_slopes['dense_block_sparse']:.2f}). "
        f"Time (forward+backward, median of interleaved calls): at T={Tt} dense takes {t['dense']:.2f} s, dense + "
        f"window mask {t['dense_window']:.2f} s and dense + block-sparse mask {t['dense_block_sparse']:.2f} s "
        f"(the window lets through {win_needed:.1%} and the block-sparse pattern {bs_needed:.1%} of the causal "
        f"pairs, but a dense masked kernel still computes all T^2 scores), blockwise causal {t['blockwise']:.2f} s "
        f"(it skips the blocks above the diagonal: {causal_computed:.0%} of the T^2 scores) and blockwise + window "
        f"(w={w}) {t['blockwise_window']:.3f} s ({win_computed:.1%} of the scores, "
        f"{t['dense'] / t['blockwise_window']:.0f}x faster than dense, {mt['dense'] / mt['blockwise_window']:.0f}x "
        f"less memory). Time slopes over the three longest timed lengths: dense {time_slopes['dense']:.2f}, "
        f"blockwise causal {time_slopes['blockwise']:.2f} (to T={Tb}, {times['blockwise'][Tb]:.2f} s), blockwise + "
        f"window {time_slopes['blockwise_window']:.2f} (to T={Tw}, {times['blockwise_window'][Tw]:.2f} s). "
        f"Exactness at T={exact['T']}: blockwise vs dense max |Δ| {cb['max']:.1e} over the output and dq, dk, dv "
        f"(values up to {cb['scale']:.1f}); blockwise + window vs the dense window mask {cw['max']:.1e}. "
        + "".join(
            f"{n} did not compile at T={', '.join(map(str, sorted(failures[n])))} "
            f"({next(iter(failures[n].values()))}). "
            for n in VARIANTS
            if failures[n]
        )
        + f"Criteria met: {sum(checks.values())} of {len(checks)}"
        + ("." if all(checks.values()) else f" (failed: {', '.join(k for k, ok in checks.items() if not ok)}).")
    )
    numbers = dict(
        sizes=s,
        labels={n: VARIANTS[n][0] for n in VARIANTS},
        time_s={n: {str(T): v for T, v in d.items()} for n, d in times.items()},
        temp_mib={n: {str(T): v for T, v in d.items()} for n, d in memory.items()},
        scores_per_head={n: {str(T): v for T, v in d.items()} for n, d in work.items()},
        memory_slopes=mem_slopes,
        time_slopes=time_slopes,
        exactness=exact,
        checks=checks,
        compile_failures={n: {str(T): e for T, e in d.items()} for n, d in failures.items() if d},
    )
    return lab.Outcome(result=result, supported=supported, numbers=numbers)


def plot(numbers: dict, path: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.2))
    panels = (
        (axes[0], numbers["time_s"], numbers["time_slopes"], "forward+backward time (s)"),
        (axes[1], numbers["temp_mib"], numbers["memory_slopes"], "XLA compiled temp memory (MiB)"),
    )
    for ax, data, slopes, ylabel in panels:
        for name, d in data.items():
            Ts = sorted(int(T) for T in d)
            ys = [d[str(T)] for T in Ts]
            ax.plot(Ts, ys, label=f"{numbers['labels'][name]} (slope {slopes[name]:.2f})", **STYLE[name])
        # Guides through the last point of the dense curve (slope 2) and of the windowed blockwise one (slope 1).
        lo = min(int(T) for d in data.values() for T in d)
        for name, power, style in (("dense", 2, "k--"), ("blockwise_window", 1, "k:")):
            T1 = max(int(T) for T in data[name])
            Tg = np.geomspace(lo, T1, 20)
            ax.plot(
                Tg, data[name][str(T1)] * (Tg / T1) ** power, style, lw=0.8, alpha=0.6, label=f"slope {power} guide"
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is axes[0] else "upper left")
    s = numbers["sizes"]
    axes[0].set_title(f"time (median of interleaved calls), w={s['window']}, block={s['block']}", fontsize=10)
    axes[1].set_title("memory (compiled, not run: long T never executed)", fontsize=10)
    fig.suptitle(
        f"Causal attention, B={s['B']}, N={s['N']}, H={s['H']}, float32\ndense is O(T^2); masks do not make a dense "
        "kernel cheaper; blockwise is O(T) memory, and O(T w) time with a window",
        fontsize=11,
        y=1.03,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    lab.main(sys.modules[__name__])
