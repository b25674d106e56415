"""Plots every learning-rate schedule of `jaxformer.training.schedules` on one figure (docs/images/schedules.png).

    python experiments/plot_schedules.py [--out docs/images/schedules.png]
    python experiments/plot_schedules.py --smoke        # few steps, into a temporary file (for tests)

The setting: N = 10,000 steps, w = 1,000 warmup steps, peak lr 1e-3, lr_end 1e-4, d_model 512; `inverse_sqrt`
with learning_rate = 1 (the paper's Noam curve, peak d_model^-0.5 * w^-0.5). Each curve is `make_schedule(...)`
evaluated on `jnp.arange(num_steps)`; no formula is repeated here.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt

from jaxformer.training.schedules import SCHEDULES, make_schedule

DEFAULT_OUT = os.path.join("docs", "images", "schedules.png")

# Short formulas for the subplot titles (the full ones are in the schedules.py docstring).
FORMULAS = {
    "warmup_cosine": "cosine from lr to lr_end over [w, N]",
    "warmup_linear": "linear from lr to lr_end over [w, N]",
    "inverse_sqrt": r"lr $\cdot d^{-1/2} \min(n^{-1/2},\, n w^{-3/2})$, n = s+1",
    "step": r"lr $\cdot$ factor$^{\#\{b \leq s\}}$",
    "exponential": r"lr $\cdot$ rate$^{(s-w)/\mathrm{decay\_steps}}$",
    "warmup_stable_decay": "lr until N - d, then linear to lr_end",
    "constant": "lr after warmup",
}


def setting(num_steps: int = 10_000, warmup_steps: int = 1_000) -> dict:
    """The shared keyword arguments of `make_schedule` for the plot."""
    return dict(num_steps=num_steps, warmup_steps=warmup_steps, learning_rate=1e-3, end_learning_rate=1e-4, d_model=512)


def schedule_kwargs(name: str, num_steps: int = 10_000, warmup_steps: int = 1_000) -> dict:
    """Every keyword argument the plot passes to `make_schedule(name, ...)`."""
    kwargs = setting(num_steps, warmup_steps)
    if name == "inverse_sqrt":
        kwargs["learning_rate"] = 1.0  # Vaswani et al.'s constant factor
    elif name == "step":
        kwargs.update(boundaries=(num_steps // 2, (4 * num_steps) // 5), decay_factor=0.1)
    elif name == "exponential":
        kwargs.update(decay_rate=0.5, decay_steps=max(num_steps // 5, 1))
    elif name == "warmup_stable_decay":
        kwargs.update(decay_fraction=0.2)
    return kwargs


def schedule_values(name: str, num_steps: int = 10_000, warmup_steps: int = 1_000) -> np.ndarray:
    """float `[num_steps]`: the schedule at steps 0 .. num_steps - 1 (jitted and vmapped)."""
    schedule = make_schedule(name, **schedule_kwargs(name, num_steps, warmup_steps))
    return np.asarray(jax.jit(jax.vmap(schedule))(jnp.arange(num_steps)))


def subtitle(name: str, kwargs: dict) -> str:
    """What the extra keyword arguments of a schedule were, for its subplot."""
    if name == "step":
        return f"boundaries={list(kwargs['boundaries'])}, factor={kwargs['decay_factor']}"
    if name == "exponential":
        return f"rate={kwargs['decay_rate']}, decay_steps={kwargs['decay_steps']}"
    if name == "warmup_stable_decay":
        return f"decay_fraction={kwargs['decay_fraction']}"
    if name == "inverse_sqrt":
        return f"lr=1, d_model={kwargs['d_model']}"
    return ""


def plot(out: str, *, num_steps: int, warmup_steps: int, dpi: int = 120) -> dict[str, np.ndarray]:
    """Writes the figure to `out`; returns the plotted values, keyed by schedule name."""
    values = {name: schedule_values(name, num_steps, warmup_steps) for name in SCHEDULES}
    steps = np.arange(num_steps)
    ncols = 4
    nrows = -(-(len(SCHEDULES) + 1) // ncols)  # one panel per schedule plus an overlay of all
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows), sharex=True, dpi=dpi)
    axes = axes.ravel()
    shared = setting(num_steps, warmup_steps)
    for ax, name in zip(axes, SCHEDULES, strict=False):
        kwargs = schedule_kwargs(name, num_steps, warmup_steps)
        ax.plot(steps, values[name], lw=1.8)
        ax.axvline(warmup_steps, color="grey", ls=":", lw=1)
        ax.set_title(f"{name}\n{FORMULAS[name]}", fontsize=10)
        extra = subtitle(name, kwargs)
        if extra:
            # Top right for inverse_sqrt (its curve is low there); elsewhere the empty middle of the panel.
            x, y, ha = (0.98, 0.95, "right") if name == "inverse_sqrt" else (0.62, 0.5, "center")
            ax.text(x, y, extra, transform=ax.transAxes, ha=ha, va="top", fontsize=8, color="dimgrey")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        if name == "inverse_sqrt":
            peak = shared["d_model"] ** -0.5 * warmup_steps**-0.5
            ax.plot([warmup_steps - 1], [peak], "o", color="C3", ms=5)
            ax.annotate(
                rf"peak $d^{{-1/2}} w^{{-1/2}}$ = {peak:.4g}",
                xy=(warmup_steps - 1, peak),
                xytext=(0.35, 0.6),
                textcoords="axes fraction",
                fontsize=8,
                arrowprops=dict(arrowstyle="->", color="C3"),
            )
    overlay = axes[len(SCHEDULES)]
    for name in SCHEDULES:
        overlay.plot(steps, values[name] / values[name].max(), lw=1.2, label=name)
    overlay.set_title("all, divided by their peak", fontsize=10)
    overlay.legend(fontsize=7, loc="lower left")
    overlay.grid(alpha=0.3)
    for ax in axes[len(SCHEDULES) + 1 :]:
        ax.axis("off")
    for ax in axes[-ncols:]:
        ax.set_xlabel("step s")
    for ax in axes[::ncols]:
        ax.set_ylabel("learning rate")
    fig.suptitle(
        f"jaxformer.training.schedules: N={num_steps:,}, w={warmup_steps:,} (dotted), lr={shared['learning_rate']:g}, "
        f"lr_end={shared['end_learning_rate']:g}",
        fontsize=11,
    )
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return values


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help=f"PNG to write (default {DEFAULT_OUT}).")
    parser.add_argument("--smoke", action="store_true", help="Few steps, into a temporary file unless --out.")
    args = parser.parse_args(argv)
    if args.smoke:
        out = args.out or os.path.join(tempfile.mkdtemp(prefix="schedules_"), "schedules.png")
        plot(out, num_steps=100, warmup_steps=10, dpi=60)
    else:
        out = args.out or DEFAULT_OUT
        plot(out, num_steps=10_000, warmup_steps=1_000)
    print(f"Wrote {out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
