"""Tests for `jaxformer prepare` (data/writer.py, data/shards.py, data/sources.py) and the reader of what it writes
(data/prepared.py): shards that read back as the tokens of the text, document starts, validation cuts (10% by
default), tfds splits, resuming after an interruption, refusals and the command line."""

import itertools
import json
import math
import os
import pathlib
import pickle
import random

import numpy as np
import pytest

from jaxformer import cli
from jaxformer.data import prepared, shards, writer
from jaxformer.data.token_store import ArrayTokens, TokenStore
from jaxformer.data.tokenizers import CharTokenizer

ROOT = pathlib.Path(__file__).resolve().parents[2]
TFDS_DIR = pathlib.Path(os.environ.get("TFDS_DATA_DIR", ROOT.parent / "shared" / "tensorflow_datasets"))
needs_tiny_shakespeare = pytest.mark.skipif(
    not (TFDS_DIR / "tiny_shakespeare").is_dir(), reason=f"tiny_shakespeare is not prepared in {TFDS_DIR}"
)
WORDS = ["the", "king", "é", "Δelta", "日本", "and", "x", "sword,", "night.", "  "]


def make_corpus(directory: pathlib.Path, sizes=(400, 0, 250, 90), seed: int = 0) -> list[str]:
    """Text files of random lines (empty ones, runs of spaces, multi-byte characters); the second file is empty and
    the last one ends without a newline. Returns their texts in path order."""
    rng = random.Random(seed)
    texts = []
    for k, num_lines in enumerate(sizes):
        lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 9))) for _ in range(num_lines)]
        text = "".join(line + "\n" for line in lines)
        if k == len(sizes) - 1:
            text = text.rstrip("\n")
        (directory / f"doc{k}.txt").write_text(text, encoding="utf-8")
        texts.append(text)
    return texts


def expected_cut(texts: list[str], fraction: float) -> int:
    """Byte where validation starts: ⌊(1 - fraction) * total⌋ moved on to a line start (a document start is one)."""
    joined = "".join(texts).encode("utf-8")
    doc_starts = set(np.cumsum([0, *[len(t.encode("utf-8")) for t in texts]]).tolist())
    q = math.floor((1 - fraction) * len(joined))
    while not (q == 0 or q == len(joined) or joined[q - 1] == ord("\n") or q in doc_starts):
        q += 1
    return q


def token_doc_starts(tokenizer, texts: list[str], begin: int, end: int) -> list[int]:
    """Token starts of the non-empty documents of the joined texts' bytes [begin, end), the first one at 0."""
    starts, at = [0], 0
    for text in texts:
        size = len(text.encode("utf-8"))
        if begin < at < end and size:
            starts.append(len(tokenizer.encode("".join(texts).encode("utf-8")[begin:at].decode("utf-8"))))
        at += size
    return starts


def check_store(store: TokenStore, tokens: np.ndarray, rng: np.random.Generator, boundaries=()) -> None:
    """`store` reads as ArrayTokens(tokens): random windows, windows across the given boundaries, the whole of it."""
    reference = ArrayTokens(tokens)
    assert len(store) == tokens.size
    for length in (1, 13, 57):
        starts = rng.integers(0, tokens.size - length + 1, size=40)
        near = np.array([b + d for b in boundaries for d in (-length + 1, -1, 0) if 0 <= b + d <= tokens.size - length])
        starts = np.concatenate([starts, near, [0, tokens.size - length]]).astype(np.int64)
        got = store.windows(starts, length)
        assert got.dtype == np.int32 and got.shape == (starts.size, length)
        np.testing.assert_array_equal(got, reference.windows(starts, length))
    np.testing.assert_array_equal(store.windows(np.array([0]), tokens.size)[0], tokens)


def shard_boundaries(store: prepared.ShardedTokens) -> list[int]:
    """Token positions where a shard or a record begins."""
    out, at = [], 0
    for shard in store.shards:
        out += list(range(at, at + shard["tokens"], store.chunk_tokens))
        at += shard["tokens"]
    return out


