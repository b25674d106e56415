"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p) sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer import checks
from jaxformer.ops import MASKED_LOGIT

_NEG = MASKED_LOGIT  # the finite "minus infinity": filtered tokens get probability 0 without producing NaN


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, vocab_size: int) -> None:
    """Raises a ValueError (TypeError for what is no number) naming the argument when a sampling setting is out
    of range: temperature a finite number >= 0, top_k an int in [1, V] or None, top_p in (0, 1] or None."""
    checks.check_real("temperature", temperature, low=0.0, what=" (0 = greedy)")
    _check_top_k(top_k, vocab_size)
    if top_p is not None:
        _check_top_p(top_p)


def _check_top_k(k, vocab_size: int, *, optional: bool = True) -> int | None:
    if k is None and optional:
        return None
    expected = f"an int in [1, vocab_size={vocab_size}]{' or None' if optional else ''}"
    return checks.check_int("top_k", k, low=1, high=vocab_size, expected=expected)


def _check_top_p(p) -> float:
    return checks.check_real("top_p", p, low=0.0, high=1.0, low_open=True)


def _check_logits(logits) -> jax.Array:
    """Floating logits `[..., V]` with V >= 1."""
    logits = checks.check_array("logits", logits)
    checks.check_floating("logits", logits)
    checks.check_min_rank("logits", logits, 1, "[..., V]")
    if logits.shape[-1] < 1:
        raise ValueError(f"`logits` must have at least one token (V >= 1); got shape {checks.shape_str(logits.shape)}.")
    return logits


def top_k_logits(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits of each row `[..., V]` (ties at the k-th value are kept); the rest -> MASKED_LOGIT.
    k: an int in [1, V]."""
    logits = _check_logits(logits)
    k = _check_top_k(k, logits.shape[-1], optional=False)
    # The k-th largest value as the min of the top k: slicing `top_k(...)[0][..., -1:]` instead makes XLA:CPU sort
    # the whole row (tens of ms a decoding step at [8, 50257]; BENCHMARKS.md, "Decoding against transformers").
    kth = jnp.min(jax.lax.top_k(logits, k)[0], axis=-1, keepdims=True)
    return jnp.where(logits >= kth, logits, _NEG)


def top_p_logits(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filtering (Holtzman et al. 2020): keeps the smallest set of most likely tokens whose probability
    mass reaches p, i.e. token i survives iff the mass of the tokens strictly more likely than it is < p.
    The most likely token always survives. p: in (0, 1]."""
    logits = _check_logits(logits)
    p = _check_top_p(p)
    order = jnp.argsort(-logits, axis=-1)
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep_sorted = mass_before < p
    keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)  # back to vocabulary order
    return jnp.where(keep, logits, _NEG)


def sample_logits(
    rng: jax.Array,
    logits: jax.Array,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> jax.Array:
    """Next tokens `[B]` from floating logits `[B, V]`.

    temperature == 0: argmax (greedy; `rng` is then unused and may be None). Otherwise a draw from
    softmax(filter(logits) / temperature), where the filter keeps the top_k most likely tokens and then the top_p
    nucleus (either may be None); `rng` must be a jax.random key.
    """
    logits = _check_logits(logits)
    check_sampling(temperature, top_k, top_p, logits.shape[-1])
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    rng = checks.check_prng_key("rng", rng)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_logits(logits, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
