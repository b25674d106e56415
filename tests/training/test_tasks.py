"""Every task through `train_and_evaluate` (tiny versions of the shipped configs), and the tasks' own pieces."""

import json
import pathlib
import struct

import jax
import ml_collections
import numpy as np
import pytest

from jaxformer import cli, data
from jaxformer.configs import load_config
from jaxformer.data import pipeline
from jaxformer.training import build_run
from jaxformer.training.loop import train_and_evaluate
from jaxformer.training.tasks import make_task
from jaxformer.training.tasks.seq2seq import exact_matches

TINY_MODEL = dict(num_layers=1, num_heads=2, d_model=32, d_ff=64)


def tiny(config_name: str, **overrides) -> ml_collections.ConfigDict:
    config = load_config(config_name)
    config.model.update(TINY_MODEL)
    config.update(num_steps=6, eval_every=3, log_every=3, checkpoint_every=3, warmup_steps=2, batch_size=8)
    for key, value in overrides.items():
        config.data[key] = value
    return config


def text_config(name: str, corpus) -> ml_collections.ConfigDict:
    return tiny(name, source="text_file", path=str(corpus), seq_len=16)


def tensorboard_scalars(workdir) -> dict[str, list[int]]:
    """{tag: [steps]} read back from the event files (TFRecord framing around Event protos)."""
    from tensorboardX.proto import event_pb2

    found: dict[str, list[int]] = {}
    for path in sorted((pathlib.Path(workdir) / "tensorboard").glob("events.out.tfevents.*")):
        raw = path.read_bytes()
        pos = 0
        while pos < len(raw):
            (length,) = struct.unpack("<Q", raw[pos : pos + 8])
            event = event_pb2.Event.FromString(raw[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(event.step)
    return found


def check_run(workdir, final: dict, val_keys: tuple[str, ...]) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]
    for row in rows:
        for key in (
            "train_loss",
            "train_perplexity",
            "learning_rate",
            "step_ms",
            "tokens_per_s",
            "val_loss",
            *val_keys,
        ):
            assert key in row and np.isfinite(row[key]), (key, row)
    assert final == rows[-1]
    assert (workdir / "loss.png").stat().st_size > 0
    assert (workdir / "samples.txt").read_text().strip()
    scalars = tensorboard_scalars(workdir)
    assert scalars["train_loss"] == [3, 6] and scalars["val_loss"] == [3, 6]
    return rows


def test_seq2seq_task_trains_and_reports_exact_match(tmp_path):
    config = tiny("seq2seq_toy", num_train=64, num_eval=20, max_len=4)
    final = train_and_evaluate(config, str(tmp_path))
    check_run(tmp_path, final, ("val_accuracy", "val_exact_match"))
    assert 0.0 <= final["val_exact_match"] <= 1.0
    lines = (tmp_path / "samples.txt").read_text().splitlines()
    assert lines[0].startswith("reverse:") and len(lines) == 21 and all(" -> " in line for line in lines[1:])


def test_mlm_task_trains_and_restores_masked_text(tmp_path, corpus):
    final = train_and_evaluate(text_config("bert_mlm_tiny", corpus), str(tmp_path))
    check_run(tmp_path, final, ("val_accuracy", "val_perplexity"))
    assert (tmp_path / "tokenizer.json").exists()
    assert "restored:" in (tmp_path / "samples.txt").read_text()


def test_classification_task_trains_on_digits(tmp_path):
    config = tiny("vit_digits", name="digits", fallback="")
    final = train_and_evaluate(config, str(tmp_path))
    check_run(tmp_path, final, ("val_accuracy",))
    samples = (tmp_path / "samples.txt").read_text().splitlines()
    assert samples[0].startswith("digits test: accuracy")
    confusion = np.array([[int(x) for x in line.split()[1:]] for line in samples[2:]])
    assert confusion.shape == (10, 10) and confusion.sum() == 359  # every held-out image counted once


def test_vit_digits_falls_back_from_mnist_and_fits_the_model_to_the_images(tmp_path):
    config = tiny("vit_digits", data_dir=str(tmp_path))  # an empty directory: mnist is not prepared there
    with pytest.warns(UserWarning, match="digits"):
        cfg = build_run(config).model_config
    assert (cfg.image_size, cfg.patch_size, cfg.num_channels, cfg.num_classes, cfg.max_len) == (8, 2, 1, 10, 17)


def test_lm_task_tokenizes_with_sentencepiece(corpus):
    config = text_config("shakespeare_char_cpu", corpus)
    config.data.update(tokenizer="sentencepiece", vocab_size=40)
    run = build_run(config)
    task = run.task
    assert isinstance(task.tokenizer, data.SentencePieceTokenizer)
    assert run.model_config.vocab_size == 40
    text = pathlib.Path(corpus).read_text()
    cut = int(len(text) * (1 - config.data.validation_fraction))
    assert task.tokenizer.decode(task.train_tokens.tokens) == text[:cut]
    assert len(task.train_tokens) < 0.8 * len(text)  # subwords, not characters


def test_lm_trains_on_a_prepared_corpus_with_packed_documents(tmp_path, corpus):
    """`jaxformer prepare` once, then `--config.data.prepared=DIR`: the tokenizer, vocabulary and splits come from
    the prepared directory, and packed-document batches carry segment ids into the model."""
    prepared = tmp_path / "prepared"
    data.prepare(f"text:{corpus}", "char", str(prepared), validation_fraction=0.1, workers=1, progress=False)
    config = tiny("shakespeare_char_cpu", prepared=str(prepared), seq_len=16, sampling="packed_documents")
    run = build_run(config)
    task = run.task
    assert task.tokenizer == data.open_prepared(str(prepared)).tokenizer
    assert run.model_config.vocab_size == task.tokenizer.vocab_size
    batch = task.train_data()[0]
    assert set(batch) == {"inputs", "targets", "weights", "segment_ids", "positions"}
    final = train_and_evaluate(config, str(tmp_path / "run"))
    check_run(tmp_path / "run", final, ("val_perplexity",))
    config.data.eval_split = "test"
    with pytest.raises(ValueError, match=r"'test'.*has \['train', 'validation'\]"):
        make_task(config)


def test_prepare_then_train_with_the_defaults(tmp_path):
    """`jaxformer prepare` with only its required flags (and one process: the pool changes nothing written), then the
    CPU recipe on what it wrote: prepare holds out 10% as "validation" by default, which the recipe evaluates on."""
    rng = np.random.default_rng(0)
    words = ["to", "be", "or", "not", "that", "is", "the", "question"]
    (tmp_path / "input.txt").write_text("".join(" ".join(rng.choice(words, size=8)) + "\n" for _ in range(200)))
    out = tmp_path / "prepared"
    argv = ["jaxformer", "prepare", "--source", f"text:{tmp_path}/input.txt", "--tokenizer", "char", "--out", str(out)]
    assert cli.main([*argv, "--workers=1"]) == 0
    assert data.open_prepared(out).split_names == ["train", "validation"]
    config = tiny("shakespeare_char_cpu", prepared=str(out), seq_len=16)
    config.update(num_steps=2, eval_every=2, log_every=2, checkpoint_every=2, batch_size=4)
    config.sample.num_tokens = 0  # no sampling (no generate to compile): this test is about the data
    final = train_and_evaluate(config, str(tmp_path / "run"))
    assert final["step"] == 2 and np.isfinite(final["val_loss"])


@pytest.mark.parametrize(
    "recipe, key, value, error",
    [
        ("shakespeare_char_cpu", "seq_len", 0, r"`config.data.seq_len` must be a positive int; got 0"),
        ("bert_mlm_tiny", "seq_len", -1, r"`config.data.seq_len` must be a positive int; got -1"),
        ("bert_mlm_tiny", "mask_rate", 0.0, r"`config.data.mask_rate` must be a finite number in \(0, 1\); got 0.0"),
        ("seq2seq_toy", "num_train", 0, r"`config.data.num_train` must be a positive int; got 0"),
        ("seq2seq_toy", "min_len", 9, r"config.data.min_len=9 must be <= config.data.max_len=8"),
        ("vit_digits", "patch_grid", 0, r"`config.data.patch_grid` must be a positive int; got 0"),
    ],
)
def test_every_data_size_is_checked_where_the_task_reads_it(recipe, key, value, error):
    config = tiny(recipe)
    config.data[key] = value
    with pytest.raises(ValueError, match=error):
        build_run(config)


def test_a_config_is_completed_with_the_defaults_of_its_task():
    from jaxformer.training import defaults

    partial = ml_collections.ConfigDict({"task": "seq2seq", "num_steps": 7, "data": {"max_len": 4}})
    config = defaults.complete(partial)
    assert config.num_steps == 7 and config.data.max_len == 4  # what the config sets wins
    assert config.label_smoothing == 0.0 and config.data.min_len == defaults.seq2seq_data().min_len
    assert "seq_len" not in config.data  # the data keys of its own task only
    assert "label_smoothing" not in partial  # the config itself is left alone
    assert defaults.complete(config) == config
    with pytest.raises(ValueError, match=r"config.task='translation'; choose one of \('lm', 'mlm'"):
        defaults.complete({"task": "translation"})
    with pytest.raises(TypeError, match=r"`config` must be an ml_collections.ConfigDict or a dict; got list"):
        defaults.complete([("task", "lm")])
    with pytest.raises(TypeError, match=r"`data_fields` must be a dict of model fields or None; got tuple"):
        build_run(partial, data_fields=(("vocab_size", 13),))


def test_unknown_task_is_named():
    config = tiny("seq2seq_toy")
    config.task = "translation"
    with pytest.raises(ValueError, match=r"config.task='translation'; choose one of \('lm', 'mlm'"):
        make_task(config)


def test_model_override_may_not_shrink_what_the_data_needs():
    config = tiny("seq2seq_toy")
    fields = {"vocab_size": 13, "max_len": 9}
    assert build_run(config, data_fields=fields).model_config.vocab_size == 13
    config.model.vocab_size = 64  # padding the vocabulary is allowed
    assert build_run(config, data_fields=fields).model_config.vocab_size == 64
    config.model.vocab_size = 8
    with pytest.raises(ValueError, match=r"config.model.vocab_size=8 is smaller than the data needs \(13\)"):
        build_run(config, data_fields=fields)


def test_mlm_batches_resume_exactly_and_corrupt_only_chosen_positions(corpus):
    config = text_config("bert_mlm_tiny", corpus)
    config.update(batch_size=4, seed=3)
    task = make_task(config)
    straight = pipeline.iterator(task.train_data())
    first = [next(straight) for _ in range(5)]
    resumed = pipeline.iterator(task.train_data())
    next(resumed)
    again = pipeline.iterator(task.train_data())
    again.set_state(resumed.get_state())
    for want, got in zip(first[1:], [next(again) for _ in range(4)], strict=True):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])
    seq_len = config.data.seq_len
    for batch in first:
        changed = batch["inputs"] != batch["targets"]
        assert not np.any(changed & ~batch["weights"])  # only chosen positions are corrupted
        np.testing.assert_array_equal(batch["weights"].sum(1), round(0.15 * seq_len))  # exactly k per row
    assert not np.array_equal(first[0]["weights"], first[1]["weights"])  # a fresh corruption every step
    # Each process corrupts only its rows, exactly as one process corrupts them.
    half = task.train_data(slice(2, 4))[3]
    for key in first[3]:
        np.testing.assert_array_equal(half[key], first[3][key][2:])