@pytest.mark.parametrize("tokenizer", ["char", "byte", "sentencepiece"])
def test_text_round_trip_with_validation_cut(tmp_path, tokenizer):
    if tokenizer == "sentencepiece":
        pytest.importorskip("sentencepiece")
    texts = make_corpus(tmp_path)
    fraction = 0.15
    corpus = writer.prepare(
        f"text:{tmp_path}/doc*.txt",
        tokenizer,
        tmp_path / "out",
        validation_fraction=fraction,
        vocab_size=32 if tokenizer == "sentencepiece" else None,
        workers=1,
        shard_mb=0.003,
        chunk_tokens=7,
        progress=False,
    )
    tok = corpus.tokenizer
    joined = "".join(texts).encode("utf-8")
    cut = expected_cut(texts, fraction)
    train_text, valid_text = joined[:cut].decode("utf-8"), joined[cut:].decode("utf-8")
    assert corpus.split_names == ["train", "validation"]
    assert corpus.vocab_size == tok.vocab_size and corpus.metadata["dtype"] == "uint16"
    if tokenizer == "char":
        assert tok == CharTokenizer.from_text("".join(texts))
    rng = np.random.default_rng(0)
    for name, text, begin, end in (("train", train_text, 0, cut), ("validation", valid_text, cut, len(joined))):
        store = corpus.split(name)
        assert len(store.shards) > 1 if name == "train" else True
        check_store(store, tok.encode(text), rng, shard_boundaries(store))
        np.testing.assert_array_equal(store.document_starts(), token_doc_starts(tok, texts, begin, end))
        split = corpus.metadata["splits"][name]
        assert split["tokens"] == len(store) and split["documents"] == store.document_starts().size
    # The two splits give back the corpus.
    train, valid = corpus.split("train"), corpus.split("validation")
    decoded = tok.decode(train.windows([0], len(train))[0]) + tok.decode(valid.windows([0], len(valid))[0])
    assert decoded == "".join(texts)
    corpus.verify()


def test_a_single_split_source_holds_out_a_tenth_as_validation_by_default(tmp_path, capsys):
    """Without `validation_fraction`, text:GLOB (and tfds:NAME:SPLIT) get 10% validation, so that the recipes, which
    evaluate on "validation", train on the corpus as it comes; 0 asks for none, and the stored command says so."""
    texts = make_corpus(tmp_path)
    assert prepared.DEFAULT_VALIDATION_FRACTION == 0.1
    corpus = writer.prepare(f"text:{tmp_path}/doc*.txt", "char", tmp_path / "out", workers=1, progress=False)
    assert corpus.split_names == ["train", "validation"] and corpus.metadata["validation_fraction"] == 0.1
    joined, cut = "".join(texts).encode("utf-8"), expected_cut(texts, 0.1)
    for name, text in (("train", joined[:cut]), ("validation", joined[cut:])):
        store = corpus.split(name)
        assert corpus.tokenizer.decode(store.windows([0], len(store))[0]) == text.decode("utf-8")
    request = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert "--validation_fraction" not in prepared.prepare_command(request, "out")  # the default: left out

    none = writer.prepare(f"text:{tmp_path}/doc*.txt", "char", tmp_path / "none", validation_fraction=0.0,
                          workers=1, progress=False)  # fmt: skip
    assert none.split_names == ["train"] and none.metadata["validation_fraction"] == 0.0
    request = json.loads((tmp_path / "none" / "prepare.json").read_text())
    assert "--validation_fraction 0.0" in prepared.prepare_command(request, "none")
    with pytest.raises(ValueError, match=r"validation_fraction: 0.0 there, 0.1 now.*--validation_fraction 0.0"):
        writer.prepare(f"text:{tmp_path}/doc*.txt", "char", tmp_path / "none", workers=1, progress=False)
    assert prepared.default_validation_fraction("tfds:tiny_shakespeare") == 0.0  # the dataset's own splits
    assert prepared.default_validation_fraction("tfds:tiny_shakespeare:train") == 0.1
    assert prepared.default_validation_fraction("tfds:wmt14_translate/de-en:1.0.0") == 0.0

    (tmp_path / "one_line.txt").write_text("a single line without a newline")
    with pytest.raises(ValueError, match=r"leaves the validation split empty.*\(0: no validation split\)"):
        writer.prepare(f"text:{tmp_path}/one_line.txt", "byte", tmp_path / "one", workers=1, progress=False)


