"""generate: greedy equals the argmax of full forwards, batches of different prompt lengths, eos, sampling."""

import importlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer.decoding import generate
from jaxformer.models import GPT, ModelConfig
from tests.models.helpers import scanned_copy

GENERATE = importlib.import_module("jaxformer.decoding.generate")  # the module (the package exports the function)

CFG = ModelConfig(vocab_size=48, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, d_ff=64, max_len=24)
PROMPT = np.array([[5, 7, 9, 0, 0, 0], [1, 2, 3, 4, 5, 6], [8, 0, 0, 0, 0, 0]], np.int32)
LENGTHS = np.array([3, 6, 1], np.int32)


def greedy_by_full_forward(model, prompt, steps):
    """The reference: re-run the whole sequence without a cache and take the argmax at its last token, step by
    step. The sequence sits in a fixed buffer (one compilation); being causal, the zeros after it do not matter."""
    model.eval()
    forward = nnx.jit(lambda m, x: m(x))
    buffer = np.zeros((1, CFG.max_len), np.int32)
    n = len(prompt)
    buffer[0, :n] = prompt
    for _ in range(steps):
        buffer[0, n] = int(jnp.argmax(forward(model, buffer)[0, n - 1]))
        n += 1
    return buffer[0, len(prompt) : n].tolist()


@pytest.mark.parametrize("positional", ["learned", "rope", "alibi"])
def test_greedy_generation_equals_argmax_of_the_full_forward(positional):
    model = GPT(CFG.replace(positional=positional, dropout_rate=0.1), rngs=nnx.Rngs(0))
    out = generate(model, PROMPT, 10, rng=jax.random.key(0), temperature=0.0, prompt_lengths=LENGTHS)
    assert out.shape == (3, 10) and out.dtype == jnp.int32
    for b in range(3):
        assert out[b].tolist() == greedy_by_full_forward(model, PROMPT[b, : LENGTHS[b]], 10), f"prompt {b}"


def test_generate_leaves_the_model_untouched():
    model = GPT(CFG.replace(dropout_rate=0.1), rngs=nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    generate(model, PROMPT, 4, rng=jax.random.key(0))
    assert model.blocks.layers[0].self_attention.cache_index is None
    assert not model.blocks.layers[0].self_attention.deterministic  # still in training mode
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, nnx.state(model, nnx.Param)))


def test_eos_ends_each_row_and_the_rest_is_eos():
    model = GPT(CFG, rngs=nnx.Rngs(0))
    free = generate(model, PROMPT, 8, rng=jax.random.key(0), temperature=0.0, prompt_lengths=LENGTHS)
    eos = int(free[0, 2])  # make the third greedy token of row 0 the end token
    out = generate(model, PROMPT, 8, rng=jax.random.key(0), temperature=0.0, prompt_lengths=LENGTHS, eos_id=eos)
    for row_free, row in zip(np.asarray(free), np.asarray(out), strict=True):
        hits = np.flatnonzero(row_free == eos)
        end = hits[0] + 1 if hits.size else len(row)
        np.testing.assert_array_equal(row[:end], row_free[:end])
        assert np.all(row[end:] == eos)


def test_sampling_is_reproducible_and_top_k_one_is_greedy():
    model = GPT(CFG, rngs=nnx.Rngs(0))
    a = generate(model, PROMPT, 6, rng=jax.random.key(1), temperature=1.0, top_p=0.9)
    b = generate(model, PROMPT, 6, rng=jax.random.key(1), temperature=1.0, top_p=0.9)
    c = generate(model, PROMPT, 6, rng=jax.random.key(2), temperature=1.0, top_p=0.9)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = generate(model, PROMPT, 6, rng=jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(generate(model, PROMPT, 6, rng=jax.random.key(3), top_k=1), greedy)


def test_scanned_layers_generate_like_looped_ones():
    model = GPT(CFG, rngs=nnx.Rngs(0))
    scanned = scanned_copy(model)
    kwargs = dict(rng=jax.random.key(0), temperature=0.0, prompt_lengths=LENGTHS)
    np.testing.assert_array_equal(generate(scanned, PROMPT, 5, **kwargs), generate(model, PROMPT, 5, **kwargs))


def test_bad_arguments():
    model = GPT(CFG, rngs=nnx.Rngs(0))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="6 \\+ 19 new tokens = 25 exceeds the model's max_len=24"):
        generate(model, PROMPT, 19, rng=key)
    with pytest.raises(ValueError, match=r"`prompt_lengths` must lie in \[1, P=6\]"):
        generate(model, PROMPT, 2, rng=key, prompt_lengths=np.array([0, 6, 1]))
    with pytest.raises(ValueError, match=r"`prompt` ids must lie in \[0, vocab_size=48\)"):
        generate(model, PROMPT + 48, 2, rng=key)
    with pytest.raises(ValueError, match="`max_new_tokens` must be a positive int; got 0"):
        generate(model, PROMPT, 0, rng=key)
    with pytest.raises(ValueError, match="`top_k`"):
        generate(model, PROMPT, 2, rng=key, top_k=0)


