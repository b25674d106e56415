"""Token-level losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer import checks


def cross_entropy(logits, labels, *, mask=None, label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Mean softmax cross-entropy over the tokens that `mask` keeps, computed in float32.

    With smoothing e over V classes the target is (1 - e) one_hot(label) + e / V, so per token

        loss = -(1 - e) log p[label] - (e / V) sum_v log p[v],   log p = log_softmax(logits).

    To ignore positions (padding, an "ignore" label such as -100), pass `mask` False (or weight 0) there: a masked
    position may hold any label. Every counted label must lie in [0, V): an out-of-range one raises a ValueError
    when the labels are known (outside jit); inside `jax.jit` it cannot be seen, and the loss comes out NaN.

    Args:
      logits: `[..., V]` float, V >= 1.
      labels: integer `[...]` (the logits' shape without V), in [0, V) wherever the mask counts the token.
      mask: `[...]` bool (True = count this token) or float weights >= 0; None counts every token.
      label_smoothing: e in [0, 1).

    Returns:
      (mean loss, number of tokens counted) as float32 scalars; the mean is 0 when nothing is counted.
    """
    logits, labels = checks.check_array("logits", logits), checks.check_array("labels", labels)
    checks.check_floating("logits", logits)
    checks.check_integer("labels", labels)
    checks.check_min_rank("logits", logits, 1, "[..., V]")
    V = logits.shape[-1]
    if V < 1:
        raise ValueError(f"`logits` must have at least one class (V >= 1); got shape {checks.shape_str(logits.shape)}.")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`labels` must have the logits' shape without the vocabulary axis, "
            f"{checks.shape_str(logits.shape[:-1])}; got {checks.shape_str(labels.shape)}."
        )
    label_smoothing = checks.check_rate("label_smoothing", label_smoothing)
    if mask is not None:
        mask = checks.check_array("mask", mask)
        if mask.shape != labels.shape:
            raise ValueError(
                f"`mask` must have the labels' shape {checks.shape_str(labels.shape)}; "
                f"got {checks.shape_str(mask.shape)}."
            )
        weights = checks.concrete_or_none(mask)
        if weights is not None and mask.dtype != jnp.bool_ and (weights < 0).any():
            raise ValueError(f"`mask` weights must be >= 0; got {weights.min()}.")

    concrete_labels = checks.concrete_or_none(labels)
    counted = None if mask is None else checks.concrete_or_none(mask)
    if concrete_labels is not None and (mask is None or counted is not None):
        if counted is not None:
            concrete_labels = concrete_labels[counted != 0]
        checks.check_index_range(
            "labels", concrete_labels, 0, V, " where the mask counts the token (mask the others out to ignore them)"
        )

    weights = jnp.ones(labels.shape, jnp.float32) if mask is None else mask.astype(jnp.float32)
    if mask is not None:
        labels = jnp.where(weights != 0, labels, 0)  # an out-of-range ignored label would gather NaN
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # mode="fill": a counted label outside [0, V) (seen only under jit) reads NaN instead of a clamped class
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1, mode="fill", fill_value=jnp.nan)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
    count = jnp.sum(weights)
    return jnp.sum(nll * weights) / jnp.maximum(count, 1e-8), count
