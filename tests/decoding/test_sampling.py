"""Token choice: greedy, temperature, top-k and nucleus filters, against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxformer import decoding
from jaxformer.decoding.sampling import check_sampling

LOGITS = np.log(np.array([[0.5, 0.2, 0.15, 0.1, 0.05], [0.05, 0.1, 0.15, 0.2, 0.5]], np.float32))


def test_greedy_is_argmax():
    np.testing.assert_array_equal(decoding.sample_logits(None, LOGITS, temperature=0.0), [0, 4])


def test_top_k_and_top_p_keep_the_expected_support():
    kept = np.asarray(decoding.top_k_logits(jnp.asarray(LOGITS), 2)) > -1e29
    np.testing.assert_array_equal(kept, [[1, 1, 0, 0, 0], [0, 0, 0, 1, 1]])
    # Mass before each sorted token: 0, .5, .7, .85, .95 -> top_p=0.7 keeps the three tokens with mass-before < .7.
    kept = np.asarray(decoding.top_p_logits(jnp.asarray(LOGITS), 0.7)) > -1e29
    np.testing.assert_array_equal(kept, [[1, 1, 0, 0, 0], [0, 0, 0, 1, 1]])
    kept = np.asarray(decoding.top_p_logits(jnp.asarray(LOGITS), 0.71)) > -1e29
    np.testing.assert_array_equal(kept, [[1, 1, 1, 0, 0], [0, 0, 1, 1, 1]])
    kept = np.asarray(decoding.top_p_logits(jnp.asarray(LOGITS), 0.01)) > -1e29  # the top token always survives
    np.testing.assert_array_equal(kept, [[1, 0, 0, 0, 0], [0, 0, 0, 0, 1]])


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(1.0, None, None), (0.5, None, None), (1.0, 3, None), (2.0, None, 0.8)]
)
def test_sampling_frequencies_match_the_filtered_tempered_softmax(temperature, top_k, top_p):
    n = 40_000
    logits = jnp.broadcast_to(jnp.asarray(LOGITS[0]), (n, 5))
    draws = decoding.sample_logits(jax.random.key(0), logits, temperature=temperature, top_k=top_k, top_p=top_p)
    freq = np.bincount(np.asarray(draws), minlength=5) / n
    p = np.exp(np.float64(LOGITS[0]) / temperature)
    support = np.ones(5, bool)
    if top_k is not None:
        support &= np.arange(5) < top_k  # LOGITS[0] is sorted descending
    if top_p is not None:
        probs = p / p.sum()
        support &= (np.cumsum(probs) - probs) < top_p
    want = np.where(support, p, 0.0) / np.where(support, p, 0.0).sum()
    np.testing.assert_allclose(freq, want, atol=0.01)
    assert np.all(freq[~support] == 0)


def test_bad_settings():
    with pytest.raises(ValueError, match="temperature"):
        check_sampling(-1.0, None, None, 5)
    with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1, vocab_size=5\]"):
        check_sampling(1.0, 6, None, 5)
    with pytest.raises(ValueError, match=r"`top_p` must be a finite number in \(0, 1\]"):
        check_sampling(1.0, None, 0.0, 5)


def test_sampling_functions_check_their_arguments():
    key = jax.random.key(0)
    for rng in (0, None):
        with pytest.raises(TypeError, match=r"`rng` must be a jax.random key"):
            decoding.sample_logits(rng, LOGITS)
    with pytest.raises(ValueError, match=r"`temperature` must be a finite number >= 0"):
        decoding.sample_logits(key, LOGITS, temperature=-1.0)
    with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1, vocab_size=5\]"):
        decoding.sample_logits(key, LOGITS, top_k=6)
    with pytest.raises(ValueError, match=r"`top_p` must be a finite number in \(0, 1\]; got 2.0"):
        decoding.sample_logits(key, LOGITS, top_p=2.0)
    with pytest.raises(TypeError, match=r"`logits` must have a floating dtype"):
        decoding.sample_logits(key, np.ones((2, 5), np.int32))
    with pytest.raises(ValueError, match=r"`logits` must have at least one token \(V >= 1\)"):
        decoding.sample_logits(key, np.zeros((2, 0), np.float32))
    for k in (0, 6, 2.5):
        with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1, vocab_size=5\]"):
            decoding.top_k_logits(LOGITS, k)
    for p in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"`top_p` must be a finite number in \(0, 1\]"):
            decoding.top_p_logits(LOGITS, p)
    np.testing.assert_array_equal(decoding.top_k_logits(LOGITS.tolist(), 2), decoding.top_k_logits(LOGITS, 2))
    with pytest.raises(TypeError, match=r"`alpha` must be a real number"):
        decoding.length_normalizer(3, "x")
