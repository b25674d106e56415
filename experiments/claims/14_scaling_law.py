"""Claim 14: validation loss falls as a power law in model size, L(N) = a N^-b + c (Kaplan et al. 2020).

    TFDS_DATA_DIR=... python experiments/claims/14_scaling_law.py [--full]

A sweep of character-level GPTs on tiny Shakespeare, every size trained with the library's own loop for the same
number of steps on the same batches (same seed, same data order, same schedule), only depth and width changing.
N is counted as Kaplan et al. do: the parameters outside the token and position embeddings (the head is tied to
the token embedding, so it adds none); the count is read from the model itself (`nnx.eval_shape` of the very
ModelConfig the loop builds), and the total with embeddings is reported beside it.

L(N) = a (N / N0)^-b + c is fitted with scipy.optimize.curve_fit (N0 = 1e5 keeps the fit well conditioned; the
a of L = a N^-b + c is a (N0)^b). The 1-sigma band of the curve is the delta method on the fit's covariance; a
bootstrap over the sizes (resampled with replacement) gives a second, covariance-free spread of b and c. As a
hold-out check, the power law fitted without the largest model predicts that model's loss.

Caveat, by design of the claim's "when data and steps are not the bottleneck": at a fixed step count the bigger
models are less converged than the small ones (compute-limited), so the fitted b here is that of a fixed-budget
sweep, not Kaplan's converged L(N); the data side is safe (well under one epoch by default).
"""

from __future__ import annotations

import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab

CLAIM = (
    "Validation loss falls as a power law in model size, L(N) = a N^-b + c (Kaplan et al. 2020), when data and "
    "steps are not the bottleneck."
)
SETUP = (
    "Character-level GPT-2-style models (pre-norm, learned positions, tied embeddings, GELU, no dropout) on tiny "
    "Shakespeare (tfds train / validation), context 64, the shakespeare_char_cpu recipe's optimiser (AdamW lr 1e-3, "
    "warmup then cosine to 1e-4, weight decay 0.1, clip 1.0), batch 12, 600 steps for every size (~0.46M training "
    "tokens, under half an epoch), one seed. Six sizes (layers, d_model) = (1, 16), (1, 32), (2, 48), (2, 64), "
    "(3, 96), (4, 128), heads = d/16, d_ff = 4d: N (non-embedding parameters) from ~3.5k to ~0.8M. Fit "
    "L(N) = a N^-b + c to the final validation losses with scipy curve_fit (b > 0, c >= 0), 1-sigma errors from "
    "the covariance, a 1000-sample bootstrap over the sizes, residuals, and a hold-out prediction of the largest "
    "model. Supported if max |residual| < 0.03, b exceeds twice its error, loss falls with every size and the "
    "largest model is no worse than the hold-out prediction by more than 0.03; partly supported if the fit is poor "
    "or the largest model plateaus. --full: 8 sizes up to (6, 384) (~10.6M), batch 16, 3000 steps (~3 epochs), "
    "2 seeds (the fit uses the per-size mean)."
)

N0 = 1e5  # the fit's unit of N
RESIDUAL_MAX = 0.03  # a good fit: every point within this of the curve (nats)
PLATEAU_MAX = 0.03  # the largest model may sit at most this far above the hold-out prediction
BOOTSTRAP = 1000


def sizes(size: str) -> dict:
    """shapes: (layers, d_model) per model, smallest first. Tiny: four shapes, the fewest that the hold-out fit
    (three parameters from the others) and the bootstrap (four distinct sizes per sample) work with, and a batch
    of 32 because the loop evaluates the whole validation split at the training batch size (fewer calls)."""
    return lab.pick(
        size,
        tiny=dict(shapes=[(1, 8), (1, 16), (2, 16), (2, 32)], steps=10, batch=32, seeds=(0,)),
        default=dict(shapes=[(1, 16), (1, 32), (2, 48), (2, 64), (3, 96), (4, 128)], steps=600, batch=12, seeds=(0,)),
        full=dict(
            shapes=[(1, 32), (2, 64), (3, 96), (4, 128), (4, 192), (6, 256), (6, 320), (6, 384)],
            steps=3000,
            batch=16,
            seeds=(0, 1),
        ),
    )


def overrides(layers: int, d: int, batch: int) -> dict:
    return {
        "model.num_layers": layers,
        "model.d_model": d,
        "model.num_heads": max(1, d // 16),
        "model.d_ff": 4 * d,
        "model.dropout_rate": 0.0,
        "batch_size": batch,
    }


def count_params(config, fields: dict) -> dict:
    """Parameters of the GPT the loop builds from `config` (shapes only, nothing allocated)."""
    from flax import nnx

    from jaxformer.training import build_run

    model = nnx.eval_shape(build_run(config, data_fields=fields).make_model)

    def size(module) -> int:
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param))))

    total, embed = size(model), size(model.embed)
    return dict(total=total, embedding=embed, non_embedding=total - embed)