def test_sharded_tokens_is_a_picklable_token_store(tmp_path):
    make_corpus(tmp_path, sizes=(300,))
    store = writer.prepare(
        f"text:{tmp_path}/*.txt", "byte", tmp_path / "out", workers=1, shard_mb=0.002, chunk_tokens=16, progress=False
    ).split("train")
    starts = np.array([0, 5, len(store) - 40])
    before = store.windows(starts, 40)
    copy = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(copy.windows(starts, 40), before)
    np.testing.assert_array_equal(copy.document_starts(), [0])
    assert len(pickle.dumps(store)) < 4096  # no tokens, no open files
    assert store.windows(np.zeros(0, np.int64), 5).shape == (0, 5)
    with pytest.raises(ValueError, match="do not fit"):
        store.windows(np.array([len(store) - 3]), 4)
    with pytest.raises(ValueError, match="do not fit"):
        store.windows(np.array([-1]), 4)
    with pytest.raises(ValueError, match="length"):
        store.windows(np.array([0]), 0)


@needs_tiny_shakespeare
def test_tfds_tiny_shakespeare_every_split(tmp_path):
    from jaxformer import data

    corpus = writer.prepare(
        "tfds:tiny_shakespeare", "char", tmp_path / "out", data_dir=TFDS_DIR, workers=1, shard_mb=0.3, progress=False
    )
    texts = {s: data.tfds_text("tiny_shakespeare", s, data_dir=TFDS_DIR) for s in ("train", "validation", "test")}
    # The char vocabulary is that of every prepared split; for tiny_shakespeare it equals the train text's.
    assert (
        corpus.tokenizer == CharTokenizer.from_text("".join(texts.values())) == CharTokenizer.from_text(texts["train"])
    )
    assert corpus.split_names == ["train", "validation", "test"]
    assert corpus.metadata["validation_fraction"] is None
    train = corpus.split("train")
    assert len(train.shards) == 4 and len(train) == 1_003_854
    check_store(train, corpus.tokenizer.encode(texts["train"]), np.random.default_rng(1), shard_boundaries(train))
    np.testing.assert_array_equal(train.document_starts(), [0])  # one record: one document
    for split in ("validation", "test"):
        store = corpus.split(split)
        np.testing.assert_array_equal(store.windows([0], len(store))[0], corpus.tokenizer.encode(texts[split]))


@needs_tiny_shakespeare
def test_tfds_one_split_as_train_with_a_validation_fraction(tmp_path):
    from jaxformer import data

    corpus = writer.prepare(
        "tfds:tiny_shakespeare:validation",
        "byte",
        tmp_path / "out",
        validation_fraction=0.1,
        data_dir=TFDS_DIR,
        workers=1,
        progress=False,
    )
    text = data.tfds_text("tiny_shakespeare", "validation", data_dir=TFDS_DIR)
    cut = expected_cut([text], 0.1)
    assert corpus.split_names == ["train", "validation"]
    for name, part in (("train", text[:cut]), ("validation", text[cut:])):
        store = corpus.split(name)
        np.testing.assert_array_equal(store.windows([0], len(store))[0], corpus.tokenizer.encode(part))


