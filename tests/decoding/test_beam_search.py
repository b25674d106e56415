"""beam_search: finds what greedy misses, equals greedy at width 1, scores are the model's normalised log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer.decoding import beam_search, generate, length_normalizer
from jaxformer.models import GPT, ModelConfig
from jaxformer.models.transformer import Transformer

BOS, A, B, EOS = 0, 1, 2, 3


class BigramLM(nnx.Module):
    """A hand-built model whose next-token distribution depends only on the current token:

    BOS -> A 0.6, B 0.4;  A -> uniform;  B -> EOS 0.97.  Greedy takes A (then at best 0.6 * 0.25 = 0.15),
    while B, EOS has probability 0.4 * 0.97 = 0.388: only a search that keeps B alive finds it.
    """

    def __init__(self):
        self.config = ModelConfig(
            vocab_size=4, num_layers=1, d_model=4, num_heads=1, d_ff=4, max_len=16, positional="none"
        )
        probs = np.full((4, 4), 0.25)
        probs[BOS] = [0.0, 0.6, 0.4, 0.0]
        probs[B] = [0.01, 0.01, 0.01, 0.97]
        self.table = nnx.Param(jnp.log(jnp.asarray(probs + 1e-12, jnp.float32)))

    def init_cache(self, batch_size, max_len=None, dtype=None):  # no cache: the last token is all it needs
        pass

    def __call__(self, tokens, *, decode=False):
        return self.table[...][tokens]


def test_beam_search_finds_the_sequence_greedy_misses():
    model = BigramLM()
    prompt = np.array([[BOS]], np.int32)
    greedy = generate(model, prompt, 4, rng=jax.random.key(0), temperature=0.0, eos_id=EOS)
    assert greedy[0, 0] == A
    sequences, scores = beam_search(model, prompt, beam_size=2, max_len=4, length_penalty=0.0, eos_id=EOS)
    np.testing.assert_array_equal(sequences[0, 0], [B, EOS, EOS, EOS])
    np.testing.assert_allclose(scores[0, 0], np.log(0.4 * 0.97), rtol=1e-5)
    assert scores[0, 1] < scores[0, 0]


CFG = ModelConfig(vocab_size=40, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, d_ff=64, max_len=24)


def test_width_one_equals_greedy_generation():
    model = GPT(CFG.replace(positional="rope"), rngs=nnx.Rngs(0))
    prompt = np.array([[3, 4, 5, 0], [6, 7, 8, 9]], np.int32)
    valid = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    greedy = generate(model, prompt, 7, rng=jax.random.key(0), temperature=0.0, prompt_lengths=valid.sum(1))
    sequences, _ = beam_search(model, prompt, beam_size=1, max_len=7, src_valid=valid)
    np.testing.assert_array_equal(sequences[:, 0], greedy)


def teacher_forced_log_prob(model, src, src_valid, hypothesis, eos):
    """log p(hypothesis | src) by one teacher-forced pass, counting tokens up to and including the first eos."""
    hits = np.flatnonzero(hypothesis == eos)
    n = hits[0] + 1 if hits.size else len(hypothesis)
    tgt_in = np.concatenate([[BOS], hypothesis[: n - 1]])[None].astype(np.int32)
    log_probs = jax.nn.log_softmax(model(src[None], tgt_in, src_valid=src_valid[None])[0])
    return float(np.sum(np.asarray(log_probs)[np.arange(n), hypothesis[:n]])), n


@pytest.mark.parametrize("scan_layers", [pytest.param(False, marks=pytest.mark.slow), True])
def test_encoder_decoder_scores_are_normalised_model_log_probs(scan_layers):
    cfg = ModelConfig.variant("transformer-tiny", vocab_size=40, dropout_rate=0.0, scan_layers=scan_layers)
    model = Transformer(cfg, rngs=nnx.Rngs(0))
    src = np.array([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]], np.int32)
    src_valid = src > 0
    eos, alpha = 3, 0.6
    sequences, scores = beam_search(
        model, src, beam_size=3, max_len=6, length_penalty=alpha, eos_id=eos, bos_id=BOS, src_valid=src_valid
    )
    assert sequences.shape == (2, 3, 6) and scores.shape == (2, 3)
    assert np.all(np.diff(np.asarray(scores), axis=1) <= 1e-6), "hypotheses are not sorted best first"
    for b in range(2):
        for w in range(3):
            log_p, n = teacher_forced_log_prob(model, src[b], src_valid[b], np.asarray(sequences[b, w]), eos)
            want = log_p / float(length_normalizer(n, alpha))
            np.testing.assert_allclose(scores[b, w], want, rtol=1e-4, atol=1e-4, err_msg=f"{b=} {w=}")


def test_bad_arguments():
    model = Transformer(ModelConfig.variant("transformer-tiny"), rngs=nnx.Rngs(0))
    src = np.array([[5, 6, 7]], np.int32)
    with pytest.raises(ValueError, match="starts decoding from `bos_id`"):
        beam_search(model, src, beam_size=2, max_len=4)
    with pytest.raises(ValueError, match="`beam_size` must be a positive int"):
        beam_search(model, src, beam_size=0, max_len=4, bos_id=1)
    with pytest.raises(
        ValueError, match=r"`eos_id` must be the end-of-sequence token id, in \[0, vocab_size=256\); got 999"
    ):
        beam_search(model, src, beam_size=2, max_len=4, bos_id=1, eos_id=999)
    with pytest.raises(ValueError, match="`src_valid` must have the shape of `src`"):
        beam_search(model, src, beam_size=2, max_len=4, bos_id=1, src_valid=np.ones((1, 4), bool))


def test_a_model_that_cannot_decode_is_refused_by_type():
    """ViT has an `encode` method too; what decides the kind of model is its class, not an attribute name."""
    from jaxformer.models import ViT

    vit = ViT(ModelConfig.variant("vit-tiny"), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"needs an encoder-decoder `Transformer` or a decoder-only model .* got a ViT"):
        beam_search(vit, np.array([[5, 6, 7]], np.int32), beam_size=2, max_len=4, bos_id=1)


def test_more_bad_arguments():
    seq2seq = Transformer(ModelConfig.variant("transformer-tiny", num_layers=1, max_len=8), rngs=nnx.Rngs(0))
    src = np.array([[5, 6, 7]], np.int32)
    for bos in (256, 1.5):
        with pytest.raises(ValueError, match=r"`bos_id` must be the first decoder input"):
            beam_search(seq2seq, src, beam_size=2, max_len=4, bos_id=bos)
    with pytest.raises(ValueError, match=r"`beam_size` must be a positive int; got True"):
        beam_search(seq2seq, src, beam_size=True, max_len=4, bos_id=1)
    with pytest.raises(ValueError, match=r"`length_penalty` must be a finite number; got nan"):
        beam_search(seq2seq, src, beam_size=2, max_len=4, bos_id=1, length_penalty=float("nan"))
    with pytest.raises(TypeError, match=r"`src_valid` must be a boolean array"):
        beam_search(seq2seq, src, beam_size=2, max_len=4, bos_id=1, src_valid=np.ones((1, 3), np.int32))
    with pytest.raises(ValueError, match=r"`max_len`=9 exceeds the model's max_len=8 \(positional='sinusoidal'\)"):
        beam_search(seq2seq, src, beam_size=2, max_len=9, bos_id=1)
    with pytest.raises(ValueError, match=r"`src` must be integer token ids \[B, P\] with B >= 1 and P >= 1"):
        beam_search(seq2seq, np.zeros((1, 0), np.int32), beam_size=2, max_len=4, bos_id=1)
    gpt = GPT(ModelConfig.variant("gpt2-tiny", num_layers=1, vocab_size=32), rngs=nnx.Rngs(0))
    for valid in ([[False, True, True]], [[False, False, False]], [[True, False, True]]):
        with pytest.raises(ValueError, match=r"`src_valid` must mark each prompt as a non-empty prefix"):
            beam_search(gpt, src, beam_size=2, max_len=2, src_valid=np.array(valid))
