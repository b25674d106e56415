"""jaxformer.evaluation without lm_eval: windows, log-likelihoods against float64 references of full forwards,
batching / bucketing / deduplication invariance, tokenization as lm_eval's hf backend does it, generation with stop
strings. The comparisons with lm_eval's own hf backend are in test_harness.py (slow, with torch)."""

import functools
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx
from hypothesis import given
from hypothesis import strategies as st

from jaxformer import data, evaluation
from jaxformer.decoding import generate
from jaxformer.evaluation import programs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LLAMA = os.path.join(ROOT, "tests", "fixtures", "pretrained", "llama")  # bos "<s>" first; max_position_embeddings 64
EVAL = os.path.join(ROOT, "tests", "fixtures", "eval")


@pytest.fixture(scope="module")
def scorer():
    return evaluation.load(LLAMA, batch_size=4)


@functools.cache
def _forward(model):
    return nnx.jit(lambda m, x: m(x))


def reference_loglikelihood(model, context, continuation):
    """The float64 log-softmax of one unpadded full forward, summed over the continuation, and its greedy flag.
    (The sequence sits in a buffer of the model's context length: one compile; being causal, the zeros after it
    do not matter.)"""
    tokens = (context + continuation)[:-1]
    buffer = np.zeros((1, model.config.max_len), np.int32)
    buffer[0, : len(tokens)] = tokens
    logits = np.asarray(_forward(model)(model, buffer)[0, : len(tokens)], np.float64)
    top = logits.max(-1, keepdims=True)
    logprobs = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    rows = np.arange(len(context) - 1, len(tokens))
    return float(logprobs[rows, continuation].sum()), bool((logits[rows].argmax(-1) == continuation).all())


def mc_pairs():
    with open(os.path.join(EVAL, "multiple_choice.jsonl")) as f:
        docs = [json.loads(line) for line in f]
    return [(f"Question: {d['question']}\nAnswer:", " " + c) for d in docs for c in d["choices"]]


# -- windows -------------------------------------------------------------------------------------------------------


@given(n=st.integers(0, 60), max_length=st.integers(1, 12), stride=st.none() | st.integers(1, 12))
def test_rolling_windows_predict_every_token_once_reading_at_most_max_length(n, max_length, stride):
    stride = None if stride is None else min(stride, max_length)
    tokens = list(range(100, 100 + n))
    windows = evaluation.rolling_windows(tokens, 7, max_length, stride)
    assert [t for _, cont in windows for t in cont] == tokens
    for k, (context, continuation) in enumerate(windows):
        inputs = (context + continuation)[:-1]
        assert 1 <= len(continuation) <= max_length and len(inputs) <= max_length
        if k == 0:
            assert context == [7] and inputs == [7, *tokens[: len(continuation) - 1]]
        else:  # the tokens right before the predicted ones, as many as fit
            start = tokens.index(continuation[0])
            assert inputs == tokens[start + len(continuation) - 1 - max_length : start + len(continuation) - 1]
            assert len(inputs) == max_length


def test_rolling_windows_match_lm_eval_docstring_example():
    # lm_eval.api.model.LM.loglikelihood_rolling's example: tokens 0..9, prefix BOS, max length 4.
    windows = evaluation.rolling_windows(list(range(10)), -1, 4)
    assert [(c + t)[:-1] for c, t in windows] == [[-1, 0, 1, 2], [3, 4, 5, 6], [5, 6, 7, 8]]
    assert [t for _, t in windows] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_rolling_windows_check_their_arguments():
    with pytest.raises(ValueError, match="stride"):
        evaluation.rolling_windows([1, 2], 0, 4, stride=5)
    with pytest.raises(ValueError, match="max_length"):
        evaluation.rolling_windows([1, 2], 0, 0)


# -- tokens as lm_eval's hf backend makes them ---------------------------------------------------------------------


def test_encoding_adds_the_tokenizers_bos_once(scorer):
    assert scorer.bos_id == 1 and scorer.prefix_id == 1
    ids = scorer.encode("To be")
    assert ids[0] == 1 and ids[1:] == scorer.tokenizer.encode("To be").tolist()
    with_bos = scorer.encode("<s>To be")  # a text that starts with bos gets no second one
    assert with_bos == scorer.tokenizer.encode("<s>To be").tolist() and with_bos[:2].count(1) == 1
    assert scorer.encode("To be", add_special_tokens=False) == ids[1:]