def test_resume_after_an_interruption_keeps_finished_shards(tmp_path, monkeypatch):
    make_corpus(tmp_path)
    args = (f"text:{tmp_path}/doc*.txt", "char")
    kwargs = dict(validation_fraction=0.1, workers=1, shard_mb=0.002, chunk_tokens=32, progress=False)
    reference = writer.prepare(*args, tmp_path / "reference", **kwargs)
    num_shards = sum(len(s["shards"]) for s in reference.metadata["splits"].values())
    assert num_shards >= 6

    write_shard, calls = shards.write_shard, []

    def failing(*job):
        calls.append(job[1])
        if len(calls) > 3:
            raise RuntimeError("injected failure")
        return write_shard(*job)

    out = tmp_path / "out"
    monkeypatch.setattr(shards, "write_shard", failing)
    with pytest.raises(RuntimeError, match="injected failure"):
        writer.prepare(*args, out, **kwargs)
    assert not (out / "metadata.json").exists()
    finished = {stem: (out / f"{stem}.array_record").stat() for stem in calls[:3]}
    assert all((out / f"{stem}.done.json").exists() for stem in finished)
    with pytest.raises(
        FileNotFoundError, match=r"unfinished preparation.*jaxformer prepare --source .* again to finish"
    ):
        prepared.open_prepared(out)

    calls.clear()
    monkeypatch.setattr(shards, "write_shard", lambda *job: calls.append(job[1]) or write_shard(*job))
    corpus = writer.prepare(*args, out, **kwargs)
    assert len(calls) == num_shards - 3 and not set(calls) & set(finished)  # only the unfinished shards are written
    for stem, before in finished.items():
        after = (out / f"{stem}.array_record").stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert corpus.metadata == reference.metadata
    for name in corpus.split_names:
        a, b = corpus.split(name), reference.split(name)
        np.testing.assert_array_equal(a.windows([0], len(a)), b.windows([0], len(b)))
    calls.clear()
    assert writer.prepare(*args, out, **kwargs).metadata == reference.metadata  # finished: nothing to do
    assert calls == []


def test_rerun_with_another_request_or_a_changed_source_is_refused(tmp_path, monkeypatch):
    make_corpus(tmp_path)
    source = f"text:{tmp_path}/doc*.txt"
    out = tmp_path / "out"
    writer.prepare(source, "char", out, workers=1, shard_mb=0.002, progress=False)
    with pytest.raises(ValueError, match=r"another request \(tokenizer: 'char' there, 'byte' now\).*--tokenizer char"):
        writer.prepare(source, "byte", out, workers=1, shard_mb=0.002, progress=False)
    with pytest.raises(ValueError, match=r"validation_fraction: 0.1 there, 0.2 now"):
        writer.prepare(source, "char", out, validation_fraction=0.2, workers=1, shard_mb=0.002, progress=False)

    # Interrupted, then the source changes: the finished shards no longer match it.
    out2 = tmp_path / "out2"
    monkeypatch.setattr(shards, "write_shard", lambda *job: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.prepare(source, "byte", out2, workers=1, shard_mb=0.002, progress=False)
    monkeypatch.undo()
    with open(tmp_path / "doc0.txt", "a") as f:
        f.write("one more line\n")
    with pytest.raises(ValueError, match=r"changed since the unfinished preparation"):
        writer.prepare(source, "byte", out2, workers=1, shard_mb=0.002, progress=False)

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"not empty and holds no prepare.json"):
        writer.prepare(source, "byte", tmp_path / "other", workers=1, progress=False)


