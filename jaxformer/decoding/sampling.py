"""Choosing the next token from logits: greedy, temperature, top-k and nucleus (top-p) sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer.ops import MASKED_LOGIT

_NEG = MASKED_LOGIT  # the finite "minus infinity": filtered tokens get probability 0 without producing NaN


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, vocab_size: int) -> None:
    """Raises a ValueError naming the argument when a sampling setting is out of range."""
    if not temperature >= 0.0:
        raise ValueError(f"`temperature` must be >= 0 (0 = greedy); got {temperature}.")
    if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= vocab_size):
        raise ValueError(f"`top_k` must be an int in [1, vocab_size={vocab_size}] or None; got {top_k!r}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"`top_p` must be in (0, 1] or None; got {top_p}.")


def top_k_logits(logits: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits of each row `[..., V]` (ties at the k-th value are kept); the rest -> MASKED_LOGIT."""
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, _NEG)


def top_p_logits(logits: jax.Array, p: float) -> jax.Array:
    """Nucleus filtering (Holtzman et al. 2020): keeps the smallest set of most likely tokens whose probability
    mass reaches p, i.e. token i survives iff the mass of the tokens strictly more likely than it is < p.
    The most likely token always survives."""
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
    """Next tokens `[B]` from logits `[B, V]`.

    temperature == 0: argmax (greedy). Otherwise a draw from softmax(filter(logits) / temperature), where the
    filter keeps the top_k most likely tokens and then the top_p nucleus (either may be None).
    """
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_logits(logits, top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)