def test_exact_match_counts_the_whole_target_and_its_eos():
    eos = data.EOS_ID
    tgt_out = np.array([[5, 6, eos, 0], [5, 6, eos, 0], [5, 6, eos, 0], [7, eos, 0, 0]])
    valid = tgt_out != 0
    predicted = np.array([[5, 6, eos, eos], [5, 6, 7, eos], [5, 7, eos, 0], [7, eos, 0, 0]])
    np.testing.assert_array_equal(exact_matches(predicted, tgt_out, valid), [True, False, False, True])


@pytest.mark.slow
def test_seq2seq_toy_learns_reverse_to_99_percent_exact_match(tmp_path):
    config = load_config("seq2seq_toy")
    final = train_and_evaluate(config, str(tmp_path))
    assert final["step"] == config.num_steps
    assert final["val_exact_match"] >= 0.99, final


def test_bf16_compute_keeps_float32_parameters(corpus):
    from jaxformer.training import create_train_state, make_train_step

    losses = {}
    for dtype in ("float32", "bfloat16"):
        config = text_config("shakespeare_char_cpu", corpus)
        config.model.dtype = dtype
        run = build_run(config)
        graphs, state = create_train_state(run.make_model(), run.optimizer)
        step = make_train_step(graphs, run.optimizer, run.schedule, run.task.loss)
        state, metrics = step(state, run.task.train_data()[0])
        assert {p.dtype for p in jax.tree.leaves(state.params)} == {np.dtype("float32")}
        losses[dtype] = float(metrics["loss"])
    assert np.isfinite(losses["bfloat16"])
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=2e-2)


