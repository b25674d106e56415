"""Beam search over a KV cache, for the encoder-decoder Transformer and for decoder-only models."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer.decoding.cache import reorder_cache
from jaxformer.decoding.generate import cache_length, check_prompt, prefill
from jaxformer.models.transformer import Transformer
from jaxformer.ops import MASKED_LOGIT

_NEG = MASKED_LOGIT  # the finite "minus infinity" of dead beams and empty finished slots (never overflows to NaN)


def length_normalizer(length, alpha: float):
    """GNMT length penalty lp(n) = ((5 + n) / 6)^alpha (Wu et al. 2016); scores are log p / lp(n)."""
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
      src: int `[B, S]`.
      beam_size: W, number of hypotheses kept per input.
      max_len: number of tokens to generate (the eos included).
      length_penalty: alpha of the GNMT penalty; finished hypotheses are ranked by log p / ((5 + n) / 6)^alpha.
        0 ranks by total log-probability; larger values favour longer outputs.
      eos_id: ends a hypothesis (None: every hypothesis runs to max_len).
      bos_id: first decoder input of an encoder-decoder model (required there).
      src_valid: bool `[B, S]`, False at padding: the source's padding (encoder-decoder), or the right padding
        of prompts of different lengths (decoder-only).

    Returns:
      `(sequences int32 [B, W, max_len], scores float32 [B, W])`: generated tokens (eos_id, or 0, after a
      hypothesis ends) and their length-normalised log-probabilities.
    """
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"`beam_size` must be a positive int; got {beam_size!r}.")
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"`max_len` must be a positive int; got {max_len!r}.")
    encoder_decoder = _is_encoder_decoder(model)
    vocab_size = model.config.vocab_size
    if beam_size > vocab_size:
        raise ValueError(f"`beam_size`={beam_size} exceeds vocab_size={vocab_size}.")
    if encoder_decoder and bos_id is None:
        raise ValueError("An encoder-decoder model starts decoding from `bos_id`: pass bos_id.")
    for name, token in (("eos_id", eos_id), ("bos_id", bos_id)):
        if token is not None and not 0 <= token < vocab_size:
            raise ValueError(f"`{name}`={token} is not a token id in [0, vocab_size={vocab_size}).")
    lengths = None
    if src_valid is not None:
        src_valid = jnp.asarray(src_valid, bool)
        if src_valid.shape != jnp.shape(src):
            raise ValueError(f"`src_valid` must have the shape of `src` {jnp.shape(src)}; got {src_valid.shape}.")
        lengths = src_valid.sum(-1).astype(jnp.int32)
    src, lengths = check_prompt(src, None if encoder_decoder else lengths, vocab_size)
    cache_len = max_len if encoder_decoder else cache_length(model, src.shape[1], max_len)
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