def law(n, a, b, c):
    return a * (np.asarray(n) / N0) ** (-b) + c


def fit_law(n, loss):
    """(params, covariance) of L = a (N/N0)^-b + c; b in (0, 3], c in [0, min(loss))."""
    from scipy.optimize import curve_fit

    n, loss = np.asarray(n, float), np.asarray(loss, float)
    c0 = 0.8 * loss.min()
    p0 = (max(np.interp(N0, n, loss) - c0, 1e-2), 0.3, c0)
    bounds = ([0.0, 1e-6, 0.0], [np.inf, 3.0, loss.min()])
    return curve_fit(law, n, loss, p0=p0, bounds=bounds, maxfev=20000)


def band(n_grid, params, cov) -> tuple[np.ndarray, np.ndarray]:
    """1-sigma band of the fitted curve: the delta method, sigma^2 = g^T C g with g = dL/d(a, b, c)."""
    a, b, _ = params
    x = n_grid / N0
    grad = np.stack([x ** (-b), -a * np.log(x) * x ** (-b), np.ones_like(x)], axis=1)
    sigma = np.sqrt(np.einsum("ni,ij,nj->n", grad, cov, grad))
    curve = law(n_grid, *params)
    return curve - sigma, curve + sigma


def bootstrap(n, loss, rng) -> dict:
    """Refits on sizes resampled with replacement (samples with fewer than 4 distinct sizes are skipped)."""
    n, loss = np.asarray(n, float), np.asarray(loss, float)
    fits, skipped = [], 0
    for _ in range(BOOTSTRAP):
        idx = rng.integers(0, len(n), len(n))
        if len(set(idx)) < 4:
            skipped += 1
            continue
        try:
            fits.append(fit_law(n[idx], loss[idx])[0])
        except (RuntimeError, ValueError):
            skipped += 1
    fits = np.asarray(fits)
    q = lambda col: [float(v) for v in np.percentile(fits[:, col], [16, 50, 84])]
    return dict(samples=len(fits), skipped=skipped, a=q(0), b=q(1), c=q(2))


def tail_slope(history: list[dict], fraction: float = 0.25) -> float:
    """The training loss's change per 100 steps over the last `fraction` of the run (a linear fit)."""
    rows = [r for r in history if "train_loss" in r]
    last = rows[-1]["step"]
    tail = [r for r in rows if r["step"] >= (1 - fraction) * last]
    steps, losses = [r["step"] for r in tail], [r["train_loss"] for r in tail]
    return float(100 * np.polyfit(steps, losses, 1)[0])


