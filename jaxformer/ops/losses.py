"""Token-level losses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer import checks


def cross_entropy(logits, labels, *, weights=None, label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Weighted mean softmax cross-entropy over the tokens that `weights` counts, computed in float32.

    With smoothing e over V classes the target is (1 - e) one_hot(label) + e / V, so per token

        loss = -(1 - e) log p[label] - (e / V) sum_v log p[v],   log p = log_softmax(logits).

    To ignore positions (padding, an "ignore" label such as -100), give them weight 0 (False): such a position
    may hold any label. Every counted label must lie in [0, V): an out-of-range one raises a ValueError when the
    labels are known (outside jit); inside `jax.jit` it cannot be seen, and the loss comes out NaN.

    Args:
      logits: `[..., V]` float, V >= 1.
      labels: integer `[...]` (the logits' shape without V), in [0, V) wherever the weights count the token.
      weights: `[...]` bool (True = count this token) or float weights >= 0, as a batch's `weights`; None counts
        every token. (Loss weights, not an attention mask: in jaxformer `mask` means "may attend".)
      label_smoothing: e in [0, 1).

    Returns:
      (weighted mean loss, sum of the weights: the number of tokens counted) as float32 scalars; the mean is 0
      when nothing is counted.
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
    counted = None  # the weights' values when they are known (outside jit)
    if weights is not None:
        weights = checks.check_array("weights", weights)
        if weights.shape != labels.shape:
            raise ValueError(
                f"`weights` must have the labels' shape {checks.shape_str(labels.shape)}; "
                f"got {checks.shape_str(weights.shape)}."
            )
        counted = checks.concrete_or_none(weights)
        if counted is not None and weights.dtype != jnp.bool_ and (counted < 0).any():
            raise ValueError(f"`weights` must be >= 0; got {counted.min()}.")

    concrete_labels = checks.concrete_or_none(labels)
    if concrete_labels is not None and (weights is None or counted is not None):
        if counted is not None:
            concrete_labels = concrete_labels[counted != 0]
        checks.check_index_range(
            "labels", concrete_labels, 0, V, " where the weights count the token (weight 0 ignores a token)"
        )

    if weights is None:
        weights = jnp.ones(labels.shape, jnp.float32)
    else:
        weights = weights.astype(jnp.float32)
        labels = jnp.where(weights != 0, labels, 0)  # an out-of-range ignored label would gather NaN
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    # mode="fill": a counted label outside [0, V) (seen only under jit) reads NaN instead of a clamped class
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1, mode="fill", fill_value=jnp.nan)[..., 0]
    if label_smoothing:
        nll = (1.0 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs, axis=-1)
    count = jnp.sum(weights)
    return jnp.sum(nll * weights) / jnp.maximum(count, 1e-8), count
