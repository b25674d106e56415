"""Claim 11: where the time goes in a Transformer layer. The feed-forward network dominates at short sequences,
self-attention at long ones, and the FLOP formulas put the crossover at T ~ 6D.

    python experiments/claims/11_where_time_goes.py [--full]

One layer's two sublayers are timed separately at a fixed width D, batch 1, over a geometric sweep of lengths T:
the attention sublayer (`nn.MultiHeadAttention`, causal, implementation="xla"), split into its projections (the
module's own fused QKV projection and its output projection) and its core (`ops.dot_product_attention` on
q, k, v of the same shapes: scores, mask, softmax, probabilities x values), and the FFN sublayer (`nn.FeedForward`,
GELU, F = 4D). Norms and residual adds are left out (O(TD), a few percent at most).

FLOPs per layer, forward, batch 1 (a multiply-add = 2 FLOPs):
    projections  2 T D (3D) + 2 T D D = 8 T D^2
    FFN          2 T D F + 2 T F D    = 4 T D F = 16 T D^2 at F = 4D
    core         2 T^2 D (Q K^T) + 2 T^2 D (P V) = 4 T^2 D (the dense path computes every score; causal
                 masking discards half of them but does not skip the work)
so core = projections + FFN at T = 2D + F = 6D, core = FFN at T = F = 4D, and the attention sublayer
(projections + core) = FFN at T = F - 2D = 2D. Forward+backward is ~3x each forward count (the backward of
every matmul is two matmuls), so the crossovers are the same.
"""

from __future__ import annotations

import math
import os
import random
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab

from jaxformer import nn, ops

CLAIM = (
    "In a Transformer layer the feed-forward network dominates the cost at short sequence lengths and "
    "self-attention at long ones; the crossover is where the attention-score FLOPs (~4 T^2 D per layer, forward) "
    "match the projection + FFN FLOPs (~24 T D^2 with F = 4D) — at T ≈ 6D by the FLOP formulas."
)
SETUP = (
    "One layer at fixed width D=256, 4 heads, F=4D, batch 1, float32 on the CPU; T = 64, 128, ..., 4096 (factors "
    "of 2), so the FLOP crossover 6D=1536 lies inside. Timed separately, each jitted and warmed up, forward and "
    "forward+backward (gradients w.r.t. inputs and parameters): the attention core (jaxformer.ops."
    "dot_product_attention, causal, dense xla path, on q, k, v [1, T, N, D/N]), the attention projections (the "
    "MultiHeadAttention module's fused QKV and its output projection), the whole attention sublayer "
    "(nn.MultiHeadAttention, causal, implementation='xla'), the FFN sublayer (nn.FeedForward, GELU) and, forward "
    "only, the core's two matmuls without mask or softmax. All functions of one length run interleaved in a new "
    "random order each round (3-15 rounds, as many as fit ~15 s; each timing averages enough back-to-back calls to "
    "last ~30 ms); times are medians over rounds, ratios are medians of per-round ratios. FLOPs: projections "
    "8TD^2, FFN 4TDF, core 4T^2D (executed by the dense path; causal masking does not skip it), x3 for "
    "forward+backward. Measured crossovers are interpolated in log-log. Supported if the FFN sublayer takes longer "
    "than the whole attention sublayer at the smallest T, the core alone takes longer than projections + FFN at "
    "the largest T, and the measured forward crossover core = projections + FFN lies within a factor 3 of the FLOP "
    "prediction 6D; partly supported if the ordering holds but the crossover is further off. --full: D=768, 12 "
    "heads, T = 128, ..., 8192 (6D=4608)."
)

FACTOR = 3.0  # the measured crossover counts as "matching" the FLOP prediction within this factor
PIECES = ("core", "proj", "mha", "ffn")  # timed in both modes; "core_mm" forward only