def test_generate_compiles_once_for_new_prompts_and_keys(monkeypatch):
    chex.clear_trace_counter()
    traces = []

    def counted(*args, **kwargs):
        traces.append(1)
        return GENERATE._generate_fn(*args, **kwargs)

    static = ("graphdef", "max_new_tokens", "max_len", "temperature", "top_k", "top_p", "eos_id")
    monkeypatch.setattr(GENERATE, "_generate", jax.jit(chex.assert_max_traces(counted, n=1), static_argnames=static))
    model = GPT(ModelConfig.variant("gpt2-tiny", num_layers=1, vocab_size=32), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for seed in range(3):
        prompt = rng.integers(0, 32, size=(2, 5)).astype(np.int32)
        GENERATE.generate(model, prompt, 4, rng=jax.random.key(seed), temperature=0.8, top_k=8)
    assert len(traces) == 1
    # The guard is live: a new prompt shape is a new trace, which it refuses.
    with pytest.raises(AssertionError, match="traced > 1 times"):
        GENERATE.generate(model, np.zeros((2, 6), np.int32), 4, rng=jax.random.key(0), temperature=0.8)


def test_more_bad_arguments_name_what_is_wrong():
    model = GPT(CFG, rngs=nnx.Rngs(0))
    key = jax.random.key(0)
    for rng, match in ((None, r"got None"), (0, r"got 0 \(int\)"), (np.zeros(2, np.float32), r"dtype float32")):
        with pytest.raises(TypeError, match=rf"`rng` must be a jax.random key.*{match}"):
            generate(model, PROMPT, 2, rng=rng)
    greedy = generate(model, PROMPT, 2, rng=None, temperature=0.0)  # greedy draws nothing: no key needed
    np.testing.assert_array_equal(greedy, generate(model, PROMPT, 2, rng=key, temperature=0.0))
    for eos in (48, -1, 1.5):
        with pytest.raises(ValueError, match=r"`eos_id` must be the end-of-sequence token id"):
            generate(model, PROMPT, 2, rng=key, eos_id=eos)
    with pytest.raises(ValueError, match=r"`max_new_tokens` must be a positive int; got 2.7"):
        generate(model, PROMPT, 2.7, rng=key)
    with pytest.raises(ValueError, match=r"`temperature` must be a finite number >= 0 \(0 = greedy\); got inf"):
        generate(model, PROMPT, 2, rng=key, temperature=float("inf"))
    with pytest.raises(TypeError, match=r"`temperature` must be a real number"):
        generate(model, PROMPT, 2, rng=key, temperature="0.7")
    with pytest.raises(ValueError, match=r"`top_k` must be an int in \[1, vocab_size=48\] or None; got True"):
        generate(model, PROMPT, 2, rng=key, top_k=True)
    with pytest.raises(ValueError, match=r"`prompt` must be integer token ids \[B, P\] with B >= 1 and P >= 1"):
        generate(model, np.zeros((0, 3), np.int32), 2, rng=key)


def test_models_that_do_not_continue_prompts_are_refused_by_type():
    from jaxformer.models import BERT, Transformer

    bert = BERT(ModelConfig.variant("bert-tiny", num_layers=1), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"generate needs a decoder-only model .* got a BERT"):
        generate(bert, PROMPT, 2, rng=jax.random.key(0))
    seq2seq = Transformer(ModelConfig.variant("transformer-tiny", num_layers=1), rngs=nnx.Rngs(0))
    with pytest.raises(TypeError, match=r"encoder-decoder Transformer decodes from a source with decoding.beam_search"):
        generate(seq2seq, PROMPT, 2, rng=jax.random.key(0))


def test_cache_surgery_checks_indices():
    from jaxformer.decoding import reorder_cache, set_cache_index

    model = GPT(CFG, rngs=nnx.Rngs(0))
    set_cache_index(model, np.array([1, 2]))  # no cache yet: nothing to set
    model.init_cache(2, 8)
    set_cache_index(model, [3, 8])  # a list is an array; 8 = max_len: full
    for bad in ([9, 0], [-1, 0]):
        with pytest.raises(ValueError, match=r"`index` must lie in \[0, 9\) \(the cache holds max_len=8 tokens\)"):
            set_cache_index(model, np.array(bad))
    with pytest.raises(ValueError, match=r"`index` must be a scalar or \[B=2\]"):
        set_cache_index(model, np.array([1, 1, 1]))
    with pytest.raises(TypeError, match=r"`index` must have an integer dtype"):
        set_cache_index(model, np.array([1.0, 1.0]))
    with pytest.raises(ValueError, match=r"KV cache overflow: sequence 1 has 8 cached tokens"):
        model(np.array([[1], [2]]), decode=True)
    for bad in ([0, 2], [0, -1]):
        with pytest.raises(ValueError, match=r"`batch_indices` must lie in \[0, 2\)"):
            reorder_cache(model, np.array(bad))
    with pytest.raises(TypeError, match=r"`batch_indices` must have an integer dtype"):
        reorder_cache(model, np.array([0.0, 1.0]))
    reorder_cache(model, [1, 0, 0])
    assert model.blocks.cache_index().tolist() == [8, 3, 3]


def test_streamed_chunks_concatenate_to_generate():
    model = GPT(CFG, rngs=nnx.Rngs(0))
    sampling = {"temperature": 1.0, "top_k": 5, "rng": jax.random.key(1), "prompt_lengths": LENGTHS}
    want = np.asarray(generate(model, PROMPT, 12, **sampling))
    chunks = list(GENERATE.generate_stream(model, PROMPT, 12, chunk_size=5, **sampling))
    assert [c.shape for c in chunks] == [(3, 5), (3, 5), (3, 2)]
    np.testing.assert_array_equal(np.concatenate(chunks, axis=1), want)
    # Every row done at one of the eos ids: the stream ends early, each row filled with the first eos id.
    eos = [int(t) for t in want[:, 0]]
    chunks = list(GENERATE.generate_stream(model, PROMPT, 12, chunk_size=5, eos_id=eos, **sampling))
    assert len(chunks) == 1 and (np.asarray(chunks[0])[:, 1:] == eos[0]).all()
