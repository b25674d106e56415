"""Tests for jaxformer.data.tokenizers: round trips, id layout, errors, dict (checkpoint) round trips, the factory by
name."""

import json
import pathlib

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from jaxformer.data import ByteTokenizer, CharTokenizer, HFTokenizer, Tokenizer, make_tokenizer, tokenizer_from_dict
from jaxformer.data.tokenizers import TOKENIZER_NAMES, TOKENIZERS, check_tokenizer


def test_char_vocabulary_is_sorted_set_of_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == " dehlorw"
    assert tok.vocab_size == 8
    ids = tok.encode("hello")
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids, [3, 2, 4, 4, 5])  # h e l l o in " dehlorw"
    assert tok.decode(ids) == "hello"


def test_char_ids_follow_given_order():
    tok = CharTokenizer("zab")
    np.testing.assert_array_equal(tok.encode("abz"), [1, 2, 0])
    assert tok.decode([0, 0, 1]) == "zza"
    assert CharTokenizer(["z", "a", "b"]) == tok


@hypothesis.given(st.text(min_size=1, max_size=50))
def test_char_round_trip(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert ids.shape == (len(text),)
    assert ids.min() >= 0 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == text


@hypothesis.given(st.text(max_size=50))
def test_byte_round_trip(text):
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_empty_text_encodes_to_empty():
    assert CharTokenizer("ab").encode("").shape == (0,)
    assert CharTokenizer("ab").decode([]) == ""
    assert ByteTokenizer().encode("").shape == (0,)
    assert ByteTokenizer().decode(np.zeros(0, np.int32)) == ""


def test_char_unknown_character_is_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"'☃' at position 2 is not in the vocabulary"):
        tok.encode("ab☃c")
    with pytest.raises(ValueError, match="'z'"):
        tok.encode("z")


@pytest.mark.parametrize("tok", [CharTokenizer("abc"), ByteTokenizer()], ids=["char", "byte"])
def test_decode_rejects_bad_ids(tok):
    with pytest.raises(ValueError, match=rf"\[0, vocab_size={tok.vocab_size}\); got {tok.vocab_size} at position 1"):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(ValueError, match="got -1"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode([[0, 1]])
    with pytest.raises(TypeError, match="`ids` must hold integer token ids; got dtype float64"):
        tok.decode([0.5])


def test_bad_vocabularies():
    with pytest.raises(ValueError, match="non-empty"):
        CharTokenizer("")
    with pytest.raises(ValueError, match=r"distinct.*'a'"):
        CharTokenizer("aba")
    with pytest.raises(ValueError, match="1-character"):
        CharTokenizer(["ab", "c"])
    with pytest.raises(TypeError, match="1-character"):
        CharTokenizer(["a", 1])
    with pytest.raises(ValueError, match="non-empty str"):
        CharTokenizer.from_text("")
    with pytest.raises(TypeError, match="non-empty str; got None"):
        CharTokenizer.from_text(None)
    with pytest.raises(
        ValueError, match=r"ByteTokenizer errors='bogus'; choose one of \('replace', 'strict', 'ignore'\)"
    ):
        ByteTokenizer(errors="bogus")
    with pytest.raises(TypeError, match=r"ByteTokenizer errors=None; choose one of"):
        ByteTokenizer(errors=None)


def test_byte_decode_invalid_utf8():
    assert ByteTokenizer().decode([0xFF, 65]) == "\ufffdA"
    with pytest.raises(UnicodeDecodeError):
        ByteTokenizer(errors="strict").decode([0xFF])


@pytest.mark.parametrize("tok", [CharTokenizer.from_text("To be, or not to be\n"), ByteTokenizer("ignore")])
def test_dict_round_trip_through_json(tok):
    assert isinstance(tok, Tokenizer)
    d = json.loads(json.dumps(tok.to_dict()))
    restored = tokenizer_from_dict(d)
    assert restored == tok and type(restored) is type(tok)
    assert type(tok).from_dict(d) == tok
    text = "not to be"
    np.testing.assert_array_equal(restored.encode(text), tok.encode(text))


def test_from_dict_errors():
    with pytest.raises(ValueError, match="Unknown tokenizer type 'bpe'"):
        tokenizer_from_dict({"type": "bpe"})
    with pytest.raises(ValueError, match="'type' key"):
        tokenizer_from_dict({"chars": "ab"})
    with pytest.raises(ValueError, match="type 'char'; got 'byte'"):
        CharTokenizer.from_dict({"type": "byte"})


def test_make_tokenizer_by_name():
    """One factory for `jaxformer prepare --tokenizer` and `config.data.tokenizer`, over the one TOKENIZERS table."""
    fixture = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "pretrained" / "gpt2"
    assert TOKENIZER_NAMES == ("char", "byte", "sentencepiece", "hf:DIR_OR_ID")
    assert set(TOKENIZERS) == {"char", "byte", "sentencepiece", "hf"}
    assert make_tokenizer("char", "to be") == CharTokenizer.from_text("to be")
    assert make_tokenizer("byte") == ByteTokenizer()
    hf = make_tokenizer(f"hf:{fixture}")
    assert isinstance(hf, HFTokenizer) and hf.to_dict() == HFTokenizer.from_directory(fixture).to_dict()
    assert check_tokenizer("char", 0) is None  # the vocabulary comes from the text: vocab_size is not read
    assert check_tokenizer("sentencepiece", np.int64(40)) == 40


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: make_tokenizer("wordpiece", "x"), ValueError, r"`tokenizer`='wordpiece'; choose one of \('char'"),
        (lambda: make_tokenizer("hf:", "x"), ValueError, r"`tokenizer`='hf:'; choose one of"),
        (lambda: make_tokenizer("char:x", "x"), ValueError, r"`tokenizer`='char:x'; choose one of"),
        (lambda: make_tokenizer("bpe", argument="config.data.tokenizer"), ValueError, r"`config.data.tokenizer`='bpe'"),
        (lambda: make_tokenizer(3), TypeError, r"`tokenizer` must be a tokenizer name, one of"),
        (lambda: make_tokenizer("char"), TypeError, r"'char' tokenizer learns its vocabulary from `train_text`"),
        (lambda: make_tokenizer("sentencepiece", "x"), ValueError, r"`vocab_size` is required with tokenizer"),
        (lambda: make_tokenizer("sentencepiece", "x", vocab_size=0), ValueError, r"`vocab_size` must be a positive"),
    ],
)
def test_make_tokenizer_errors_name_the_argument(call, error, message):
    with pytest.raises(error, match=message):
        call()
