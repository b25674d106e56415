"""Tests for jaxformer.data.synthetic: decoded examples obey each task's semantics; layout, padding, determinism."""

import numpy as np
import pytest

from jaxformer.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    PLUS_ID,
    SEQ2SEQ_TASKS,
    SEQ2SEQ_VOCAB,
    seq2seq_decode,
    seq2seq_encode,
    seq2seq_task,
    seq2seq_vocab_size,
)


def decoded_pairs(d):
    return [(seq2seq_decode(s), seq2seq_decode(t)) for s, t in zip(d["src"], d["tgt_out"], strict=True)]


def test_vocabulary():
    assert SEQ2SEQ_VOCAB[PAD_ID] == "<pad>" and SEQ2SEQ_VOCAB[BOS_ID] == "<bos>" and SEQ2SEQ_VOCAB[EOS_ID] == "<eos>"
    assert SEQ2SEQ_VOCAB[PLUS_ID] == "+"
    np.testing.assert_array_equal(seq2seq_encode("0123456789+"), np.arange(3, 14))
    assert seq2seq_decode(seq2seq_encode("12+3")) == "12+3"
    assert [seq2seq_vocab_size(t) for t in SEQ2SEQ_TASKS] == [13, 13, 14]
    assert seq2seq_decode([BOS_ID, 4, 5, EOS_ID, 6, PAD_ID]) == "12"
    assert seq2seq_decode([BOS_ID, 4, EOS_ID, PAD_ID], strip_special=False) == "<bos>1<eos><pad>"


@pytest.mark.parametrize("name", SEQ2SEQ_TASKS)
def test_layout_and_padding(name):
    n, max_len = 200, 5
    d = seq2seq_task(name, num_examples=n, min_len=1, max_len=max_len, seed=0)
    src_len, tgt_len = (2 * max_len + 1, max_len + 2) if name == "add" else (max_len, max_len + 1)
    assert d["src"].shape == d["src_valid"].shape == (n, src_len)
    assert d["tgt_in"].shape == d["tgt_out"].shape == d["tgt_valid"].shape == (n, tgt_len)
    assert d["src"].dtype == d["tgt_in"].dtype == d["tgt_out"].dtype == np.int32
    assert d["src_valid"].dtype == d["tgt_valid"].dtype == bool
    assert d["src"].max() < seq2seq_vocab_size(name) and d["tgt_out"].max() < seq2seq_vocab_size(name)
    for valid, tokens in ((d["src_valid"], d["src"]), (d["tgt_valid"], d["tgt_in"]), (d["tgt_valid"], d["tgt_out"])):
        # Valid positions form a prefix; padding is PAD; specials never appear in the source.
        np.testing.assert_array_equal(valid, np.arange(valid.shape[1]) < valid.sum(1, keepdims=True))
        np.testing.assert_array_equal(tokens[~valid], PAD_ID)
    assert (d["src"][d["src_valid"]] > EOS_ID).all()
    # Teacher forcing: tgt_in = BOS + target, tgt_out = target + EOS.
    lengths = d["tgt_valid"].sum(1)
    np.testing.assert_array_equal(d["tgt_in"][:, 0], BOS_ID)
    np.testing.assert_array_equal(d["tgt_out"][np.arange(n), lengths - 1], EOS_ID)
    for i in range(n):
        np.testing.assert_array_equal(d["tgt_in"][i, 1 : lengths[i]], d["tgt_out"][i, : lengths[i] - 1])
    if name != "add":  # every length in [min_len, max_len] occurs (add checks its operands' lengths below)
        assert set(d["src_valid"].sum(1).tolist()) == set(range(1, max_len + 1))


def test_reverse_and_sort_semantics():
    for src, tgt in decoded_pairs(seq2seq_task("reverse", num_examples=100, min_len=2, max_len=7, seed=1)):
        assert 2 <= len(src) <= 7 and src.isdigit() and tgt == src[::-1]
    for src, tgt in decoded_pairs(seq2seq_task("sort", num_examples=100, min_len=2, max_len=7, seed=1)):
        assert 2 <= len(src) <= 7 and src.isdigit() and tgt == "".join(sorted(src))


@pytest.mark.parametrize("max_len", [1, 3, 25])  # 25 digits: beyond int64, the sum is done digit by digit
def test_add_semantics(max_len):
    pairs = decoded_pairs(seq2seq_task("add", num_examples=300, min_len=1, max_len=max_len, seed=2))
    digit_counts = set()
    for src, tgt in pairs:
        a, b = src.split("+")
        for operand in (a, b):
            assert 1 <= len(operand) <= max_len and operand.isdigit()
            assert operand == "0" or not operand.startswith("0")
            digit_counts.add(len(operand))
        assert tgt == str(int(a) + int(b))
    assert digit_counts == set(range(1, max_len + 1))


def test_deterministic_given_seed():
    a = seq2seq_task("add", num_examples=50, min_len=1, max_len=4, seed=3)
    b = seq2seq_task("add", num_examples=50, min_len=1, max_len=4, seed=3)
    c = seq2seq_task("add", num_examples=50, min_len=1, max_len=4, seed=4)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["src"], c["src"])


def test_errors():
    with pytest.raises(ValueError, match=r"seq2seq task='copy'; choose one of \('reverse', 'sort', 'add'\)"):
        seq2seq_task("copy", num_examples=1, min_len=1, max_len=2, seed=0)
    with pytest.raises(ValueError, match="`min_len`=3 must be <= `max_len`=2"):
        seq2seq_task("sort", num_examples=1, min_len=3, max_len=2, seed=0)
    with pytest.raises(ValueError, match="`num_examples` must be a positive int"):
        seq2seq_task("sort", num_examples=0, min_len=1, max_len=2, seed=0)
    with pytest.raises(ValueError, match=r"\['-'\] are not in the vocabulary"):
        seq2seq_encode("1-2")
    with pytest.raises(ValueError, match="got 14"):
        seq2seq_decode([14])
    with pytest.raises(TypeError, match="`ids` must hold integer token ids; got dtype float64"):
        seq2seq_decode([1.0])