def test_open_prepared_errors_and_verify_names_a_damaged_shard(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepared.open_prepared(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"not a prepared corpus \(no metadata.json\)"):
        prepared.open_prepared(tmp_path / "empty")

    make_corpus(tmp_path)
    out = tmp_path / "out"
    corpus = writer.prepare(f"text:{tmp_path}/doc*.txt", "byte", out, workers=1, shard_mb=0.002, progress=False)
    corpus.verify()
    shard = out / corpus.metadata["splits"]["train"]["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=rf"{shard}.*damaged: sha256 [0-9a-f]{{64}}, expected [0-9a-f]{{64}}"):
        corpus.verify()
    # The repair that the message describes: delete the shard and metadata.json, run the same command again.
    metadata = json.loads((out / "metadata.json").read_text())
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=rf"{shard} is missing"):
        prepared.open_prepared(out)
    (out / "metadata.json").unlink()
    kept = (out / corpus.metadata["splits"]["train"]["shards"][0]["file"]).stat().st_mtime_ns
    repaired = writer.prepare(f"text:{tmp_path}/doc*.txt", "byte", out, workers=1, shard_mb=0.002, progress=False)
    repaired.verify()
    assert repaired.metadata == metadata
    assert (out / corpus.metadata["splits"]["train"]["shards"][0]["file"]).stat().st_mtime_ns == kept

    shard.write_bytes(b"not an array_record file")
    with pytest.raises(ValueError, match=rf"{shard} holds no readable .* records; metadata.json says"):
        prepared.open_prepared(out)
    metadata["format"] = "something/9"
    (out / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="has format 'something/9'"):
        prepared.open_prepared(out)
    with pytest.raises(ValueError, match=r"no split 'dev'; choose one of \['train', 'validation'\]"):
        corpus.split("dev")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(validation_fraction=1.0), r"`validation_fraction` must be a finite number in \[0, 1\); got 1.0"),
        (dict(validation_fraction=-0.1), r"`validation_fraction` must be a finite number in \[0, 1\); got -0.1"),
        (dict(workers=0), r"`workers` must be a positive int; got 0"),
        (dict(shard_mb=0), r"`shard_mb` must be a finite number > 0; got 0"),
        (dict(tokenizer_sample_mb=float("inf")), r"`tokenizer_sample_mb` must be a finite number > 0; got inf"),
        (dict(chunk_tokens=0), r"`chunk_tokens` must be a positive int; got 0"),
        (dict(source="s3://bucket/x"), r"`source`='s3://bucket/x': unknown scheme 's3'"),
        (dict(source="corpus.txt"), r"`source`='corpus.txt'; expected one of"),
        (dict(source="text:{tmp}/nothing*.txt"), r"`source`='text:.*nothing\*.txt' matches no file"),
        (dict(tokenizer="wordpiece"), r"`tokenizer`='wordpiece'; choose one of"),
        (dict(tokenizer="sentencepiece"), r"`vocab_size` is required with tokenizer 'sentencepiece'"),
        (dict(vocab_size=100), r"`vocab_size`=100 applies only to tokenizer 'sentencepiece'"),
        (dict(source="tfds:tiny_shakespeare", validation_fraction=0.1), r"`validation_fraction`=0.1 needs a single"),
        (dict(validation_fraction=0.5, source="text:{tmp}/one_line.txt"), r"leaves the validation split empty"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    (tmp_path / "doc.txt").write_text("some text\n")
    (tmp_path / "one_line.txt").write_text("a single line without a newline")
    args = {"source": f"text:{tmp_path}/doc.txt", "tokenizer": "byte", "out": tmp_path / "out", "workers": 1}
    args.update({k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in kwargs.items()})
    with pytest.raises(ValueError, match=message):
        writer.prepare(**args, progress=False)
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(source=3), r"`source` must be a str"),
        (dict(tokenizer=None), r"`tokenizer` must be a tokenizer name"),
        (dict(out=7), r"`out` must be a directory path"),
        (dict(shard_mb="big"), r"`shard_mb` must be a real number; got 'big' \(str\)"),
        (dict(validation_fraction=True), r"`validation_fraction` must be a real number; got True"),
        (dict(feature=1), r"`feature` must be the name of a TFDS text feature"),
    ],
)
def test_arguments_of_the_wrong_kind_are_type_errors(tmp_path, kwargs, message):
    (tmp_path / "doc.txt").write_text("some text\nmore text\n")
    args = {"source": f"text:{tmp_path}/doc.txt", "tokenizer": "byte", "out": tmp_path / "out", "workers": 1}
    with pytest.raises(TypeError, match=message):
        writer.prepare(**{**args, **kwargs}, progress=False)