def test_pairs_split_where_the_context_ends_and_move_trailing_spaces(scorer):
    context, continuation = scorer.encode_pair("Question: why?\nAnswer: ", "because")
    assert context == scorer.encode("Question: why?\nAnswer:")
    assert context + continuation == scorer.encode("Question: why?\nAnswer: because")
    # An empty context reads the prefix (bos) token.
    context, continuation = scorer.encode_pair("", "To be")
    assert context == [1] and continuation == scorer.encode("To be", add_special_tokens=False)


def test_an_empty_context_needs_a_prefix_token():
    model = evaluation.load(LLAMA).model
    scorer = evaluation.Scorer(model, data.HFTokenizer.from_directory(LLAMA))  # no bos / eos given
    with pytest.raises(ValueError, match="prefix_id"):
        scorer.loglikelihood([("", "To be")])
    with pytest.raises(ValueError, match="prefix_id"):
        scorer.loglikelihood_rolling(["To be"])


# -- log-likelihoods -----------------------------------------------------------------------------------------------


def test_loglikelihoods_equal_float64_references_of_full_forwards(scorer):
    pairs = mc_pairs()[:12]
    got = scorer.loglikelihood(pairs)
    for (context, continuation), (logprob, greedy) in zip(pairs, got, strict=True):
        want, want_greedy = reference_loglikelihood(scorer.model, *scorer.encode_pair(context, continuation))
        assert logprob == pytest.approx(want, abs=1e-5) and greedy == want_greedy


def test_greedy_flag_is_true_exactly_for_the_argmax_continuation(scorer):
    context = scorer.encode("Question: what comes next?\nAnswer:")
    greedy = greedy_ids(scorer, context)[:4].tolist()
    other = [*greedy[:3], (greedy[3] + 1) % scorer.model.config.vocab_size]
    (lp_greedy, is_greedy), (lp_other, is_other) = scorer.loglikelihood_tokens([(context, greedy), (context, other)])
    assert is_greedy and not is_other
    assert lp_greedy == pytest.approx(reference_loglikelihood(scorer.model, context, greedy)[0], abs=1e-5)


def test_batching_bucketing_and_shared_rows_change_nothing(scorer):
    pairs = mc_pairs()[:16]
    batched = scorer.loglikelihood(pairs)
    one_by_one = evaluation.Scorer(
        scorer.model, scorer.tokenizer, batch_size=1, bos_id=scorer.bos_id, eos_id=scorer.eos_id
    ).loglikelihood(pairs)
    np.testing.assert_allclose([lp for lp, _ in batched], [lp for lp, _ in one_by_one], atol=2e-5, rtol=0)
    assert [g for _, g in batched] == [g for _, g in one_by_one]
    # One-token continuations of one context share one model row.
    context = scorer.encode("Question: pick a letter.\nAnswer:")
    rows_before = scorer.stats.rows
    choices = [(context, [t]) for t in (10, 11, 12, 13)]
    scorer.loglikelihood_tokens(choices)
    assert scorer.stats.rows == rows_before + 1


# gemma2: sliding-window layers (ring-buffer caches) and soft-capped logits; slow (another model's compiles)
@pytest.mark.parametrize("fixture", ["llama", pytest.param("gemma2", marks=pytest.mark.slow)])
def test_choices_over_one_cached_context_equal_one_row_each(fixture, scorer):
    if fixture != "llama":
        scorer = evaluation.load(os.path.join(ROOT, "tests", "fixtures", "pretrained", fixture), batch_size=4)
    encoded = [scorer.encode_pair(*pair) for pair in mc_pairs()[:12]]  # 3 questions, 4 choices each
    rows_before = scorer.stats.rows
    shared = scorer.loglikelihood_tokens(encoded)
    assert scorer.stats.rows == rows_before + 3  # one cached context per question
    as_rows = [None] * len(encoded)
    scorer._score_rows(list(range(len(encoded))), encoded, as_rows)
    np.testing.assert_allclose([lp for lp, _ in shared], [lp for lp, _ in as_rows], atol=2e-5, rtol=0)
    assert [g for _, g in shared] == [g for _, g in as_rows]


def test_long_requests_are_cut_from_the_left(scorer):
    L = scorer.max_length
    context = [1] + [(7 * i) % 90 + 3 for i in range(2 * L)]
    continuation = [5, 6, 7]
    (got, _), (cut, _) = scorer.loglikelihood_tokens(
        [(context, continuation), ((context + continuation)[-(L + 1) : -3], continuation)]
    )
    assert got == pytest.approx(cut, abs=1e-6)
    with pytest.raises(ValueError, match="more than max_length"):
        scorer.loglikelihood_tokens([([1], list(range(3, 3 + L + 1)))])
    with pytest.raises(ValueError, match="non-empty"):
        scorer.loglikelihood_tokens([([], [3])])