def sizes(size: str) -> dict:
    """The layer, the lengths t_min * 2^k up to t_max, and the timing: one timing = enough back-to-back calls to
    last about `target_s`; per length, as many rounds as fit `budget_s`, within `rounds` (min, max)."""
    return lab.pick(
        size,
        tiny=dict(d_model=32, heads=2, batch=1, t_min=512, t_max=1024, target_s=0.002, budget_s=0.1, rounds=(2, 3)),
        default=dict(d_model=256, heads=4, batch=1, t_min=64, t_max=4096, target_s=0.03, budget_s=15.0, rounds=(3, 15)),
        full=dict(d_model=768, heads=12, batch=1, t_min=128, t_max=8192, target_s=0.03, budget_s=15.0, rounds=(3, 15)),
    )


def lengths(t_min: int, t_max: int) -> list[int]:
    """t_min * 2^k up to t_max (each length costs ~20 s of compiling on a loaded 2-core CPU)."""
    return [t_min * 2**k for k in range(round(math.log2(t_max / t_min)) + 1)]


def flops(T: int, D: int, F: int, B: int = 1) -> dict:
    """Forward FLOPs per piece (a multiply-add = 2)."""
    proj = B * 8 * T * D * D
    core = B * 4 * T * T * D
    ffn = B * 4 * T * D * F
    return dict(proj=proj, core=core, core_mm=core, mha=proj + core, ffn=ffn)


# -- the timed functions ---------------------------------------------------------------------------------------------


def pure(module: nnx.Module, call):
    """(params, *inputs) -> output for `call(module, *inputs)`, with the parameters as an explicit argument."""
    graph, params, rest = nnx.split(module, nnx.Param, ...)
    return lambda p, *xs: call(nnx.merge(graph, p, rest), *xs), params


def projections(m: nn.MultiHeadAttention, x):
    """The attention sublayer without its core: the fused QKV projection and the output projection (applied to
    q, which has the core output's shape). k and v are returned so that none of the QKV matmul is dead code."""
    q, k, v = m.project_qkv(x)
    return jnp.einsum("BTNH,NHD->BTD", q, m.w_o[...].astype(m.dtype)), k, v


def core_matmuls(q, k, v):
    """The core's two T x T matmuls alone: no scale, mask or softmax."""
    scores = jnp.einsum("BTNH,BSNH->BNTS", q, k)
    return jnp.einsum("BNTS,BSNH->BTNH", scores, v)


def forward_and_backward(fn):
    def run(args, cot):
        _, vjp = jax.vjp(fn, *args)
        return vjp(cot)

    return run


def build(T: int, s: dict) -> tuple[dict, dict]:
    """{name: (jitted fn, args)} for the forward and the forward+backward of every piece at length T."""
    B, D, N = s["batch"], s["d_model"], s["heads"]
    H = D // N
    mha = nn.MultiHeadAttention(D, N, implementation="xla", rngs=nnx.Rngs(0))
    ffn = nn.FeedForward(D, 4 * D, rngs=nnx.Rngs(1))
    mha.eval()
    ffn.eval()
    keys = jax.random.split(jax.random.key(T), 4)
    x = jax.random.normal(keys[0], (B, T, D), jnp.float32)
    q, k, v = (jax.random.normal(key, (B, T, N, H), jnp.float32) for key in keys[1:])

    mha_fn, mha_params = pure(mha, lambda m, x: m(x, is_causal=True))
    proj_fn, _ = pure(mha, projections)
    ffn_fn, ffn_params = pure(ffn, lambda m, x: m(x))
    core_fn = lambda q, k, v: ops.dot_product_attention(q, k, v, is_causal=True)
    pieces = {
        "core": (core_fn, (q, k, v)),
        "proj": (proj_fn, (mha_params, x)),
        "mha": (mha_fn, (mha_params, x)),
        "ffn": (ffn_fn, (ffn_params, x)),
    }
    forward = {name: (jax.jit(fn), args) for name, (fn, args) in pieces.items()}
    forward["core_mm"] = (jax.jit(core_matmuls), (q, k, v))
    backward = {}
    for i, (name, (fn, args)) in enumerate(pieces.items()):
        shapes = jax.eval_shape(fn, *args)
        leaves, tree = jax.tree.flatten(shapes)
        cot_keys = jax.random.split(jax.random.key(1000 + i), len(leaves))
        cot = jax.tree.unflatten(
            tree, [jax.random.normal(kk, a.shape, a.dtype) for kk, a in zip(cot_keys, leaves, strict=True)]
        )
        backward[name] = (jax.jit(forward_and_backward(fn)), (args, cot))
    return forward, backward