def test_schedule_counts_optimizer_updates_under_gradient_accumulation():
    from jaxformer.training.schedules import make_schedule

    config = tiny("seq2seq_toy")
    config.update(num_steps=20, warmup_steps=4, learning_rate=1e-2, end_learning_rate=0.0)
    config.optimizer.grad_accum_steps = 2
    fields = {"vocab_size": 13, "max_len": 9}
    schedule = build_run(config, data_fields=fields).schedule
    updates = make_schedule("warmup_cosine", learning_rate=1e-2, num_steps=10, warmup_steps=2)
    for step in range(20):
        np.testing.assert_allclose(schedule(step), updates(step // 2), rtol=1e-6)
    config.num_steps = 21
    with pytest.raises(ValueError, match=r"config.num_steps=21 must be a multiple of optimizer.grad_accum_steps=2"):
        build_run(config, data_fields=fields)


def test_schedule_options_reach_the_schedule():
    config = tiny("seq2seq_toy")
    config.update(schedule="step", num_steps=20, warmup_steps=0, learning_rate=1.0)
    config.schedule_options.update(boundaries=(5, 10), decay_factor=0.5)
    schedule = build_run(config, data_fields={"vocab_size": 13, "max_len": 9}).schedule
    np.testing.assert_allclose([schedule(4), schedule(5), schedule(12)], [1.0, 0.5, 0.25])
