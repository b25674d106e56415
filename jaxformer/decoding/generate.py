"""Autoregressive generation with a KV cache: prefill the prompts once, then one cached step per new token."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformer import checks
from jaxformer.decoding.cache import set_cache_index
from jaxformer.decoding.sampling import check_sampling, sample_logits
from jaxformer.models.transformer import Transformer
from jaxformer.nn.blocks import ABSOLUTE_POSITIONAL


def check_prompt(prompt, prompt_lengths, vocab_size: int, name: str = "prompt") -> tuple[jax.Array, jax.Array]:
    """`prompt` int `[B, P]` (right-padded), `prompt_lengths` int `[B]` in [1, P] (default P); `name` is what the
    caller calls the prompt (beam search's `src`). A TypeError for a non-integer dtype, else a ValueError."""
    prompt = jnp.asarray(checks.check_array(name, prompt))
    integer = jnp.issubdtype(prompt.dtype, jnp.integer)
    if prompt.ndim != 2 or not integer or min(prompt.shape) < 1:
        message = (
            f"`{name}` must be integer token ids [B, P] with B >= 1 and P >= 1; got {prompt.dtype} {prompt.shape}."
        )
        raise (ValueError if integer else TypeError)(message)
    B, P = prompt.shape
    ids = np.asarray(prompt)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(
            f"`{name}` ids must lie in [0, vocab_size={vocab_size}); got min {ids.min()}, max {ids.max()}."
        )
    if prompt_lengths is None:
        return prompt, jnp.full((B,), P, jnp.int32)
    lengths = np.asarray(checks.check_array("prompt_lengths", prompt_lengths))
    integer = np.issubdtype(lengths.dtype, np.integer)
    if lengths.shape != (B,) or not integer:
        message = f"`prompt_lengths` must be int [B={B}]; got {lengths.dtype} {lengths.shape}."
        raise (ValueError if integer else TypeError)(message)
    if lengths.min() < 1 or lengths.max() > P:
        raise ValueError(f"`prompt_lengths` must lie in [1, P={P}]; got {lengths.tolist()}.")
    return prompt, jnp.asarray(lengths, jnp.int32)


def check_decoder_only(model, caller: str) -> None:
    """`model` must be a decoder-only language model with a KV cache (`config`, `init_cache`, called as
    `model(tokens, decode=True)`, e.g. `GPT`); a TypeError naming what it is otherwise."""
    if isinstance(model, Transformer):
        raise TypeError(
            f"{caller} continues prompts with a decoder-only model (e.g. GPT); the encoder-decoder Transformer "
            "decodes from a source with decoding.beam_search(model, src, bos_id=...)."
        )
    if not callable(getattr(model, "init_cache", None)) or not hasattr(model, "config"):
        raise TypeError(
            f"{caller} needs a decoder-only model with a KV cache (`config`, `init_cache`, e.g. GPT); got a "
            f"{type(model).__name__}."
        )


def cache_length(model: nnx.Module, prompt_len: int, new_tokens: int) -> int:
    """Cache slots for `prompt_len + new_tokens` tokens; an error if absolute positions cannot reach that far."""
    total = prompt_len + new_tokens
    config = model.config
    if config.positional in ABSOLUTE_POSITIONAL and total > config.max_len:
        raise ValueError(
            f"prompt length {prompt_len} + {new_tokens} new tokens = {total} exceeds the model's max_len="
            f"{config.max_len} (positional={config.positional!r}); generate fewer tokens or shorten the prompt."
        )
    return total


def prefill(model: nnx.Module, prompt: jax.Array, lengths: jax.Array) -> jax.Array:
    """Runs the prompts `[B, P]` through the (cache-initialised) model in one call and returns the logits `[B, V]`
    after each prompt's last real token; each cache then continues at its prompt's length."""
    rows = jnp.arange(prompt.shape[0])
    if not hasattr(model, "hidden_states"):  # any decoder with a KV cache: logits at every position
        logits = model(prompt, decode=True)
        set_cache_index(model, lengths)
        return logits[rows, lengths - 1]
    # GPT: the cache advances by each prompt's real tokens (ring buffers keep no padding); the head runs on the
    # last real tokens only.
    valid = jnp.arange(prompt.shape[1])[None, :] < lengths[:, None]
    hidden = model.hidden_states(prompt, decode=True, valid=valid)
    return model.head(hidden[rows, lengths - 1][:, None])[:, 0]


def generate(
    model: nnx.Module,
    prompt: jax.Array,
    max_new_tokens: int,
    *,
    rng: jax.Array,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    prompt_lengths: jax.Array | None = None,
) -> jax.Array:
    """Samples `max_new_tokens` tokens after each prompt with a KV cache; returns them, int32 `[B, max_new_tokens]`.

    Args:
      model: a decoder-only model (e.g. `GPT`) with `config`, `init_cache(batch, max_len)` and
        `model(tokens, decode=True) -> logits [B, T, V]`. It is not modified: generation runs on a copy in
        evaluation mode (no dropout).
      prompt: int `[B, P]` (B, P >= 1) of ids in [0, V), right-padded when the prompts have different lengths.
      max_new_tokens: number of tokens to generate per prompt, an int >= 1.
      rng: a jax.random key (`jax.random.key(seed)`); unused when greedy, where it may be None.
      temperature: a number >= 0; 0 = greedy (argmax); otherwise logits / temperature are sampled.
      top_k, top_p: keep only the k most likely tokens (k in [1, V]) / the nucleus of mass p in (0, 1] (None =
        no filter).
      eos_id: a token id in [0, V); once a sequence emits it, the rest of its row is eos_id; the loop stops when
        every row has.
      prompt_lengths: int `[B]` real length of each prompt, in [1, P] (default P).

    The KV cache holds exactly P + max_new_tokens tokens, so no step can write past it; with learned or sinusoidal
    positions that total must also fit the model's `max_len` (a ValueError otherwise).

    The prompts are prefilled in one call; each new token is then one cached decoding step inside a
    `lax.while_loop`, all under one `jax.jit` (recompiled only for new shapes or settings).
    """
    prompt, lengths, max_new_tokens, rng, top_k, top_p, eos_ids, max_len = _check_arguments(
        model,
        "generate",
        prompt,
        prompt_lengths,
        max_new_tokens,
        rng,
        temperature,
        top_k,
        top_p,
        () if eos_id is None else (eos_id,),
    )
    eos_id = eos_ids[0] if eos_ids else None
    graphdef, state = nnx.split(model)
    return _generate(
        graphdef,
        state,
        prompt,
        lengths,
        rng,
        max_new_tokens=max_new_tokens,
        max_len=max_len,
        temperature=float(temperature),
        top_k=top_k,
        top_p=top_p,
        eos_id=eos_id,
    )


def _check_arguments(model, caller, prompt, prompt_lengths, max_new_tokens, rng, temperature, top_k, top_p, eos_ids):
    """generate's and generate_stream's arguments checked and normalised: (prompt, lengths, max_new_tokens, rng,
    top_k, top_p, eos_ids, the cache's max_len)."""
    check_decoder_only(model, caller)
    max_new_tokens = checks.check_positive_int("max_new_tokens", max_new_tokens)
    vocab_size = model.config.vocab_size
    check_sampling(temperature, top_k, top_p, vocab_size)
    top_k = None if top_k is None else int(top_k)
    top_p = None if top_p is None else float(top_p)
    eos_ids = tuple(checks.check_token_id("eos_id", e, vocab_size, "the end-of-sequence token id") for e in eos_ids)
    if temperature == 0 and rng is None:
        rng = jax.random.key(0)  # greedy decoding draws nothing
    rng = checks.check_prng_key("rng", rng)
    prompt, lengths = check_prompt(prompt, prompt_lengths, vocab_size)
    max_len = cache_length(model, prompt.shape[1], max_new_tokens)
    return prompt, lengths, max_new_tokens, rng, top_k, top_p, eos_ids, max_len


def _generate_fn(graphdef, state, prompt, lengths, rng, *, max_new_tokens, max_len, temperature, top_k, top_p, eos_id):
    B = prompt.shape[0]
    model = nnx.merge(graphdef, state)  # a copy: the caller's model keeps no cache and its train/eval mode
    model.eval()
    model.init_cache(B, max_len)
    logits = prefill(model, prompt, lengths)
    # Parameters are closed over; the caches (and any other mutable state) are carried from step to step.
    step_graphdef, params, caches = nnx.split(model, nnx.Param, ...)
    fill = 0 if eos_id is None else eos_id

    def choose(i, tokens, logits, done, rng):
        """Samples token i from `logits` (the fill once a sequence is done) and writes it."""
        token, done, rng = _choose(logits, done, rng, temperature, top_k, top_p, () if eos_id is None else (eos_id,))
        return token, tokens.at[:, i].set(token), done, rng

    def cond(carry):
        i, _, _, done, _, _ = carry
        return (i < max_new_tokens - 1) & ~jnp.all(done)

    def body(carry):
        i, tokens, logits, done, rng, caches = carry
        token, tokens, done, rng = choose(i, tokens, logits, done, rng)
        step_model = nnx.merge(step_graphdef, params, caches)
        logits = step_model(token[:, None], decode=True)[:, 0]
        return i + 1, tokens, logits, done, rng, nnx.state(step_model, nnx.Not(nnx.Param))

    tokens = jnp.full((B, max_new_tokens), fill, jnp.int32)
    carry = (jnp.int32(0), tokens, logits, jnp.zeros((B,), bool), rng, caches)
    i, tokens, logits, done, rng, _ = jax.lax.while_loop(cond, body, carry)
    # The last token needs no model step after it (n tokens, n - 1 cached steps). If every sequence finished
    # early, token i is the fill, as are the ones after it.
    return choose(i, tokens, logits, done, rng)[1]


def _choose(logits, done, rng, temperature, top_k, top_p, eos_ids: tuple[int, ...]):
    """The next token `[B]` sampled from `logits [B, V]`, or the fill (the first eos id, else 0) where a sequence
    is `done`; `done` then also marks the sequences that just emitted an eos id."""
    rng, key = jax.random.split(rng)
    token = sample_logits(key, logits, temperature=temperature, top_k=top_k, top_p=top_p)
    token = jnp.where(done, eos_ids[0] if eos_ids else 0, token)
    for eos in eos_ids:
        done = done | (token == eos)
    return token, done, rng


# One compiled program per model graph, shapes and sampling settings (tests/decoding: a second call compiles nothing).
_generate = jax.jit(
    _generate_fn,
    static_argnames=("graphdef", "max_new_tokens", "max_len", "temperature", "top_k", "top_p", "eos_id"),
)


def generate_stream(
    model: nnx.Module,
    prompt: jax.Array,
    max_new_tokens: int,
    *,
    rng: jax.Array,
    chunk_size: int = 16,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | Sequence[int] | None = None,
    prompt_lengths: jax.Array | None = None,
) -> Iterator[jax.Array]:
    """`generate`, yielding the new tokens `chunk_size` at a time: int32 `[B, n]` chunks, n = chunk_size (the
    last one shorter when chunk_size does not divide max_new_tokens), whose concatenation is what `generate`
    returns with the same arguments (the same tokens: the same maths, step by step).

    For callers that decide on the host when to stop: stop strings (`jaxformer.evaluation`), text streamed to a
    screen. Leaving the loop (`break`) ends generation; so does every sequence having emitted an eos id (the
    generator then returns early). `eos_id` may be several ids (a checkpoint's generation_config lists some);
    the rest of a finished row is the first of them.

    Compiled programs: one prefill, and one chunk of `chunk_size` cached steps (`lax.scan`), plus one for a
    shorter last chunk; new prompts of the same shapes compile nothing.
    """
    chunk_size = checks.check_positive_int("chunk_size", chunk_size)
    eos_ids = () if eos_id is None else (eos_id,) if isinstance(eos_id, int | np.integer) else tuple(eos_id)
    prompt, lengths, max_new_tokens, rng, top_k, top_p, eos_ids, max_len = _check_arguments(
        model, "generate_stream", prompt, prompt_lengths, max_new_tokens, rng, temperature, top_k, top_p, eos_ids
    )
    graphdef, state = nnx.split(model)
    params = nnx.state(model, nnx.Param)
    caches, logits = _stream_prefill(graphdef, state, prompt, lengths, max_len=max_len)
    # The graph of the model with its caches, for the steps (the same as inside _stream_prefill; nothing runs).
    step_graphdef = nnx.graphdef(nnx.eval_shape(lambda: _with_cache(graphdef, state, prompt.shape[0], max_len)))
    done = np.zeros((prompt.shape[0],), bool)  # NumPy, as the check below: no small programs compiled
    settings = {"temperature": float(temperature), "top_k": top_k, "top_p": top_p, "eos_ids": eos_ids}
    produced = 0
    while produced < max_new_tokens:
        n = min(chunk_size, max_new_tokens - produced)
        tokens, caches, logits, done, rng = _stream_steps(
            step_graphdef, params, caches, logits, done, rng, n=n, **settings
        )
        produced += n
        yield tokens
        if eos_ids and np.asarray(done).all():
            return


def _with_cache(graphdef, state, batch: int, max_len: int) -> nnx.Module:
    model = nnx.merge(graphdef, state)  # a copy: the caller's model keeps no cache and its train/eval mode
    model.eval()
    model.init_cache(batch, max_len)
    return model


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len"))
def _stream_prefill(graphdef, state, prompt, lengths, *, max_len):
    model = _with_cache(graphdef, state, prompt.shape[0], max_len)
    logits = prefill(model, prompt, lengths)
    return nnx.state(model, nnx.Not(nnx.Param)), logits


@functools.partial(jax.jit, static_argnames=("graphdef", "n", "temperature", "top_k", "top_p", "eos_ids"))
def _stream_steps(graphdef, params, caches, logits, done, rng, *, n, temperature, top_k, top_p, eos_ids):
    """n tokens: each chosen from the logits, then run through the model (one cached step) for the next logits."""

    def step(carry, _):
        caches, logits, done, rng = carry
        token, done, rng = _choose(logits, done, rng, temperature, top_k, top_p, eos_ids)
        model = nnx.merge(graphdef, params, caches)
        logits = model(token[:, None], decode=True)[:, 0]
        return (nnx.state(model, nnx.Not(nnx.Param)), logits, done, rng), token

    (caches, logits, done, rng), tokens = jax.lax.scan(step, (caches, logits, done, rng), length=n)
    return tokens.T, caches, logits, done, rng