def time_calls(fn, args, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / calls


def measure_length(T: int, s: dict, rng: random.Random) -> dict:
    """Times every piece at length T in interleaved rounds; returns per-round seconds per piece and mode."""
    forward, backward = build(T, s)
    fns = {("fwd", n): f for n, f in forward.items()} | {("fwd_bwd", n): f for n, f in backward.items()}
    calls, per_round = {}, 0.0
    for key, (fn, args) in fns.items():  # compile, warm up, and size the number of calls per timing
        compiled = fn.lower(*args).compile()  # ahead of time, so that the first call only runs
        fns[key] = (compiled, args)
        first = time_calls(compiled, args, 1)
        once = first if first > 1.0 else time_calls(compiled, args, 1)  # a call that slow needs no second warm-up
        calls[key] = max(1, min(200, round(s["target_s"] / once)))
        per_round += calls[key] * once
    min_rounds, max_rounds = s["rounds"]
    rounds = max(min_rounds, min(max_rounds, int(s["budget_s"] / per_round)))
    times = {key: [] for key in fns}
    order = list(fns)
    for _ in range(rounds):
        rng.shuffle(order)
        for key in order:
            fn, args = fns[key]
            times[key].append(time_calls(fn, args, calls[key]))
    out = {"T": T, "rounds": rounds}
    for mode in ("fwd", "fwd_bwd"):
        out[mode] = {name: times[(m, name)] for (m, name) in fns if m == mode}
    return out


# -- analysis --------------------------------------------------------------------------------------------------------


def crossover(Ts, ratio) -> float | None:
    """The first T at which `ratio` rises through 1, interpolated linearly in log T vs log ratio."""
    lt, lr = np.log(np.asarray(Ts, float)), np.log(np.asarray(ratio, float))
    for i in range(len(lt) - 1):
        if lr[i] < 0 <= lr[i + 1]:
            return float(np.exp(lt[i] + (0 - lr[i]) * (lt[i + 1] - lt[i]) / (lr[i + 1] - lr[i])))
    return None


def summarise(rows: list[dict], s: dict) -> dict:
    D, B = s["d_model"], s["batch"]
    F = 4 * D
    Ts = [r["T"] for r in rows]
    res = {"T": Ts, "rounds": [r["rounds"] for r in rows]}
    for mode, mult in (("fwd", 1), ("fwd_bwd", 3)):
        m = {}
        names = list(rows[0][mode])
        m["ms"] = {n: [1e3 * statistics.median(r[mode][n]) for r in rows] for n in names}
        m["ms_per_round"] = {n: [[round(1e3 * t, 4) for t in r[mode][n]] for r in rows] for n in names}
        m["gflops"] = {
            n: [mult * flops(T, D, F, B)[n] / (1e6 * ms) for T, ms in zip(Ts, m["ms"][n], strict=True)] for n in names
        }

        def per_round(f, mode=mode):
            return [statistics.median(f(*(np.asarray(r[mode][n]) for n in PIECES))) for r in rows]

        m["core_over_proj_ffn"] = per_round(lambda c, p, a, f: c / (p + f))
        m["core_over_ffn"] = per_round(lambda c, p, a, f: c / f)
        m["mha_over_ffn"] = per_round(lambda c, p, a, f: a / f)
        m["attention_share"] = per_round(lambda c, p, a, f: a / (a + f))  # of the layer (attention + FFN)
        m["core_share"] = per_round(lambda c, p, a, f: c / (c + p + f))  # of projections + core + FFN
        m["parts_over_mha"] = per_round(lambda c, p, a, f: (c + p) / a)  # does the split add up?
        m["crossover_core_vs_proj_ffn"] = crossover(Ts, m["core_over_proj_ffn"])
        m["crossover_core_vs_ffn"] = crossover(Ts, m["core_over_ffn"])
        m["crossover_mha_vs_ffn"] = crossover(Ts, m["mha_over_ffn"])
        res[mode] = m
    return res


def nearest(Ts, T):
    return int(np.argmin(np.abs(np.log(np.asarray(Ts, float) / T))))


def run(size: str) -> lab.Outcome:
    s = sizes(size)
    D, N = s["d_model"], s["heads"]
    F = 4 * D
    Ts = lengths(s["t_min"], s["t_max"])
    rng = random.Random(0)
    rows = []
    for T in Ts:
        start = time.perf_counter()
        rows.append(measure_length(T, s, rng))
        print(f"T={T}: {rows[-1]['rounds']} rounds, {time.perf_counter() - start:.0f} s", flush=True)
    numbers = summarise(rows, s)
    predicted = dict(core_vs_proj_ffn=2 * D + F, core_vs_ffn=F, mha_vs_ffn=F - 2 * D)
    numbers.update(sizes=s, lengths=Ts, predicted=predicted, factor=FACTOR)
    fw, fb = numbers["fwd"], numbers["fwd_bwd"]

    measured = fw["crossover_core_vs_proj_ffn"]
    ordering = fw["mha_over_ffn"][0] < 1 and fw["core_over_proj_ffn"][-1] > 1
    off = (
        None
        if measured is None
        else max(measured, predicted["core_vs_proj_ffn"]) / min(measured, predicted["core_vs_proj_ffn"])
    )
    within = off is not None and off <= FACTOR
    supported = (True if within else None) if ordering else False

    # Efficiency at the length nearest the measured crossover: the time crossover moves from 6D by the ratio of
    # the core's FLOP rate to the projections' + FFN's.
    at = nearest(Ts, measured if measured is not None else predicted["core_vs_proj_ffn"])
    ms, gf = fw["ms"], fw["gflops"]
    fw["gflops_proj_ffn"] = [
        (flops(T, D, F)["proj"] + flops(T, D, F)["ffn"]) / (1e6 * (p + f))
        for T, p, f in zip(Ts, ms["proj"], ms["ffn"], strict=True)
    ]
    rate_core, rate_matmul = gf["core"][at], fw["gflops_proj_ffn"][at]
    corrected = predicted["core_vs_proj_ffn"] * rate_core / rate_matmul
    numbers["efficiency_corrected_crossover"] = corrected
    numbers["rates_at_crossover"] = dict(T=Ts[at], core=rate_core, proj_ffn=rate_matmul, core_mm=gf["core_mm"][at])
    lo, hi = 0, len(Ts) - 1
    mm_share = ms["core_mm"][at] / ms["core"][at]
    small = [i for i, T in enumerate(Ts) if T * T * 4 <= 2**20] or [0]  # one head's T x T f32 scores fit in 1 MiB
    large = [i for i, T in enumerate(Ts) if T * T * 4 > 2**20] or [len(Ts) - 1]

    def x(v):
        return "none in range" if v is None else f"T={v:.0f} ({v / D:.1f}D)"

    result = (
        f"At D={D} ({N} heads, F=4D, batch 1, float32, CPU), forward: at T={Ts[lo]} the FFN takes "
        f"{ms['ffn'][lo]:.3f} ms against {ms['mha'][lo]:.3f} ms for the whole attention sublayer (of which the core "
        f"{ms['core'][lo]:.3f} ms; attention share of the layer {100 * fw['attention_share'][lo]:.0f}%), and at "
        f"T={Ts[hi]} the core alone takes {ms['core'][hi]:.1f} ms against {ms['proj'][hi] + ms['ffn'][hi]:.1f} ms "
        f"for projections + FFN (core / (projections + FFN) = {fw['core_over_proj_ffn'][hi]:.1f}x; attention share "
        f"{100 * fw['attention_share'][hi]:.0f}%). "
        f"Crossovers, measured (forward; forward+backward) vs FLOP formulas: core = projections + FFN at "
        f"{x(measured)}; {x(fb['crossover_core_vs_proj_ffn'])} vs {predicted['core_vs_proj_ffn']} (6D); "
        f"core = FFN at {x(fw['crossover_core_vs_ffn'])}; {x(fb['crossover_core_vs_ffn'])} vs "
        f"{predicted['core_vs_ffn']} (4D); whole attention sublayer = FFN at {x(fw['crossover_mha_vs_ffn'])}; "
        f"{x(fb['crossover_mha_vs_ffn'])} vs {predicted['mha_vs_ffn']} (2D). "
        + (
            f"The measured forward crossover is {off:.2f}x "
            f"{'below' if measured < predicted['core_vs_proj_ffn'] else 'above'} the 6D prediction "
            f"({'within' if within else 'outside'} the factor {FACTOR:.0f} allowed). "
            if off is not None
            else "The forward core never overtook projections + FFN inside the sweep. "
        )
        + f"Why it moves: near T={Ts[at]} the core runs at {rate_core:.1f} GFLOP/s while projections + FFN run "
        f"at {rate_matmul:.1f} GFLOP/s, so per FLOP the T^2 part costs {rate_matmul / rate_core:.1f}x more and "
        f"the efficiency-corrected prediction is 6D x {rate_core / rate_matmul:.2f} = {corrected:.0f} "
        f"({corrected / D:.1f}D). Across the sweep "
        f"the core's rate spans {min(gf['core']):.1f}-{max(gf['core']):.1f} GFLOP/s, the FFN's "
        f"{min(gf['ffn']):.1f}-{max(gf['ffn']):.1f} and the projections' {min(gf['proj']):.1f}-"
        f"{max(gf['proj']):.1f}; the core runs at {statistics.median(gf['core'][i] for i in small):.1f} GFLOP/s "
        f"(median) while one head's T x T scores fit in 1 MiB (T <= {Ts[small[-1]] if small else 0}) and at "
        f"{statistics.median(gf['core'][i] for i in large):.1f} beyond. "
        + (
            "The slow part is not the softmax: "
            if mm_share >= 0.8
            else f"The mask + softmax take {100 * (1 - mm_share):.0f}% of the core's time; "
        )
        + f"the core's two T x T matmuls alone, without mask or softmax, take {mm_share:.2f}x the whole core's time "
        f"at T={Ts[at]} ({gf['core_mm'][at]:.1f} GFLOP/s): with a contraction of only D/N={D // N} per score they "
        f"write and re-read a T x T matrix per head (memory traffic), while the projections and FFN contract over "
        f"D or F. Projections + core add up to {min(fw['parts_over_mha']):.2f}-"
        f"{max(fw['parts_over_mha']):.2f}x the whole attention sublayer's time."
    )
    return lab.Outcome(result=result, supported=supported, numbers=numbers)


# -- figure ----------------------------------------------------------------------------------------------------------


def plot(numbers: dict, path: str):
    import matplotlib.pyplot as plt

    Ts = np.asarray(numbers["T"], float)
    D = numbers["sizes"]["d_model"]
    F = 4 * D
    pred = numbers["predicted"]
    fl = {k: np.asarray([flops(T, D, F)[k] for T in numbers["T"]], float) for k in ("proj", "core", "ffn")}
    colors = dict(core="tab:red", proj="tab:orange", ffn="tab:blue", mha="tab:purple", core_mm="tab:pink")
    labels = dict(
        core="attention core (QK^T, mask, softmax, PV)",
        proj="attention projections (QKV, out)",
        ffn="FFN",
        mha="whole attention sublayer",
        core_mm="core's two matmuls only",
    )

    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    for ax, mode, title, mult in (
        (axes[0, 0], "fwd", "forward", 1),
        (axes[0, 1], "fwd_bwd", "forward + backward", 3),
    ):
        m = numbers[mode]
        for name, ms in m["ms"].items():
            style = dict(marker="o", ms=3, color=colors[name], label=labels[name])
            if name in ("mha", "core_mm"):
                style.update(lw=1.2, ls=":" if name == "mha" else "-.", marker=None)
            ax.plot(Ts, ms, **style)
        pf = np.asarray(m["ms"]["proj"]) + np.asarray(m["ms"]["ffn"])
        ax.plot(Ts, pf, color="tab:green", marker="s", ms=3, label="projections + FFN")
        # FLOP predictions at one rate: the projections' + FFN's median measured GFLOP/s over the sweep
        rate = np.median(mult * (fl["proj"] + fl["ffn"]) / (1e6 * pf))
        ax.plot(Ts, mult * fl["core"] / (1e6 * rate), color="tab:red", ls="--", lw=1, label="core FLOPs / rate")
        ax.plot(
            Ts,
            mult * (fl["proj"] + fl["ffn"]) / (1e6 * rate),
            color="tab:green",
            ls="--",
            lw=1,
            label="(projections + FFN) FLOPs / rate",
        )
        ax.axvline(pred["core_vs_proj_ffn"], color="gray", ls="--", lw=1)
        ax.text(pred["core_vs_proj_ffn"], 0.96, " FLOP crossover\n 6D = {}".format(pred["core_vs_proj_ffn"]),
                transform=ax.get_xaxis_transform(), va="top", fontsize=8)  # fmt: skip
        measured = m["crossover_core_vs_proj_ffn"]
        if measured is not None:
            ax.axvline(measured, color="k", lw=1)
            ax.text(
                measured,
                0.84,
                f"measured\ncrossover {measured:.0f} ",
                transform=ax.get_xaxis_transform(),
                ha="right",
                va="top",
                fontsize=8,
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_ylabel("time per call (ms)")
        ax.set_title(f"{title}, D={D} (dashed: FLOPs at {rate:.1f} GFLOP/s)", fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")

    ax = axes[1, 0]
    for mode, ls in (("fwd", "-"), ("fwd_bwd", "--")):
        m = numbers[mode]
        ax.plot(Ts, 100 * np.asarray(m["attention_share"]), color="tab:purple", ls=ls, marker="o", ms=3,
                label=f"attention sublayer share, measured ({mode.replace('_', '+')})")  # fmt: skip
        ax.plot(Ts, 100 * np.asarray(m["core_share"]), color="tab:red", ls=ls, marker="o", ms=3,
                label=f"core share, measured ({mode.replace('_', '+')})")  # fmt: skip
    total = fl["proj"] + fl["core"] + fl["ffn"]
    ax.plot(Ts, 100 * (fl["proj"] + fl["core"]) / total, color="tab:purple", ls=":", lw=1.5, label="attention, FLOPs")
    ax.plot(Ts, 100 * fl["core"] / total, color="tab:red", ls=":", lw=1.5, label="core, FLOPs")
    ax.axhline(50, color="gray", lw=0.8)
    for key, name, y in (
        ("mha_vs_ffn", "2D: attention = FFN", 0.02),
        ("core_vs_ffn", "4D: core = FFN", 0.08),
        ("core_vs_proj_ffn", "6D: core = proj + FFN", 0.14),
    ):
        ax.axvline(pred[key], color="gray", ls="--", lw=0.8)
        ax.text(pred[key], y, f" {name}", transform=ax.get_xaxis_transform(), fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 100)
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("% of layer time")
    ax.set_title("share of the layer time (dotted: FLOP formulas; dashed verticals: FLOP crossovers)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, alpha=0.3)

    ax = axes[1, 1]
    for mode, ls in (("fwd", "-"), ("fwd_bwd", "--")):
        for name, g in numbers[mode]["gflops"].items():
            if name == "mha":
                continue
            ax.plot(Ts, g, color=colors[name], ls=ls, marker="o", ms=3,
                    label=f"{labels[name]} ({mode.replace('_', '+')})")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("achieved GFLOP/s")
    ax.set_title("achieved FLOP rate (core counted as dense 4T^2D)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.suptitle(f"Where the time goes in one Transformer layer (D={D}, F=4D, batch 1, float32 CPU)", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    lab.main(sys.modules[__name__])
