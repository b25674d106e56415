"""The compiled programs a `Scorer` runs (scoring.py): rows of tokens scored at their last positions, and the
choices of questions scored over their context's KV cache. Each is one `jax.jit` per batch shape."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer.decoding import reorder_cache

HEAD_CHUNK = 256  # positions whose logits [B, chunk, V] exist at once (a 256k vocabulary would not fit T of them)


def _head_logprobs(model, hidden, targets):
    """log p(targets) and whether each is the argmax, float32 / bool [B, k], from hidden states [B, k, D]: the
    head's logits [B, chunk, V] exist HEAD_CHUNK positions at a time."""
    B, k = targets.shape
    chunk = min(k, HEAD_CHUNK)
    n = math.ceil(k / chunk)
    padded = jnp.pad(hidden, ((0, 0), (0, n * chunk - k), (0, 0)))
    padded_targets = jnp.pad(targets, ((0, 0), (0, n * chunk - k)))

    def head(args):
        h, t = args  # [B, chunk, D], [B, chunk]
        logprobs = jax.nn.log_softmax(model.head(h).astype(jnp.float32), axis=-1)  # [B, chunk, V]
        picked = jnp.take_along_axis(logprobs, t[..., None], axis=-1)[..., 0]
        return picked, jnp.argmax(logprobs, axis=-1) == t

    split = lambda x: jnp.moveaxis(x.reshape(B, n, chunk, *x.shape[2:]), 1, 0)  # [n, B, chunk, ...]
    picked, greedy = jax.lax.map(head, (split(padded), split(padded_targets)))
    merge = lambda x: jnp.moveaxis(x, 0, 1).reshape(B, n * chunk)[:, :k]
    return merge(picked), merge(greedy)


def _last_logprobs(model, hidden, lengths):
    """The whole log-softmax [B, V] at each row's last real position (lengths - 1), and its argmax [B]."""
    last = hidden[jnp.arange(hidden.shape[0]), lengths - 1]  # [B, D]
    logprobs = jax.nn.log_softmax(model.head(last[:, None]).astype(jnp.float32)[:, 0], axis=-1)
    return logprobs, jnp.argmax(logprobs, axis=-1)


def _score_tokens(graphdef, state, tokens, lengths, *, k):
    """For the last k positions of each row (ending at its last real one, lengths - 1): log p(the next input
    token) and whether it is the argmax, float32 / bool [B, k] (column k - 1, whose next token is no input, is
    padding, as are positions before a row's start); and at the last real position the whole log-softmax [B, V]
    and its argmax [B], for the continuation's last token. The output head runs on these k positions only (the
    continuations')."""
    model = nnx.merge(graphdef, state)
    B, T = tokens.shape
    hidden = model.hidden_states(tokens)  # [B, T, D]
    rows = jnp.arange(B)[:, None]
    positions = jnp.clip(lengths[:, None] - k + jnp.arange(k)[None, :], 0, T - 1)  # [B, k]
    targets = tokens[rows, jnp.minimum(positions + 1, T - 1)]  # [B, k]
    picked, greedy = _head_logprobs(model, hidden[rows, positions], targets)
    return picked, greedy, *_last_logprobs(model, hidden, lengths)


@functools.partial(jax.jit, static_argnames=("graphdef", "cache_len"))
def score_choices(graphdef, state, contexts, lengths, continuations, *, cache_len):
    """Contexts [B, T] (right-padded to `lengths`) prefilled once into a KV cache; the cache repeated for each of
    the C continuations [B, C, K] (right-padded), which then run over it. Returns the log-softmax [B, V] after each
    context and its argmax [B] (the continuations' first tokens), and log p(continuation[j + 1]) with whether it
    is the argmax, float32 / bool [B, C, K] (column K - 1 is padding)."""
    B, C, K = continuations.shape
    model = nnx.merge(graphdef, state)  # a copy: the caller's model keeps no cache
    model.init_cache(B, cache_len)
    valid = jnp.arange(contexts.shape[1])[None, :] < lengths[:, None]
    hidden = model.hidden_states(contexts, decode=True, valid=valid)  # each cache advances by its context
    first_lp, first_argmax = _last_logprobs(model, hidden, lengths)
    reorder_cache(model, jnp.repeat(jnp.arange(B), C))  # [B * C] caches, row b * C + c = context b
    flat = continuations.reshape(B * C, K)
    hidden = model.hidden_states(flat, decode=True)  # [B * C, K, D]; right padding is never read
    targets = jnp.concatenate([flat[:, 1:], flat[:, -1:]], axis=1)
    picked, greedy = _head_logprobs(model, hidden, targets)
    return first_lp, first_argmax, picked.reshape(B, C, K), greedy.reshape(B, C, K)


score_tokens = jax.jit(_score_tokens, static_argnames=("graphdef", "k"))
