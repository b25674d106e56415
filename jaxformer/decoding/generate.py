"""Autoregressive generation with a KV cache: prefill the prompts once, then one cached step per new token."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformer.decoding.cache import set_cache_index
from jaxformer.decoding.sampling import check_sampling, sample_logits


def check_prompt(prompt, prompt_lengths, vocab_size: int) -> tuple[jax.Array, jax.Array]:
    """`prompt` int `[B, P]` (right-padded), `prompt_lengths` int `[B]` in [1, P] (default P)."""
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer) or prompt.shape[1] < 1:
        raise ValueError(f"`prompt` must be integer token ids [B, P] with P >= 1; got {prompt.dtype} {prompt.shape}.")
    B, P = prompt.shape
    ids = np.asarray(prompt)
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(
            f"`prompt` ids must lie in [0, vocab_size={vocab_size}); got min {ids.min()}, max {ids.max()}."
        )
    if prompt_lengths is None:
        return prompt, jnp.full((B,), P, jnp.int32)
    lengths = np.asarray(prompt_lengths)
    if lengths.shape != (B,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"`prompt_lengths` must be int [B={B}]; got {lengths.dtype} {lengths.shape}.")
    if lengths.min() < 1 or lengths.max() > P:
        raise ValueError(f"`prompt_lengths` must lie in [1, P={P}]; got {lengths.tolist()}.")
    return prompt, jnp.asarray(lengths, jnp.int32)


def cache_length(model: nnx.Module, prompt_len: int, new_tokens: int) -> int:
    """Cache slots for `prompt_len + new_tokens` tokens; an error if absolute positions cannot reach that far."""
    total = prompt_len + new_tokens
    config = model.config
    if config.positional in ("learned", "sinusoidal") and total > config.max_len:
        raise ValueError(
            f"prompt length {prompt_len} + {new_tokens} new tokens = {total} exceeds the model's max_len="
            f"{config.max_len} (positional={config.positional!r}); generate fewer tokens or shorten the prompt."
        )
    return total


def prefill(model: nnx.Module, prompt: jax.Array, lengths: jax.Array) -> jax.Array:
    """Runs the prompts `[B, P]` through the (cache-initialised) model in one call and returns the logits `[B, V]`
    after each prompt's last real token; each cache then continues at its prompt's length."""
    logits = model(prompt, decode=True)
    set_cache_index(model, lengths)
    return logits[jnp.arange(prompt.shape[0]), lengths - 1]


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
      prompt: int `[B, P]`, right-padded when the prompts have different lengths.
      max_new_tokens: number of tokens to generate per prompt.
      rng: a PRNG key (unused when greedy).
      temperature: 0 = greedy (argmax); otherwise logits / temperature are sampled.
      top_k, top_p: keep only the k most likely tokens / the nucleus of mass p (None = no filter).
      eos_id: once a sequence emits it, the rest of its row is eos_id; the loop stops when every row has.
      prompt_lengths: int `[B]` real length of each prompt (default P).

    The prompts are prefilled in one call; each new token is then one cached decoding step inside a
    `lax.while_loop`, all under one `jax.jit` (recompiled only for new shapes or settings).
    """
    max_new_tokens = int(max_new_tokens)
    if max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be >= 1; got {max_new_tokens}.")
    check_sampling(temperature, top_k, top_p, model.config.vocab_size)
    prompt, lengths = check_prompt(prompt, prompt_lengths, model.config.vocab_size)
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

    def cond(carry):
        i, _, _, done, _, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, tokens, logits, done, rng, caches = carry
        rng, key = jax.random.split(rng)
        token = sample_logits(key, logits, temperature=temperature, top_k=top_k, top_p=top_p)
        token = jnp.where(done, fill, token)
        tokens = tokens.at[:, i].set(token)
        if eos_id is not None:
            done = done | (token == eos_id)
        step_model = nnx.merge(step_graphdef, params, caches)
        logits = step_model(token[:, None], decode=True)[:, 0]
        return i + 1, tokens, logits, done, rng, nnx.state(step_model, nnx.Not(nnx.Param))

    tokens = jnp.full((B, max_new_tokens), fill, jnp.int32)
    carry = (jnp.int32(0), tokens, logits, jnp.zeros((B,), bool), rng, caches)
    return jax.lax.while_loop(cond, body, carry)[1]


# One compiled program per model graph, shapes and sampling settings (tests/decoding: a second call compiles nothing).
_generate = jax.jit(
    _generate_fn,
    static_argnames=("graphdef", "max_new_tokens", "max_len", "temperature", "top_k", "top_p", "eos_id"),
)
