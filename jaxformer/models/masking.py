"""BERT's masked-language-model corruption: choose ~15% of the tokens, then mask / randomise / keep them 80/10/10."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp

from jaxformer.checks import check_positive_int, check_prng_key, check_real, check_token_id
from jaxformer.models.embedding import check_tokens, check_valid

# Of the chosen positions: P(mask_id) = 0.8, P(random id) = 0.1, P(unchanged) = 0.1 (Devlin et al. 2019, 3.1).
_MASK_FRACTION, _RANDOM_FRACTION = 0.8, 0.1


def mask_for_mlm(
    rng: jax.Array,
    tokens: jax.Array,
    *,
    vocab_size: int,
    mask_id: int,
    valid: jax.Array | None = None,
    special_ids: Sequence[int] = (),
    mask_rate: float = 0.15,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Corrupts `tokens [B, T]` for masked-language-model training (Devlin et al. 2019, section 3.1).

    Per sequence b:
      1. eligible positions: `valid` and not one of `special_ids` ([CLS], [SEP], ...); n_b of them.
      2. choose k_b = max(1, round(mask_rate * n_b)) of them (0 if n_b = 0) uniformly at random without
         replacement: the k_b largest of i.i.d. uniform scores, ineligible positions scored -inf. Exactly k_b, not
         a Bernoulli(mask_rate) count, so every sequence contributes to the loss.
      3. independently at each chosen position: with probability 0.8 the input becomes `mask_id`, with 0.1 a
         uniformly random id in [0, vocab_size) (which may equal the original or a special id, as in BERT), and
         with 0.1 it stays unchanged (so the model cannot assume that an unmasked input is never a target).

    All of it is jax ops on static shapes: the function jits (with `vocab_size`, `mask_id`, `special_ids` and
    `mask_rate` static) and vmaps.

    Args:
      rng: a `jax.random` key.
      tokens: int `[B, T]`, ids in [0, vocab_size).
      vocab_size: V, the range of the random replacement ids.
      mask_id: the [MASK] id, in [0, vocab_size).
      valid: bool `[B, T]`, False at padding (never chosen); default all True.
      special_ids: ids that are never chosen.
      mask_rate: the fraction of eligible tokens to choose, in (0, 1).

    Returns:
      (inputs, targets, weights): inputs int `[B, T]`, the corrupted tokens (tokens' dtype); targets = `tokens`,
      what to predict; weights bool `[B, T]`, True exactly at the chosen positions (the loss mask).
    """
    rng = check_prng_key("rng", rng)
    vocab_size = check_positive_int("vocab_size", vocab_size)
    tokens = check_tokens("tokens", tokens, vocab_size, None)
    mask_id = check_token_id("mask_id", mask_id, vocab_size, "the [MASK] token id")
    if isinstance(special_ids, (str, bytes)) or not isinstance(special_ids, Iterable):
        raise TypeError(f"`special_ids` must be a sequence of token ids (e.g. (cls_id, sep_id)); got {special_ids!r}.")
    special_ids = tuple(check_token_id("special_ids", s, vocab_size, "token ids") for s in special_ids)
    mask_rate = check_real("mask_rate", mask_rate, low=0.0, high=1.0, low_open=True, high_open=True)
    valid = check_valid("valid", valid, tokens.shape)
    if valid is None:
        valid = jnp.ones(tokens.shape, jnp.bool_)

    choose_rng, action_rng, random_rng = jax.random.split(rng, 3)
    eligible = valid
    for special in special_ids:
        eligible = eligible & (tokens != special)
    n_eligible = jnp.sum(eligible, axis=-1)  # [B]
    k = jnp.maximum(1, jnp.round(mask_rate * n_eligible.astype(jnp.float32)).astype(jnp.int32))
    k = jnp.where(n_eligible > 0, k, 0)

    scores = jnp.where(eligible, jax.random.uniform(choose_rng, tokens.shape), -jnp.inf)
    # rank[b, t] = place of position t when row b is sorted by decreasing score; the first k_b are chosen. As k_b
    # <= n_b and ineligible positions rank last, only eligible positions are chosen.
    rank = jnp.argsort(jnp.argsort(-scores, axis=-1), axis=-1)
    chosen = (rank < k[:, None]) & eligible

    u = jax.random.uniform(action_rng, tokens.shape)
    to_mask = chosen & (u < _MASK_FRACTION)
    to_random = chosen & (u >= _MASK_FRACTION) & (u < _MASK_FRACTION + _RANDOM_FRACTION)
    random_ids = jax.random.randint(random_rng, tokens.shape, 0, vocab_size, dtype=tokens.dtype)
    inputs = jnp.where(to_mask, jnp.asarray(mask_id, tokens.dtype), jnp.where(to_random, random_ids, tokens))
    return inputs, tokens, chosen
