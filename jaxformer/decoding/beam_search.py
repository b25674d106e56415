"""Beam search over a KV cache, for the encoder-decoder Transformer and for decoder-only models."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxformer import checks
from jaxformer.decoding.cache import reorder_cache
from jaxformer.decoding.generate import cache_length, check_prompt, prefill
from jaxformer.models.transformer import Transformer
from jaxformer.nn.blocks import ABSOLUTE_POSITIONAL
from jaxformer.ops import MASKED_LOGIT

_NEG = MASKED_LOGIT  # the finite "minus infinity" of dead beams and empty finished slots (never overflows to NaN)


def length_normalizer(length, alpha: float):
    """GNMT length penalty lp(n) = ((5 + n) / 6)^alpha (Wu et al. 2016); scores are log p / lp(n).
    alpha: a finite number (may be traced)."""
    alpha = checks.check_real("alpha", alpha)
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def beam_search(
    model: nnx.Module,
    src: jax.Array,
    *,
    beam_size: int,
    max_len: int,
    length_penalty: float = 0.6,
    eos_id: int | None = None,
    bos_id: int | None = None,
    src_valid: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """The `beam_size` best continuations of each input under the model, best first.

    Args:
      model: the encoder-decoder `Transformer` (`src` is the source; decoding starts from `bos_id`) or a
        decoder-only model with a KV cache, e.g. `GPT` (`src` is the prompt, continued after its last token).
      src: int `[B, S]` (B, S >= 1), ids in [0, V).
      beam_size: W, number of hypotheses kept per input, an int in [1, V].
      max_len: number of tokens to generate (the eos included), an int >= 1. With learned or sinusoidal
        positions it must fit the model's `max_len` (with the prompt, for a decoder-only model).
      length_penalty: alpha of the GNMT penalty (a finite number); finished hypotheses are ranked by
        log p / ((5 + n) / 6)^alpha. 0 ranks by total log-probability; larger values favour longer outputs.
      eos_id: a token id in [0, V) that ends a hypothesis (None: every hypothesis runs to max_len).
      bos_id: a token id in [0, V), the first decoder input of an encoder-decoder model (required there).
      src_valid: bool `[B, S]`, False at padding: the source's padding (encoder-decoder), or the right padding
        of prompts of different lengths (decoder-only: True on a non-empty prefix of each row).

    Returns:
      `(sequences int32 [B, W, max_len], scores float32 [B, W])`: generated tokens (eos_id, or 0, after a
      hypothesis ends) and their length-normalised log-probabilities.
    """
    beam_size = checks.check_positive_int("beam_size", beam_size)
    max_len = checks.check_positive_int("max_len", max_len)
    length_penalty = checks.check_real("length_penalty", length_penalty)
    encoder_decoder = _is_encoder_decoder(model)
    config = model.config
    vocab_size = config.vocab_size
    if beam_size > vocab_size:
        raise ValueError(f"`beam_size`={beam_size} exceeds vocab_size={vocab_size}.")
    if encoder_decoder and bos_id is None:
        raise ValueError("An encoder-decoder model starts decoding from `bos_id`: pass bos_id.")
    if eos_id is not None:
        eos_id = checks.check_token_id("eos_id", eos_id, vocab_size, "the end-of-sequence token id")
    if bos_id is not None:
        bos_id = checks.check_token_id("bos_id", bos_id, vocab_size, "the first decoder input")
    src = checks.check_array("src", src)
    lengths = None
    if src_valid is not None:
        src_valid = checks.check_array("src_valid", src_valid)
        checks.check_bool("src_valid", src_valid, meaning="True = a real token, False = padding")
        if src_valid.shape != src.shape:
            raise ValueError(f"`src_valid` must have the shape of `src` {src.shape}; got {src_valid.shape}.")
        lengths = src_valid.sum(-1).astype(jnp.int32)
        if not encoder_decoder:
            _check_right_padding(src_valid)
    src, lengths = check_prompt(src, None if encoder_decoder else lengths, vocab_size, name="src")
    if encoder_decoder:
        # The decoder reads bos and then each of the max_len tokens chosen (the last one's logits go unused).
        if config.positional in ABSOLUTE_POSITIONAL and max_len > config.max_len:
            raise ValueError(
                f"`max_len`={max_len} exceeds the model's max_len={config.max_len} (positional="
                f"{config.positional!r}): the decoder has no position for the later tokens; lower max_len."
            )
        cache_len = max_len + 1
    else:
        cache_len = cache_length(model, src.shape[1], max_len)
    graphdef, state = nnx.split(model)
    return _beam_search(
        graphdef,
        state,
        src,
        src_valid,
        lengths,
        beam_size=beam_size,
        max_len=max_len,
        cache_len=cache_len,
        alpha=float(length_penalty),
        eos_id=eos_id,
        bos_id=bos_id,
        encoder_decoder=encoder_decoder,
    )


def _check_right_padding(src_valid) -> None:
    """A decoder-only model continues each prompt after its last real token: `src_valid` must be True on a
    non-empty prefix of each row (right padding), checked when it is known."""
    valid = checks.concrete_or_none(src_valid)
    if valid is None:
        return
    lengths = valid.sum(-1)
    prefix = np.arange(valid.shape[-1])[None, :] < lengths[:, None]
    bad = (lengths < 1) | (valid != prefix).any(-1)
    if bad.any():
        b = int(np.argmax(bad))
        raise ValueError(
            f"`src_valid` must mark each prompt as a non-empty prefix (right padding: True then False); row {b} is "
            f"{valid[b].astype(int).tolist()}."
        )


def _is_encoder_decoder(model: nnx.Module) -> bool:
    """True for the encoder-decoder `Transformer`, False for a decoder-only model with a KV cache (`GPT`); a
    TypeError for anything else (ViT, for one, has `encode` but nothing to decode)."""
    if isinstance(model, Transformer):
        return True
    if callable(getattr(model, "init_cache", None)):
        return False
    raise TypeError(
        f"beam_search needs an encoder-decoder `Transformer` or a decoder-only model with a KV cache (`init_cache`, "
        f"e.g. `GPT`); got a {type(model).__name__}."
    )


@functools.partial(
    jax.jit,
    static_argnames=("graphdef", "beam_size", "max_len", "cache_len", "alpha", "eos_id", "bos_id", "encoder_decoder"),
)
def _beam_search(
    graphdef, state, src, src_valid, lengths, *, beam_size, max_len, cache_len, alpha, eos_id, bos_id, encoder_decoder
):
    B, W = src.shape[0], beam_size
    model = nnx.merge(graphdef, state)
    model.eval()
    tile = jnp.repeat(jnp.arange(B), W)  # [B * W]: batch entry of each beam
    if encoder_decoder:
        memory = model.encode(src, src_valid=src_valid)[tile]
        memory_valid = None if src_valid is None else src_valid[tile]
        model.init_cache(B * W, cache_len)

        def step(m, tokens):
            return m.decode(tokens, memory, src_valid=memory_valid, decode=True)

        logits = step(model, jnp.full((B * W, 1), bos_id, jnp.int32))[:, 0]
    else:

        def step(m, tokens):
            return m(tokens, decode=True)

        model.init_cache(B, cache_len)
        logits = prefill(model, src, lengths)[tile]
        reorder_cache(model, tile)  # one prefill, copied to the W beams
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(B, W, -1)
    V = log_probs.shape[-1]
    step_graphdef, params, caches = nnx.split(model, nnx.Param, ...)

    fill = 0 if eos_id is None else eos_id
    # All beams start identical; only beam 0 is alive at first, so the first step picks W distinct tokens.
    alive_lp = jnp.tile(jnp.array([0.0] + [_NEG] * (W - 1), jnp.float32), (B, 1))
    alive_seq = jnp.full((B, W, max_len), fill, jnp.int32)
    finished_seq = alive_seq
    finished_score = jnp.full((B, W), _NEG, jnp.float32)

    def cond(carry):
        i, alive_lp, _, _, finished_score, _, _ = carry
        # Log-probabilities only fall: an alive beam can at best reach alive_lp / lp(max_len) (alpha >= 0).
        best_possible = alive_lp.max(-1) / length_normalizer(max_len, alpha)
        settled = finished_score.min(-1) >= best_possible if alpha >= 0 else jnp.zeros((B,), bool)
        return (i < max_len) & ~jnp.all(settled)

    def body(carry):
        i, alive_lp, alive_seq, finished_seq, finished_score, log_probs, caches = carry
        candidate_lp = (alive_lp[:, :, None] + log_probs).reshape(B, W * V)
        top_lp, top_index = jax.lax.top_k(candidate_lp, 2 * W)  # 2W: enough for W that have not ended
        parent, token = top_index // V, (top_index % V).astype(jnp.int32)
        top_seq = jnp.take_along_axis(alive_seq, parent[:, :, None], axis=1).at[:, :, i].set(token)
        ends = (token == eos_id) if eos_id is not None else jnp.zeros_like(token, bool)
        ends_now = ends | (i + 1 == max_len)  # at max_len every hypothesis counts as finished
        new_score = jnp.where(ends_now & (top_lp > _NEG / 2), top_lp / length_normalizer(i + 1, alpha), _NEG)
        # Finished: best W of those already finished and those finishing now.
        pool_score = jnp.concatenate([finished_score, new_score], axis=1)
        pool_seq = jnp.concatenate([finished_seq, top_seq], axis=1)
        finished_score, keep = jax.lax.top_k(pool_score, W)
        finished_seq = jnp.take_along_axis(pool_seq, keep[:, :, None], axis=1)
        # Alive: best W that did not end.
        alive_lp, keep = jax.lax.top_k(jnp.where(ends, _NEG, top_lp), W)
        alive_seq = jnp.take_along_axis(top_seq, keep[:, :, None], axis=1)
        beams = (jnp.arange(B)[:, None] * W + jnp.take_along_axis(parent, keep, axis=1)).reshape(-1)
        step_model = nnx.merge(step_graphdef, params, caches)
        reorder_cache(step_model, beams)
        next_token = jnp.take_along_axis(token, keep, axis=1).reshape(B * W, 1)
        logits = step(step_model, next_token)[:, 0]
        log_probs = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(B, W, V)
        caches = nnx.state(step_model, nnx.Not(nnx.Param))
        return i + 1, alive_lp, alive_seq, finished_seq, finished_score, log_probs, caches

    carry = (jnp.int32(0), alive_lp, alive_seq, finished_seq, finished_score, log_probs, caches)
    _, _, _, finished_seq, finished_score, _, _ = jax.lax.while_loop(cond, body, carry)
    return finished_seq, finished_score