def test_cli_prepare(tmp_path, capsys):
    texts = make_corpus(tmp_path)
    out = tmp_path / "out"
    argv = ["jaxformer", "prepare", "--source", f"text:{tmp_path}/doc*.txt", "--tokenizer", "byte"]
    argv += ["--out", str(out), "--validation_fraction=0.1", "--workers=2", "--shard_mb=0.004", "--chunk_tokens=64"]
    assert cli.main(argv) == 0  # two worker processes
    assert f"Prepared {out}: train " in capsys.readouterr().out
    corpus = prepared.open_prepared(out)
    train, valid = corpus.split("train"), corpus.split("validation")
    assert len(train.shards) > 2
    tokens = np.concatenate([train.windows([0], len(train))[0], valid.windows([0], len(valid))[0]])
    assert corpus.tokenizer.decode(tokens) == "".join(texts)
    assert cli.main(argv) == 0  # finished: nothing to do
    assert "already prepared" in capsys.readouterr().err

    for bad, message in (
        (["--validation_fraction=1.5"], "`validation_fraction` must be a finite number in [0, 1); got 1.5"),
        (["--workers=two"], "--workers=two"),
        (["--tokenizer=char"], "another request (tokenizer: 'byte' there, 'char' now)"),
        (["--source=text:/no/such/dir/*.txt", f"--out={tmp_path / 'new'}"], "matches no file"),
        (["--colour=red"], "Unknown command line flag 'colour'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*argv, *bad])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["jaxformer", "prepare", "--tokenizer=byte"])
    assert exit_info.value.code == 2 and "missing --source, --out" in capsys.readouterr().err


def test_an_error_in_a_worker_process_names_the_file_and_leaves_no_metadata(tmp_path):
    make_corpus(tmp_path, sizes=(200, 200))
    (tmp_path / "doc1.txt").write_bytes(b"fine line\n" * 300 + b"caf\xe9 in latin-1\n")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=rf"{tmp_path / 'doc1.txt'} is not UTF-8 text: invalid .* at byte 3003"):
        writer.prepare(f"text:{tmp_path}/doc*.txt", "byte", out, workers=2, shard_mb=0.001, progress=False)
    assert not (out / "metadata.json").exists()
    assert not list(out.glob("*.tmp"))


def test_hf_tokenizer_encodes_each_document_piece_on_its_own(tmp_path):
    texts = make_corpus(tmp_path)
    fixture = ROOT / "tests" / "fixtures" / "pretrained" / "gpt2"
    corpus = writer.prepare(
        f"text:{tmp_path}/doc*.txt",
        f"hf:{fixture}",
        tmp_path / "out",
        validation_fraction=0,  # none: the train split is the whole text
        workers=1,
        shard_mb=0.002,
        progress=False,
    )
    assert corpus.split_names == ["train"]
    tok = corpus.tokenizer
    assert tok.to_dict() == json.loads((tmp_path / "out" / "tokenizer.json").read_text())
    assert corpus.vocab_size == tok.vocab_size == 300
    store = corpus.split("train")
    tokens = store.windows([0], len(store))[0]
    assert tok.decode(tokens) == "".join(texts)
    # Cut at shard and document starts, the pieces are each what the tokenizer makes of their text.
    cuts = np.unique(np.concatenate([np.cumsum([0] + [s["tokens"] for s in store.shards]), store.document_starts()]))
    for begin, end in itertools.pairwise(cuts):
        np.testing.assert_array_equal(tok.encode(tok.decode(tokens[begin:end])), tokens[begin:end])


def test_a_glob_that_covers_the_output_directory_leaves_it_out(tmp_path, monkeypatch):
    texts = make_corpus(tmp_path, sizes=(200,))
    source, out = f"text:{tmp_path}/**", tmp_path / "out"
    write_shard = shards.write_shard
    monkeypatch.setattr(shards, "write_shard", lambda *job: write_shard(*job) if "00000" in job[1] else 1 / 0)
    with pytest.raises(ZeroDivisionError):
        writer.prepare(source, "byte", out, workers=1, shard_mb=0.002, progress=False)
    monkeypatch.undo()
    corpus = writer.prepare(source, "byte", out, workers=1, shard_mb=0.002, progress=False)  # the same plan
    train, valid = corpus.split("train"), corpus.split("validation")
    tokens = np.concatenate([train.windows([0], len(train))[0], valid.windows([0], len(valid))[0]])
    assert corpus.tokenizer.decode(tokens) == texts[0]
