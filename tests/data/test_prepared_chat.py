"""Tests for prepared chat corpora (data/chat_corpus.py, `jaxformer prepare --source chat:GLOB`): conversations that
read back, memory-mapped, as `template.encode` of each; the validation split; reruns, refusals, redoing an unfinished
directory; damaged files; bad records; the command line."""

import json
import os
import pathlib

import numpy as np
import pytest

from jaxformer import cli, data
from jaxformer.data import chat, chat_corpus, pipeline, prepared, synthetic_chat, writer

TEMPLATE = "template:byte_chatml"


@pytest.fixture(scope="module")
def template():
    return chat.byte_chatml()


def write_chats(directory: pathlib.Path, sizes=(7, 5), seed: int = 0) -> list[list[dict]]:
    """JSONL files chats{k}.jsonl of synthetic "strings" conversations (a blank line in the first); returns every
    conversation in file order."""
    conversations = synthetic_chat.chat_task("strings", num_examples=sum(sizes), split="train", seed=seed)
    at = 0
    for k, n in enumerate(sizes):
        lines = [json.dumps({"messages": m}) for m in conversations[at : at + n]]
        if k == 0:
            lines.insert(2, "")
        (directory / f"chats{k}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        at += n
    return conversations


def prepare(tmp_path, out=None, **kwargs):
    out = tmp_path / "out" if out is None else out
    return chat_corpus.prepare_chat(f"chat:{tmp_path}/chats*.jsonl", TEMPLATE, out, progress=False, **kwargs)


def test_round_trip_memmapped_with_a_validation_split(tmp_path, template):
    conversations = write_chats(tmp_path)
    corpus = prepare(tmp_path, validation_fraction=0.25)
    assert isinstance(corpus, data.PreparedChat) and corpus.split_names == ["train", "validation"]
    assert corpus.template.to_dict() == template.to_dict()
    reopened = data.open_prepared_chat(tmp_path / "out", verify=True)
    assert reopened.metadata == corpus.metadata
    # 12 conversations: train the first floor(0.75 * 12) = 9, validation the last 3
    expected = {"train": conversations[:9], "validation": conversations[9:]}
    for split, convs in expected.items():
        examples = reopened.examples(split)
        assert isinstance(examples, pipeline.Examples) and len(examples) == len(convs)
        for name in ("tokens", "learned", "starts"):
            array = getattr(examples, name)
            assert isinstance(array, np.memmap) and not array.flags.writeable, name
        assert (examples.tokens.dtype, examples.learned.dtype, examples.starts.dtype) == (np.int32, bool, np.int64)
        for i, messages in enumerate(convs):
            ids, mask = examples.example(i)
            want_ids, want_mask = template.encode(messages)
            np.testing.assert_array_equal(ids, want_ids)
            np.testing.assert_array_equal(mask, want_mask)
        entry = reopened.metadata["splits"][split]
        assert entry["conversations"] == len(convs)
        assert entry["tokens"] == len(examples.tokens) == sum(len(template.encode(m)[0]) for m in convs)
        assert entry["learned_tokens"] == int(np.sum(examples.learned)) > 0
        assert entry["max_tokens"] == int(examples.lengths.max())
    meta = reopened.metadata
    assert meta["format"] == "jaxformer.prepared_chat/1" and meta["tokenizer"] == TEMPLATE
    assert [f["conversations"] for f in meta["files"]] == [7, 5]
    assert [os.path.basename(f["path"]) for f in meta["files"]] == ["chats0.jsonl", "chats1.jsonl"]
    names = sorted(os.listdir(tmp_path / "out"))
    arrays = [f"{s}.{a}.npy" for s in ("train", "validation") for a in ("tokens", "learned", "starts")]
    assert names == sorted(["metadata.json", "prepare.json", "chat_template.json", *arrays])
    # the packer takes the memmapped examples as they are
    train = meta["splits"]["train"]
    batches = pipeline.eval_packed_examples(reopened.examples("train"), batch_size=16, seq_len=train["max_tokens"])
    assert len(batches) == 1  # a target is learned where its token is, and no conversation starts with a learned one
    assert int(batches[0]["weights"].sum()) == train["learned_tokens"]


def test_default_fraction_zero_fraction_and_too_few_conversations(tmp_path):
    write_chats(tmp_path, sizes=(10, 10))
    corpus = prepare(tmp_path)  # the text corpora's default, 0.1: the last 2 of 20
    assert prepared.DEFAULT_VALIDATION_FRACTION == 0.1
    assert corpus.metadata["validation_fraction"] == 0.1
    assert [corpus.metadata["splits"][s]["conversations"] for s in ("train", "validation")] == [18, 2]
    only = prepare(tmp_path, out=tmp_path / "all", validation_fraction=0)
    assert only.split_names == ["train"] and len(only.examples("train")) == 20
    few = prepare(tmp_path, out=tmp_path / "few", validation_fraction=0.01)  # 0.2 conversations: at least one
    assert [few.metadata["splits"][s]["conversations"] for s in ("train", "validation")] == [19, 1]
    with pytest.raises(ValueError, match=r"`validation_fraction`=0.97 of 20 conversation\(s\) leaves the train split"):
        prepare(tmp_path, out=tmp_path / "none", validation_fraction=0.97)
    assert not (tmp_path / "none" / "metadata.json").exists()
    (tmp_path / "one").mkdir()
    write_chats(tmp_path / "one", sizes=(1,))
    with pytest.raises(ValueError, match=r"of 1 conversation\(s\) leaves the train split empty"):
        prepare(tmp_path / "one")


def test_rerun_is_a_no_op_another_request_is_refused_and_an_unfinished_dir_is_redone(tmp_path, capsys):
    write_chats(tmp_path)
    out = tmp_path / "out"
    corpus = chat_corpus.prepare_chat(f"chat:{tmp_path}/chats*.jsonl", TEMPLATE, out, validation_fraction=0.25)
    capsys.readouterr()
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = chat_corpus.prepare_chat(f"chat:{tmp_path}/chats*.jsonl", TEMPLATE, out, validation_fraction=0.25)
    assert "already prepared" in capsys.readouterr().err
    assert again.metadata == corpus.metadata and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes

    with pytest.raises(ValueError, match=r"another request \(validation_fraction: 0.25 there, 0.5 now\)") as info:
        prepare(tmp_path, validation_fraction=0.5)
    assert "--validation_fraction 0.25" in str(info.value) and "--validation_fraction 0.5" in str(info.value)
    with pytest.raises(ValueError, match=r"source: .* there, .* now"):
        chat_corpus.prepare_chat(f"chat:{tmp_path}/chats0.jsonl", TEMPLATE, out, validation_fraction=0.25)
    # a text corpus into it, and a chat corpus into a text corpus's directory: refused, both requests named
    with pytest.raises(ValueError, match=r"format: 'jaxformer.prepared_chat/1' there, 'jaxformer.prepared/1' now"):
        writer.prepare(f"text:{tmp_path}/chats0.jsonl", "byte", out, workers=1, progress=False)
    writer.prepare(f"text:{tmp_path}/chats0.jsonl", "byte", tmp_path / "text", validation_fraction=0, workers=1,
                   progress=False)  # fmt: skip
    with pytest.raises(ValueError, match=r"format: 'jaxformer.prepared/1' there, 'jaxformer.prepared_chat/1' now"):
        prepare(tmp_path, out=tmp_path / "text")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"is not empty and holds no prepare\.json"):
        prepare(tmp_path, out=tmp_path / "mine")

    # unfinished (no metadata.json; a damaged array, a leftover temporary file): the same request redoes it
    (out / "metadata.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"unfinished preparation .* run `jaxformer prepare --source 'chat:"):
        chat_corpus.open_prepared_chat(out)
    (out / "train.tokens.npy").write_bytes(b"garbage")
    (out / "all.tokens.bin.tmp").write_bytes(b"left over")
    redone = prepare(tmp_path, validation_fraction=0.25)
    assert redone.metadata == corpus.metadata
    assert not list(out.glob("*.tmp"))
    chat_corpus.open_prepared_chat(out, verify=True)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", r"train.tokens.npy is damaged \(mmap length is greater than file size\)"),
        ("flip", r"train.learned.npy \(split 'train'\) is damaged: sha256 [0-9a-f]+, expected"),
        ("starts", r"validation.starts.npy is damaged: conversation 0 is 1 tokens long"),
        ("shape", r"validation.learned.npy is damaged: it holds bool \(\d+,\), metadata.json says bool"),
        ("missing", r"train.starts.npy is missing from the chat corpus"),
        ("template", r"chat_template.json is damaged"),
    ],
)
def test_a_damaged_corpus_is_refused_naming_the_file(tmp_path, damage, message):
    write_chats(tmp_path)
    out = tmp_path / "out"
    prepare(tmp_path, validation_fraction=0.25)
    if damage == "truncate":
        path = out / "train.tokens.npy"
        path.write_bytes(path.read_bytes()[:-4])
    elif damage == "flip":  # same shape, other contents: only the sha256 tells
        path = out / "train.learned.npy"
        raw = bytearray(path.read_bytes())
        raw[-1] ^= 1
        path.write_bytes(bytes(raw))
        chat_corpus.open_prepared_chat(out)  # the cheap checks pass
    elif damage == "starts":
        starts = np.load(out / "validation.starts.npy")
        starts[1] = 1
        np.save(out / "validation.starts.npy", starts)
    elif damage == "shape":
        learned = np.load(out / "validation.learned.npy")
        np.save(out / "validation.learned.npy", learned[:-1])
    elif damage == "missing":
        (out / "train.starts.npy").unlink()
    else:
        with open(out / "chat_template.json", "a") as f:
            f.write(" ")
    with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
        chat_corpus.open_prepared_chat(out, verify=True)
    assert "metadata.json and run `jaxformer prepare --source 'chat:" in str(info.value)


def test_not_a_chat_corpus(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        chat_corpus.open_prepared_chat(tmp_path / "nowhere")
    with pytest.raises(
        FileNotFoundError, match=r"not a prepared chat corpus \(no metadata.json\); .*jaxformer prepare"
    ):
        chat_corpus.open_prepared_chat(tmp_path)
    (tmp_path / "doc.txt").write_text("some text\n" * 20)
    writer.prepare(f"text:{tmp_path}/doc.txt", "byte", tmp_path / "text", workers=1, progress=False)
    with pytest.raises(ValueError, match=r"format 'jaxformer.prepared/1' \(a text corpus.*not a chat corpus"):
        chat_corpus.open_prepared_chat(tmp_path / "text")


def test_bad_records_and_arguments_are_named(tmp_path):
    write_chats(tmp_path)
    bad = tmp_path / "chats1.jsonl"
    lines = bad.read_text().splitlines()
    lines[3] = '{"messages": [{"role": "user", "content": "hi"}'
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{bad}:4 is not valid JSON"):
        prepare(tmp_path)
    lines[3] = json.dumps({"messages": [{"role": "robot", "content": "hi"}]})
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{bad}, record 4: messages\[0\] has role 'robot'"):
        prepare(tmp_path)
    lines[3] = json.dumps({"messages": []})
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{bad}, record 4: `messages` is empty"):
        prepare(tmp_path)
    assert not (tmp_path / "out" / "metadata.json").exists() and not list((tmp_path / "out").glob("*.tmp"))

    for kwargs, error, message in (
        ({"source": "text:x"}, ValueError, "from 'chat:GLOB'"),
        ({"source": "chat:"}, ValueError, "from 'chat:GLOB'"),
        ({"source": f"chat:{tmp_path}/none*.jsonl"}, ValueError, "matches no file"),
        ({"tokenizer": "byte"}, ValueError, "'template:DIR_OR_ID'"),
        ({"tokenizer": 3}, TypeError, "`tokenizer` must be a str"),
        ({"validation_fraction": 1.0}, ValueError, "must be a finite number in"),
        ({"out": 5}, TypeError, "`out` must be a directory path"),
    ):
        args = {"source": f"chat:{tmp_path}/chats*.jsonl", "tokenizer": TEMPLATE, "out": tmp_path / "o2", **kwargs}
        with pytest.raises(error, match=message):
            chat_corpus.prepare_chat(**args, progress=False)


def test_a_template_directory(tmp_path, template):
    conversations = write_chats(tmp_path, sizes=(4,))
    template.save(tmp_path / "ckpt")
    out = tmp_path / "out"
    corpus = chat_corpus.prepare_chat(f"chat:{tmp_path}/chats*.jsonl", f"template:{tmp_path / 'ckpt'}", out,
                                      validation_fraction=0, progress=False)  # fmt: skip
    np.testing.assert_array_equal(corpus.examples("train").example(3)[0], template.encode(conversations[3])[0])


def test_cli_prepare_chat(tmp_path, capsys):
    write_chats(tmp_path)
    out = tmp_path / "out"
    argv = ["jaxformer", "prepare", "--source", f"chat:{tmp_path}/chats*.jsonl", "--tokenizer", TEMPLATE]
    argv += ["--out", str(out), "--validation_fraction=0.25"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"Prepared {out}: train 9 conversations (" in printed and "validation 3 conversations" in printed
    assert data.open_prepared_chat(out).split_names == ["train", "validation"]
    assert cli.main(argv) == 0
    assert "already prepared" in capsys.readouterr().err
    for bad, message in (
        (["--validation_fraction=0.5"], "another request (validation_fraction: 0.25 there, 0.5 now)"),
        (["--shard_mb=4", "--workers=2"], "--workers, --shard_mb apply to text and tfds sources"),
        (["--tokenizer=byte"], "'template:DIR_OR_ID'"),
        ([f"--source=text:{tmp_path}/chats0.jsonl"], "needs --source chat:GLOB"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            cli.main([*argv, *bad])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
