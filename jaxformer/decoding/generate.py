"""Autoregressive generation with a KV cache: prefill the prompts once, then one cached step per new token."""

from __future__ import annotations

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
    check_decoder_only(model, "generate")
    max_new_tokens = checks.check_positive_int("max_new_tokens", max_new_tokens)
    vocab_size = model.config.vocab_size
    check_sampling(temperature, top_k, top_p, vocab_size)
    if top_k is not None:
        top_k = int(top_k)
    if top_p is not None:
        top_p = float(top_p)
    if eos_id is not None:
        eos_id = checks.check_token_id("eos_id", eos_id, vocab_size, "the end-of-sequence token id")
    if temperature == 0 and rng is None:
        rng = jax.random.key(0)  # greedy decoding draws nothing
    rng = checks.check_prng_key("rng", rng)
    prompt, lengths = check_prompt(prompt, prompt_lengths, vocab_size)
    max_len = cache_length(model, prompt.shape[1], max_new_tokens)
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
        rng, key = jax.random.split(rng)
        token = sample_logits(key, logits, temperature=temperature, top_k=top_k, top_p=top_p)
        token = jnp.where(done, fill, token)
        tokens = tokens.at[:, i].set(token)
        if eos_id is not None:
            done = done | (token == eos_id)
        return token, tokens, done, rng

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


# One compiled program per model graph, shapes and sampling settings (tests/decoding: a second call compiles nothing).
_generate = jax.jit(
    _generate_fn,
    static_argnames=("graphdef", "max_new_tokens", "max_len", "temperature", "top_k", "top_p", "eos_id"),
)
