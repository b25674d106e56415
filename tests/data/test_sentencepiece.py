"""Tests for jaxformer.data.SentencePieceTokenizer: lossless round trips, determinism, id layout, dict round trips."""

import json
import pickle
import random
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sentencepiece")

from jaxformer.data import SentencePieceTokenizer, Tokenizer, tokenizer_from_dict

SPEAKERS = ["FIRST CITIZEN", "MENENIUS", "CORIOLANUS", "QUEEN MARGARET", "ROMEO", "JULIET", "KING RICHARD III"]
WORDS = (
    "the and of to my a i that in you is not with it for be his your this but he have me thou as so will what "
    "thy lord shall by no all do her if are our on him we or good now king come how more let sir they love well "
    "then at there upon know make hath from say here o would one art heart death blood night speak noble gentle "
    "honour sweet brother father mother fair grace tongue hand eyes heaven citizens country crown sword war peace "
    "friends enemies fortune virtue justice mercy gracious majesty banished traitor daughter husband wife cousin "
    "soldier rome verona london england france villain patience sorrow tears weep smile dream sleep morning "
    "evening ghost spirit soul body grave tomorrow yesterday remember forget believe deserve command obey"
).split()


def shakespeare_like(num_lines: int, seed: int = 0) -> str:
    """Speeches of a few lines each: a speaker line ending in ':', verse with punctuation, blank lines between."""
    rng = random.Random(seed)
    lines: list[str] = []
    while len(lines) < num_lines:
        lines.append(rng.choice(SPEAKERS).title() + ":")
        for _ in range(rng.randint(1, 5)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(3, 10))]
            words[0] = words[0].capitalize()
            line = " ".join(words) + rng.choice([",", ".", ";", "!", "?", ":", "", "'d"])
            if rng.random() < 0.05:
                line = "    " + line  # indentation: runs of spaces must survive
            lines.append(line)
        lines.append("")
    return "\n".join(lines) + "\n"


TEXT = shakespeare_like(600)


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def tok(request):
    return SentencePieceTokenizer.train(TEXT, vocab_size=256, model_type=request.param)


def test_round_trip_and_ids(tok):
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 256 == len(tok)
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int32 and ids.ndim == 1
    assert ids.min() >= 0 and ids.max() < tok.vocab_size
    assert tok.decode(ids) == TEXT
    assert len(ids) < len(TEXT) / 2  # subwords compress


def test_whitespace_is_kept(tok):
    for text in ["", "\n", "\n\n\nRomeo:\n", "  my lord  ", "good   night\n\n  sweet prince \n", " "]:
        assert tok.decode(tok.encode(text)) == text, repr(text)


def test_unseen_text_of_seen_characters_round_trips(tok):
    other = shakespeare_like(50, seed=1)
    assert other != TEXT[: len(other)]
    assert tok.decode(tok.encode(other)) == other


def test_id_layout(tok):
    assert tok.unk_id == 0
    assert tok.id_to_piece(0) == "<unk>"
    assert tok.id_to_piece(1) == "\n"
    np.testing.assert_array_equal(tok.encode("\n\n"), [1, 1])
    assert tok.decode([1]) == "\n"
    assert not tok.byte_fallback


def test_training_is_deterministic():
    for model_type in ("unigram", "bpe"):
        a = SentencePieceTokenizer.train(TEXT, vocab_size=200, model_type=model_type)
        b = SentencePieceTokenizer.train(TEXT, vocab_size=200, model_type=model_type)
        assert a.model_proto == b.model_proto
        assert a == b and hash(a) == hash(b)


def test_unigram_and_bpe_differ_and_both_compress():
    uni = SentencePieceTokenizer.train(TEXT, vocab_size=200, model_type="unigram")
    bpe = SentencePieceTokenizer.train(TEXT, vocab_size=200, model_type="bpe")
    assert uni != bpe
    for t in (uni, bpe):
        ids = t.encode(TEXT)
        assert len(ids) < len(TEXT)
        assert t.decode(ids) == TEXT


def test_dict_round_trip(tok):
    d = json.loads(json.dumps(tok.to_dict()))
    assert d["type"] == "sentencepiece" and isinstance(d["model_proto"], str)
    back = tokenizer_from_dict(d)
    assert isinstance(back, SentencePieceTokenizer)
    assert back == tok and hash(back) == hash(tok)
    assert SentencePieceTokenizer.from_dict(d) == tok
    np.testing.assert_array_equal(back.encode(TEXT), tok.encode(TEXT))
    assert pickle.loads(pickle.dumps(tok)) == tok
    assert "SentencePieceTokenizer(vocab_size=256" in repr(tok)


def test_byte_fallback_encodes_any_text():
    tok = SentencePieceTokenizer.train(TEXT, vocab_size=400, byte_fallback=True)
    assert tok.byte_fallback
    text = "Romeo:\tthé ☃ naïve 日本語 🎭\r\n"
    ids = tok.encode(text)
    assert ids.max() < tok.vocab_size
    assert tok.decode(ids) == text