def run(size: str) -> lab.Outcome:
    from jaxformer.training.tasks.lm import lm_model_fields, load_corpus

    s = sizes(size)
    probe = lab.lm_config(s["steps"], **overrides(*s["shapes"][0], s["batch"]))
    tokenizer, train_tokens, val_tokens = load_corpus(probe.data)
    fields = lm_model_fields(probe, tokenizer)
    tokens_seen = s["steps"] * s["batch"] * probe.data.seq_len
    epochs = tokens_seen / len(train_tokens)

    models = []
    for layers, d in s["shapes"]:
        params = None
        entry = dict(layers=layers, d_model=d, heads=max(1, d // 16), runs=[])
        for seed in s["seeds"]:
            config = lab.lm_config(s["steps"], **overrides(layers, d, s["batch"]))
            config.seed = config.seed + seed
            params = params or count_params(config, fields)
            start = time.perf_counter()
            out = lab.train_lm(config)
            history = [r for r in out["history"] if "train_loss" in r]
            entry["runs"].append(
                dict(
                    seed=config.seed,
                    val_loss=float(out["final"]["val_loss"]),
                    train_loss=float(history[-1]["train_loss"]),
                    steps=[r["step"] for r in history],
                    curve=[float(r["train_loss"]) for r in history],
                    tail_slope=tail_slope(history),
                    seconds=time.perf_counter() - start,
                )
            )
            print(
                f"L={layers} d={d} N={params['non_embedding']:,} seed {config.seed}: "
                f"val {entry['runs'][-1]['val_loss']:.4f} ({entry['runs'][-1]['seconds']:.0f} s)",
                flush=True,
            )
        entry.update(params, val_loss=float(np.mean([r["val_loss"] for r in entry["runs"]])))
        entry["tail_slope"] = float(np.mean([r["tail_slope"] for r in entry["runs"]]))
        models.append(entry)

    n = np.array([m["non_embedding"] for m in models], float)
    loss = np.array([m["val_loss"] for m in models])
    params, cov = fit_law(n, loss)
    errors = np.sqrt(np.diag(cov))
    a, b, c = (float(v) for v in params)
    sa, sb, sc = (float(v) for v in errors)
    residuals = loss - law(n, *params)
    max_res = float(np.max(np.abs(residuals)))
    rms_res = float(np.sqrt(np.mean(residuals**2)))
    # a of L = a N^-b + c with N in parameters, and its error (delta method: d a_raw = N0^b (da + a ln N0 db)).
    a_raw = a * N0**b
    g = np.array([N0**b, a * N0**b * np.log(N0), 0.0])
    sa_raw = float(np.sqrt(g @ cov @ g))
    boot = bootstrap(n, loss, np.random.default_rng(0))

    # The pure power law (c = 0): a straight line in log-log.
    slope, intercept = np.polyfit(np.log(n), np.log(loss), 1)
    pure_res = loss - np.exp(intercept + slope * np.log(n))
    # Hold-out: the law fitted without the largest model, extrapolated to it.
    held_params, _ = fit_law(n[:-1], loss[:-1])
    held_pred = float(law(n[-1], *held_params))
    held_gap = float(loss[-1] - held_pred)

    grid = np.geomspace(n.min() / 1.5, n.max() * 1.5, 200)
    lo, hi = band(grid, params, cov)
    monotone = bool(np.all(np.diff(loss) < 0))
    fit_ok = max_res < RESIDUAL_MAX
    b_clear = b > 2 * sb
    plateau = held_gap > PLATEAU_MAX
    if fit_ok and b_clear and monotone and not plateau:
        supported = True
    elif not monotone and not b_clear:
        supported = False
    else:
        supported = None

    largest, smallest = models[-1], models[0]
    per_size = "; ".join(
        f"({m['layers']}, {m['d_model']}) N={m['non_embedding']:,} ({m['total']:,} with embeddings): "
        f"{m['val_loss']:.3f} (residual {r:+.3f})"
        for m, r in zip(models, residuals, strict=True)
    )
    seeds = len(s["seeds"])
    why = []
    if not fit_ok:
        why.append(f"the fit is poor (max |residual| {max_res:.3f} >= {RESIDUAL_MAX})")
    if not b_clear:
        why.append(f"b = {b:.3f} is not clearly above 0 (error {sb:.3f})")
    if not monotone:
        why.append("the loss does not fall with every size")
    if plateau:
        why.append(
            f"the largest model plateaus: {held_gap:+.3f} above the hold-out prediction, with its training loss "
            f"still falling {-largest['tail_slope']:.3f} per 100 steps at the end (under-trained at a fixed step "
            f"count, not data-limited at {epochs:.2f} epochs)"
        )
    further = (
        " (the bigger model is further from convergence)"
        if largest["tail_slope"] < smallest["tail_slope"]
        else " (by this measure the bigger model is not the less converged one)"
    )
    verdict = "; ".join(why) if why else "all the criteria hold"
    result = (
        f"{len(models)} sizes trained {s['steps']:,} steps at batch {s['batch']} ({tokens_seen:,} tokens, "
        f"{epochs:.2f} epochs of the {len(train_tokens):,}-character training split), {seeds} seed"
        f"{'s' if seeds > 1 else ''} each; final validation loss ({len(val_tokens):,} characters) by size "
        f"(layers, d_model), N non-embedding: {per_size}. "
        f"Fit L = a (N/{N0:.0e})^-b + c: a = {a:.3f} ± {sa:.3f}, b = {b:.3f} ± {sb:.3f}, c = {c:.3f} ± {sc:.3f} "
        f"(i.e. L = {a_raw:.3g} ± {sa_raw:.2g} N^-{b:.3f} + {c:.3f}); residuals max |{max_res:.3f}|, rms "
        f"{rms_res:.3f}. Bootstrap over the sizes ({boot['samples']} fits, 16/50/84th percentiles): b "
        f"{boot['b'][0]:.3f} / {boot['b'][1]:.3f} / {boot['b'][2]:.3f}, c {boot['c'][0]:.3f} / {boot['c'][1]:.3f} "
        f"/ {boot['c'][2]:.3f}. A pure power law (c = 0) gives slope {slope:.3f} with max |residual| "
        f"{np.max(np.abs(pure_res)):.3f}. Fitted without the largest model, the law predicts {held_pred:.3f} for "
        f"it; it reached {loss[-1]:.3f} ({held_gap:+.3f}). Compute-limited caveat: every size had the same "
        f"{s['steps']:,} steps, and at the end the training loss was still falling {-largest['tail_slope']:.3f} per "
        f"100 steps for the largest model vs {-smallest['tail_slope']:.3f} for the smallest{further}, and b "
        f"measures a fixed-budget sweep, not converged models; c "
        f"({c:.3f}) is the fit's asymptote under that budget, not the entropy of the text. Verdict: {verdict}."
    )
    numbers = dict(
        models=models,
        fit=dict(a=a, b=b, c=c, a_err=sa, b_err=sb, c_err=sc, a_raw=a_raw, a_raw_err=sa_raw, N0=N0),
        covariance=cov.tolist(),
        residuals=residuals.tolist(),
        max_residual=max_res,
        rms_residual=rms_res,
        bootstrap=boot,
        pure_power_law=dict(slope=float(slope), intercept=float(intercept), residuals=pure_res.tolist()),
        holdout=dict(params=[float(v) for v in held_params], predicted=held_pred, actual=float(loss[-1]), gap=held_gap),
        curve=dict(n=grid.tolist(), fit=law(grid, *params).tolist(), lo=lo.tolist(), hi=hi.tolist()),
        tokens_seen=tokens_seen,
        epochs=epochs,
        train_tokens=len(train_tokens),
        val_tokens=len(val_tokens),
        sizes={**s, "shapes": [list(x) for x in s["shapes"]], "seeds": list(s["seeds"])},
        criteria=dict(fit_ok=fit_ok, b_clear=b_clear, monotone=monotone, plateau=plateau),
    )
    return lab.Outcome(result=result, supported=supported, numbers=numbers)


def plot(numbers: dict, path: str):
    import matplotlib.pyplot as plt

    models, fit, curve = numbers["models"], numbers["fit"], numbers["curve"]
    n = np.array([m["non_embedding"] for m in models], float)
    loss = np.array([m["val_loss"] for m in models])
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(models)))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw=dict(width_ratios=[1.3, 0.8, 1.3]))

    ax = axes[0]
    ax.fill_between(curve["n"], curve["lo"], curve["hi"], color="tab:red", alpha=0.2, label="fit ± 1 sigma")
    ax.plot(
        curve["n"],
        curve["fit"],
        color="tab:red",
        label=f"L = {fit['a']:.2f} (N/1e5)^-{fit['b']:.3f} + {fit['c']:.2f}\n(b = {fit['b']:.3f} ± {fit['b_err']:.3f})",
    )
    ax.axhline(fit["c"], color="tab:red", ls=":", lw=0.8, label=f"c = {fit['c']:.2f} ± {fit['c_err']:.2f}")
    for m, color in zip(models, colors, strict=True):
        for r in m["runs"]:
            ax.plot(m["non_embedding"], r["val_loss"], ".", color=color, alpha=0.5)
        ax.plot(m["non_embedding"], m["val_loss"], "o", color=color, ms=8, mec="k")
        ax.annotate(
            f"({m['layers']}, {m['d_model']})", (m["non_embedding"], m["val_loss"]), (6, 6), textcoords="offset points"
        )
    hold = numbers["holdout"]
    ax.plot(n[-1], hold["predicted"], "x", color="k", ms=9, label=f"hold-out prediction {hold['predicted']:.3f}")
    ax.set_xscale("log")
    ax.set_xlabel("N, non-embedding parameters (log)")
    ax.set_ylabel("final validation loss (nats / char)")
    ax.set_title("Validation loss vs model size")
    ax.legend(fontsize=8)

    ax = axes[1]
    pure = np.asarray(numbers["pure_power_law"]["residuals"])
    ax.axhspan(-RESIDUAL_MAX, RESIDUAL_MAX, color="gray", alpha=0.15, label=f"± {RESIDUAL_MAX}")
    ax.axhline(0, color="k", lw=0.8)
    ax.plot(n, numbers["residuals"], "o-", color="tab:red", label="a N^-b + c")
    ax.plot(n, pure, "s--", color="tab:blue", mfc="none", label="pure power law (c = 0)")
    ax.set_xscale("log")
    ax.set_xlabel("N (log)")
    ax.set_ylabel("loss - fit")
    ax.set_title(f"Residuals (max |{numbers['max_residual']:.3f}|)")
    ax.legend(fontsize=8)

    ax = axes[2]
    for m, color in zip(models, colors, strict=True):
        for i, r in enumerate(m["runs"]):
            label = f"({m['layers']}, {m['d_model']}) N={m['non_embedding']:,}" if i == 0 else None
            ax.plot(r["steps"], r["curve"], color=color, lw=1.2, alpha=1.0 if i == 0 else 0.5, label=label)
        ax.plot(m["runs"][0]["steps"][-1], m["val_loss"], "o", color=color, mec="k")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean since the last log)")
    ax.set_title(f"Training curves (dots: final val loss; {numbers['epochs']:.2f} epochs)")
    low = min(min(r["curve"]) for m in models for r in m["runs"])
    ax.set_ylim(min(loss.min(), low) - 0.1, max(3.5, loss.max() + 0.3))
    ax.legend(fontsize=8)
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Scaling law on tiny Shakespeare (characters): L(N) = a N^-b + c", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    lab.main(sys.modules[__name__])
