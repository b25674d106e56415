"""Token-level losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer import checks


def cross_entropy(logits, labels, *, mask=None, label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy over the tokens that `mask` keeps, computed in float32.

    With smoothing e over V classes the target is (1 - e) one_hot(label) + e / V, so per token

        loss = -(1 - e) log p[label] - (e / V) sum_v log p[v],   log p = log_softmax(logits).

    Args:
      logits: `[..., V]` float.
      labels: integer `[...]` (the logits' shape without V), in [0, V) wherever the mask counts the token;
        tokens the mask leaves out may hold anything (e.g. an "ignore" label such as -100).
      mask: `[...]` bool (True = count this token) or float weights; None counts every token.
      label_smoothing: e in [0, 1).

    Returns:
      (mean loss, number of tokens counted) as float32 scalars; the mean is 0 when nothing is counted.
    """
    logits, labels = checks.check_array("logits", logits), checks.check_array("labels", labels)
    checks.check_floating("logits", logits)
    checks.check_integer("labels", labels)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`labels` must have the logits' shape without the vocabulary axis, "
            f"{checks.shape_str(logits.shape[:-1])}; got {checks.shape_str(labels.shape)}."
        )
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1); got {label_smoothing}.")
    if mask is not None:
        mask = checks.check_array("mask", mask)
        if mask.shape != labels.shape:
            raise ValueError(
                f"`mask` must have the labels' shape {checks.shape_str(labels.shape)}; "
                f"got {checks.shape_str(mask.shape)}."
            )

    weights = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    if mask is not None:
        labels = jnp.where(weights != 0, labels, 0)  # an out-of-range ignored label would gather NaN
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
    count = jnp.sum(weights)
    return jnp.sum(nll * weights) / jnp.maximum(count, 1e-8), count
