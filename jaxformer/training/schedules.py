"""Learning-rate schedules built from optax pieces: a linear warmup joined to a decay.

s is the optimizer step (0-based), w = warmup_steps, N = num_steps, lr = peak learning rate, lr_end = end value.

    warmup_cosine         lr * s / w  (s < w),  then  lr_end + (lr - lr_end) * (1 + cos(pi * (s - w) / (N - w))) / 2
    warmup_linear         lr * s / w  (s < w),  then  lr + (lr_end - lr) * (s - w) / (N - w)
    inverse_sqrt (Noam)   lr * d_model^-0.5 * min(n^-0.5, n * w^-1.5),  n = s + 1   (Vaswani et al., eq. 3;
                          lr is the paper's constant factor, 1 there, 2 in tensor2tensor)
    step                  lr * s / w  (s < w),  then  lr * factor^(number of boundaries <= s)
    exponential           lr * s / w  (s < w),  then  lr * rate^((s - w) / decay_steps)
    warmup_stable_decay   lr * s / w  (s < w),  lr until N - d (d = decay_fraction * N),  then linear to lr_end
    constant              lr * s / w  (s < w),  then lr

Every schedule is a function of the step, jit-able, as optax optimizers take it. A warmup of 0 steps starts at lr.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax.numpy as jnp
import optax

from jaxformer import checks

Schedule = Callable[[int], float]

SCHEDULES = (
    "warmup_cosine",
    "warmup_linear",
    "inverse_sqrt",
    "step",
    "exponential",
    "warmup_stable_decay",
    "constant",
)


def _with_warmup(peak: float, warmup_steps: int, after: Schedule) -> Schedule:
    """Linear warmup from 0 to `peak` over `warmup_steps`, then `after(s - warmup_steps)`."""
    if warmup_steps == 0:
        return after
    warmup = optax.linear_schedule(0.0, peak, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


def make_schedule(
    name: str,
    *,
    learning_rate: float,
    num_steps: int,
    warmup_steps: int = 0,
    end_learning_rate: float = 0.0,
    d_model: int | None = None,
    boundaries: Sequence[int] = (),
    decay_factor: float = 0.1,
    decay_rate: float = 0.5,
    decay_steps: int = 1000,
    decay_fraction: float = 0.2,
) -> Schedule:
    """The schedule `name` (one of SCHEDULES; see the module docstring for each formula).

    Args:
      learning_rate: peak value (for `inverse_sqrt`, the constant factor multiplying d_model^-0.5 ...).
      num_steps: N, total optimizer steps (where cosine / linear / WSD decays end).
      warmup_steps: w, linear warmup from 0.
      end_learning_rate: lr_end for cosine, linear and warmup_stable_decay.
      d_model: model width, for `inverse_sqrt`.
      boundaries: absolute steps at which `step` multiplies by `decay_factor`.
      decay_rate, decay_steps: `exponential` multiplies by decay_rate every decay_steps after warmup.
      decay_fraction: share of num_steps that `warmup_stable_decay` spends decaying.
    """
    checks.check_choice("schedule", name, SCHEDULES)
    num_steps = checks.check_positive_int("num_steps", num_steps)
    warmup_steps = checks.check_int(
        "warmup_steps", warmup_steps, low=0, high=num_steps, expected=f"an int in [0, num_steps={num_steps}]"
    )
    lr, w = checks.check_positive_real("learning_rate", learning_rate), warmup_steps
    decay_len = max(num_steps - w, 1)

    if name == "warmup_cosine":
        alpha = end_learning_rate / lr
        return _with_warmup(lr, w, optax.cosine_decay_schedule(lr, decay_len, alpha=alpha))
    if name == "warmup_linear":
        return _with_warmup(lr, w, optax.linear_schedule(lr, end_learning_rate, decay_len))
    if name == "constant":
        return _with_warmup(lr, w, optax.constant_schedule(lr))
    if name == "inverse_sqrt":
        if d_model is None or w < 1:
            raise ValueError("schedule='inverse_sqrt' needs d_model and warmup_steps >= 1.")
        scale = lr * d_model**-0.5

        def noam(step):
            n = jnp.asarray(step, jnp.float32) + 1.0
            return scale * jnp.minimum(n**-0.5, n * w**-1.5)

        return noam
    if name == "step":
        boundaries = sorted(int(b) for b in boundaries)
        if any(b < w for b in boundaries):
            raise ValueError(f"`boundaries` {boundaries} must not fall inside the warmup (warmup_steps={w}).")
        scales = {b - w: decay_factor for b in boundaries}
        return _with_warmup(lr, w, optax.piecewise_constant_schedule(lr, scales))
    if name == "exponential":
        return _with_warmup(lr, w, optax.exponential_decay(lr, decay_steps, decay_rate))
    # warmup_stable_decay (Hu et al. 2024, MiniCPM): warmup, a long constant phase, a short final decay.
    decay_fraction = checks.check_real("decay_fraction", decay_fraction, low=0.0, high=1.0, low_open=True)
    decay = max(round(decay_fraction * num_steps), 1)
    stable = num_steps - decay - w
    if stable < 0:
        raise ValueError(f"warmup_steps={w} + decay steps={decay} exceed num_steps={num_steps}.")
    after_warmup = optax.join_schedules(
        [optax.constant_schedule(lr), optax.linear_schedule(lr, end_learning_rate, decay)], [stable]
    )
    return _with_warmup(lr, w, after_warmup)