def test_unknown_character_is_named(tok):
    with pytest.raises(ValueError, match=r"'☃' at position 8 .* is not in the vocabulary"):
        tok.encode("Good my ☃ lord")
    with pytest.raises(ValueError, match=r"U\+2581"):
        tok.encode("a\u2581b")
    with pytest.raises(TypeError, match="`text` must be a str"):
        tok.encode(b"bytes")


def test_bad_vocab_size():
    for bad, error in ((0, ValueError), (-3, ValueError), (2.5, ValueError), (True, ValueError), ("256", TypeError)):
        with pytest.raises(error, match=rf"`vocab_size` must be a positive int; got {bad!r}"):
            SentencePieceTokenizer.train(TEXT, vocab_size=bad)
    with pytest.raises(ValueError, match=r"`vocab_size`=100000 does not fit .*Vocabulary size too high"):
        SentencePieceTokenizer.train(TEXT, vocab_size=100_000)
    with pytest.raises(ValueError, match=r"`vocab_size`=5 does not fit .*smaller than required_chars"):
        SentencePieceTokenizer.train(TEXT, vocab_size=5)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"model_type='wordpiece'; choose one of"):
        SentencePieceTokenizer.train(TEXT, vocab_size=200, model_type="wordpiece")
    with pytest.raises(TypeError, match=r"model_type=None; choose one of"):
        SentencePieceTokenizer.train(TEXT, vocab_size=200, model_type=None)
    with pytest.raises(ValueError, match=r"`character_coverage` must be a finite number in \(0, 1\]; got 1.5"):
        SentencePieceTokenizer.train(TEXT, vocab_size=200, character_coverage=1.5)
    with pytest.raises(TypeError, match=r"`character_coverage` must be a real number; got '1'"):
        SentencePieceTokenizer.train(TEXT, vocab_size=200, character_coverage="1")
    with pytest.raises(TypeError, match=r"`byte_fallback` must be True or False; got 1"):
        SentencePieceTokenizer.train(TEXT, vocab_size=200, byte_fallback=1)
    with pytest.raises(ValueError, match=r"sets the trainer options \['num_threads'\] itself"):
        SentencePieceTokenizer.train(TEXT, vocab_size=200, num_threads=4)
    with pytest.raises(ValueError, match="non-empty line"):
        SentencePieceTokenizer.train("\n\n", vocab_size=200)
    with pytest.raises(ValueError, match="`model_proto`"):
        SentencePieceTokenizer(b"not a model")
    with pytest.raises(ValueError, match="`model_proto`"):
        SentencePieceTokenizer("not bytes")


def test_decode_rejects_bad_ids(tok):
    with pytest.raises(ValueError, match=r"`ids` must lie in \[0, vocab_size=256\); got 256 at position 1"):
        tok.decode([3, 256])
    with pytest.raises(ValueError, match=r"got -1 at position 0"):
        tok.decode(np.array([-1, 2]))
    with pytest.raises(ValueError, match="1-D"):
        tok.decode([[1, 2]])
    with pytest.raises(TypeError, match="`ids` must hold integer token ids; got dtype float64"):
        tok.decode([1.5])


def test_from_dict_errors():
    with pytest.raises(ValueError, match="type 'sentencepiece'"):
        SentencePieceTokenizer.from_dict({"type": "char", "chars": "ab"})
    with pytest.raises(ValueError, match="'model_proto'"):
        SentencePieceTokenizer.from_dict({"type": "sentencepiece"})
    with pytest.raises(ValueError, match="not valid base64"):
        SentencePieceTokenizer.from_dict({"type": "sentencepiece", "model_proto": "@@not base64@@"})


def test_tokenizer_from_dict_dispatches():
    tok = SentencePieceTokenizer.train(TEXT, vocab_size=200)
    assert type(tokenizer_from_dict(tok.to_dict())) is SentencePieceTokenizer
    assert type(tokenizer_from_dict({"type": "char", "chars": "ab"})).__name__ == "CharTokenizer"
    with pytest.raises(ValueError, match="sentencepiece"):
        tokenizer_from_dict({"type": "wordpiece"})


def test_trains_in_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    SentencePieceTokenizer.train(TEXT, vocab_size=200)
    assert list(tmp_path.iterdir()) == []


def test_long_text_encodes_in_one_call():
    tok = SentencePieceTokenizer.train(TEXT, vocab_size=256)
    long_text = TEXT * (1_000_000 // len(TEXT) + 1)  # 1M characters, 40k lines
    ids = tok.encode(long_text)
    assert ids.dtype == np.int32
    assert tok.decode(ids) == long_text


def test_sentencepiece_is_imported_lazily(monkeypatch):
    code = "import sys, jaxformer.data; print('sentencepiece' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
    monkeypatch.setitem(sys.modules, "sentencepiece", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'jaxformer\[experiments\]'"):
        SentencePieceTokenizer.train(TEXT, vocab_size=200)