def test_the_head_in_chunks_equals_the_head_at_once(scorer, monkeypatch):
    with open(os.path.join(EVAL, "texts.jsonl")) as f:
        texts = [json.loads(line)["text"] for line in f][:2]  # windows of 64 scored tokens
    whole = scorer.loglikelihood_rolling(texts)
    monkeypatch.setattr(programs, "HEAD_CHUNK", 5)  # uneven: the last chunk is padded
    programs.score_tokens.clear_cache()  # the constant is read when the program is traced
    chunked = evaluation.Scorer(scorer.model, scorer.tokenizer, batch_size=4, bos_id=1).loglikelihood_rolling(texts)
    programs.score_tokens.clear_cache()  # later tests trace with the real chunk again
    np.testing.assert_allclose(chunked, whole, atol=1e-4, rtol=0)


def test_rolling_loglikelihood_sums_windows_of_full_forwards(scorer):
    with open(os.path.join(EVAL, "texts.jsonl")) as f:
        texts = [json.loads(line)["text"] for line in f]
    got = scorer.loglikelihood_rolling(texts)
    for text, logprob in zip(texts, got, strict=True):
        windows = evaluation.rolling_windows(scorer.encode(text), scorer.prefix_id, scorer.max_length)
        assert len(windows) >= (2 if len(text) > 200 else 1)
        want = sum(reference_loglikelihood(scorer.model, c, t)[0] for c, t in windows)
        assert logprob == pytest.approx(want, abs=1e-4)
    result = evaluation.perplexity(scorer.model, scorer.tokenizer, texts[:2], bos_id=1)
    assert result.loglikelihood == pytest.approx(sum(got[:2]), abs=1e-4)
    assert result.tokens == sum(len(scorer.encode(t)) for t in texts[:2])
    assert result.token_perplexity == pytest.approx(np.exp(-result.loglikelihood / result.tokens))
    assert result.bits_per_byte == pytest.approx(-result.loglikelihood / result.bytes / np.log(2))
    # A smaller stride gives each token more context: a different (here: any finite) score, every token once.
    strided = evaluation.perplexity(scorer.model, scorer.tokenizer, texts[:1], stride=16, bos_id=1)
    assert np.isfinite(strided.loglikelihood) and strided.tokens == len(scorer.encode(texts[0]))


# -- generation ----------------------------------------------------------------------------------------------------


NEW = 12  # new tokens in the generation tests: one compiled reference program


def greedy_ids(scorer, prompt):
    """`NEW` greedy tokens after the token ids `prompt` (at most L - NEW of them) by `decoding.generate`."""
    buffer = np.zeros((1, scorer.max_length - NEW), np.int32)
    buffer[0, : len(prompt)] = prompt
    out = generate(scorer.model, buffer, NEW, rng=None, temperature=0.0, prompt_lengths=np.array([len(prompt)]))
    return np.asarray(out[0])


def greedy_text(scorer, prompt_text):
    return scorer.tokenizer.decode(greedy_ids(scorer, scorer.encode(prompt_text)), skip_special_tokens=True)


def test_generation_is_greedy_decoding_cut_at_the_first_stop_string(scorer):
    prompts = [f"Repeat the word.\nWord: {w}\nRepeated:" for w in ("apple", "house", "river", "stone", "light")]
    full = [greedy_text(scorer, p) for p in prompts]
    got = scorer.generate_until([(p, {"until": [], "max_gen_toks": NEW}) for p in prompts])
    assert got == full
    # Stop strings: the text before the first of them (here characters the random model does produce).
    stops = [full[0][3], full[1][5]]
    got = scorer.generate_until([(p, {"until": stops, "max_gen_toks": NEW, "do_sample": False}) for p in prompts])
    want = []
    for text in full:
        for stop in stops:
            text = text.split(stop)[0]
        want.append(text)
    assert got == want and got[0] == full[0][:3]


def test_generation_batches_and_settings_do_not_mix(scorer):
    prompts = [f"Word: {w}\n" for w in ("a", "bb", "ccc", "dddd", "eeeee", "ffffff")]
    requests = [(p, {"until": ["\n"], "max_gen_toks": NEW - i % 2}) for i, p in enumerate(prompts)]
    got = scorer.generate_until(requests)
    alone = [scorer.generate_until([r])[0] for r in requests]
    assert got == alone


def test_generation_prompts_are_cut_to_leave_room_for_the_new_tokens(scorer):
    long_prompt = "word " * 200  # far longer than the 64-token context
    (text,) = scorer.generate_until([(long_prompt, {"until": [], "max_gen_toks": NEW})])
    ids = greedy_ids(scorer, scorer.encode(long_prompt)[-(scorer.max_length - NEW) :])
    assert text == scorer.tokenizer.decode(ids, skip_special_tokens=True)
    with pytest.raises(ValueError, match="no room"):
        scorer.generate_until([("x", {"max_gen_toks": scorer.max_length})])


def test_sampled_generation_is_reproducible_and_checked(scorer):
    request = ("Word: a\n", {"until": [], "max_gen_toks": NEW, "do_sample": True, "temperature": 1.0, "top_k": 5})
    first = evaluation.Scorer(scorer.model, scorer.tokenizer, batch_size=4, seed=3).generate_until([request])
    again = evaluation.Scorer(scorer.model, scorer.tokenizer, batch_size=4, seed=3).generate_until([request])
    assert first == again
    with pytest.raises(ValueError, match="repetition_penalty"):
        scorer.generate_until([("x", {"repetition_penalty": 1.1})])
    with pytest.raises(ValueError, match="max_gen_toks instead"):
        scorer.generate_until([("x", {"max_length": 20})])
    with pytest.raises(ValueError, match=r"requests\[0\] samples \(do_sample\) at temperature=0.0"):
        scorer.generate_until([("x", {"do_sample": True})])
    with pytest.raises(TypeError, match="until"):
        scorer.generate_until([("x", {"until": [3]})])


def test_generation_stops_at_the_stop_ids(scorer):
    prompt = "Repeat the word.\nWord: apple\nRepeated:"
    ids = greedy_ids(scorer, scorer.encode(prompt))
    stopper = evaluation.Scorer(scorer.model, scorer.tokenizer, batch_size=4, stop_ids=[int(ids[3])])
    (text,) = stopper.generate_until([(prompt, {"until": [], "max_gen_toks": NEW})])
    assert text == scorer.tokenizer.decode(ids[:3], skip_special_tokens=True)


def test_a_second_evaluation_of_the_same_shapes_compiles_nothing(scorer):
    pairs = mc_pairs()[:8]
    scorer.loglikelihood(pairs)
    scorer.generate_until([("Word: a\n", {"until": ["\n"], "max_gen_toks": NEW})])
    compiles = scorer.stats.compiles
    scorer.loglikelihood(list(reversed(pairs)))
    scorer.generate_until([("Word: b\n", {"until": ["\n"], "max_gen_toks": NEW})])
    assert scorer.stats.compiles == compiles
    assert "programs compiled" in scorer.stats.summary()


# -- loading -------------------------------------------------------------------------------------------------------


def test_load_reads_special_tokens_and_generation_stops(tmp_path, scorer):
    assert (scorer.bos_id, scorer.eos_id, scorer.stop_ids) == (1, 2, ())  # config.json names no eos_token_id
    assert scorer.max_length == 64  # max_position_embeddings
    directory = tmp_path / "ckpt"
    directory.mkdir()
    for name in os.listdir(LLAMA):
        if name != "generation_config.json":  # written below (a link would write through to the fixture)
            os.symlink(os.path.join(LLAMA, name), directory / name)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 5]}))
    assert evaluation.generation_stop_ids(str(directory)) == (2, 5)
    assert evaluation.load(directory).stop_ids == (2, 5)


def test_bad_arguments_are_named(scorer):
    with pytest.raises(ValueError, match="exactly one"):
        evaluation.load()
    with pytest.raises(ValueError, match="adapter"):
        evaluation.load(workdir="x", adapter="y")
    with pytest.raises(ValueError, match="batch_size"):
        evaluation.Scorer(scorer.model, scorer.tokenizer, batch_size=0)
    with pytest.raises(TypeError, match="tokenizer"):
        evaluation.Scorer(scorer.model, "gpt2")
    with pytest.raises(TypeError, match=r"requests\[0\]"):
        scorer.loglikelihood(["just a string"])
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        scorer.loglikelihood_rolling(["a", 3])
    with pytest.raises(TypeError, match="one str"):
        evaluation.perplexity(scorer.model, scorer.tokenizer, "a text")


def test_learned_positions_bound_max_length():
    model = evaluation.load(os.path.join(ROOT, "tests", "fixtures", "pretrained", "gpt2")).model
    tokenizer = data.HFTokenizer.from_directory(os.path.join(ROOT, "tests", "fixtures", "pretrained", "gpt2"))
    with pytest.raises(ValueError, match="max_len=64"):
        evaluation.Scorer(model, tokenizer, max_length=128)
    assert jax.tree.leaves(model)  # loaded
