"""Checkpoints you can trust: damaged checkpoints are found, moved aside and skipped; a resume then continues exactly
as an uninterrupted run from the intact step would. Also: a changed architecture is refused before any restore, a
partial metrics line is repaired, SIGTERM saves and exits 143, and bad loop settings are named."""

import functools
import pathlib
import random
import re
import shutil
import signal
import time

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxformer.configs import load_config
from jaxformer.training.checkpoints import CHECKSUMS_FILE, Checkpointer, DamagedCheckpointError
from jaxformer.training.loop import check_loop_config, train_and_evaluate
from jaxformer.training.trained import load_trained
from tests.training.test_loop import CONFIG, rows_without_timing, tiny_args, train

STEPS, EVERY = 12, 4  # checkpoints at 4, 8, 12 (all kept)


def tiny_config(corpus, **changes):
    config = load_config(CONFIG)
    config.data.update(source="text_file", path=str(corpus), seq_len=16)
    config.model.update(num_layers=1, num_heads=2, d_model=32, d_ff=64, dropout_rate=0.1)
    config.update(batch_size=4, warmup_steps=2, log_every=2, eval_every=EVERY, checkpoint_every=EVERY)
    config.update(num_steps=STEPS, keep_checkpoints=5)
    config.update(**changes)
    config.sample.num_tokens = 8
    return config


def plain(x):
    return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)


def step_files(workdir, step) -> list[pathlib.Path]:
    root = pathlib.Path(workdir) / "checkpoints" / str(step)
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != CHECKSUMS_FILE)


def biggest(files):
    return max(files, key=lambda p: p.stat().st_size)


def truncate(workdir, step):
    path = biggest(step_files(workdir, step))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(workdir, step):  # in place: the size stays the same
    path = biggest(step_files(workdir, step))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x5A
    path.write_bytes(bytes(raw))


def garbage_metadata(workdir, step):
    path = next(p for p in step_files(workdir, step) if "metadata" in p.name.lower())
    path.write_bytes(b"\x00garbage" * (path.stat().st_size // 8 + 1))


def missing_item(workdir, step):
    shutil.rmtree(pathlib.Path(workdir) / "checkpoints" / str(step) / "data")


def unfinished_save(workdir, step):  # killed after orbax finished but before the checksums were written
    (pathlib.Path(workdir) / "checkpoints" / str(step) / CHECKSUMS_FILE).unlink()


FAULTS = {f.__name__: f for f in (truncate, flip_a_byte, garbage_metadata, missing_item, unfinished_save)}


@pytest.fixture
def uninterrupted(tmp_path_factory, corpus):
    """A reference run to STEPS, and a copy of its workdir as a kill right after step 8 leaves it (checkpoints 4
    and 8; the rows after 8 are dropped by any resume). Trained once per session: the tests copy, never change it."""
    return reference_run(str(tmp_path_factory.getbasetemp()), str(corpus))


# Once per session: `make test` sends a whole file to one worker (--dist loadfile), and a module fixture would not do,
# as xdist tears those down whenever a worker's queue runs dry.
@functools.cache
def reference_run(base: str, corpus: str) -> tuple[pathlib.Path, pathlib.Path]:
    workdir = pathlib.Path(base) / "uninterrupted" / "run"
    train_and_evaluate(tiny_config(corpus), str(workdir))
    at_8 = workdir.parent / "at_8"
    shutil.copytree(workdir, at_8)
    shutil.rmtree(at_8 / "checkpoints" / str(STEPS))
    return workdir, at_8


def damage_and_move_aside(fault: str, workdir: pathlib.Path) -> None:
    """`fault` done to checkpoint 8 of `workdir` (a copy of the reference run as a kill after step 8 leaves it):
    verify names it, and the search for the newest intact step moves it aside and finds 4."""
    FAULTS[fault](workdir, 8)
    with Checkpointer(workdir / "checkpoints") as checkpoints, pytest.raises(DamagedCheckpointError):
        checkpoints.verify(8)
    messages = []
    with Checkpointer(workdir / "checkpoints") as checkpoints:
        assert checkpoints.latest_intact_step(log=messages.append) == 4
        assert checkpoints.all_steps() == [4]
    assert re.search(r"Checkpoint 8 is damaged: .+ Moved it to .+checkpoints\.damaged/8\.\d+T\d+Z", messages[0])
    moved = list((workdir / "checkpoints.damaged").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("8.")  # kept, never deleted


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_damaged_newest_checkpoint_is_found_and_moved_aside(fault, tmp_path, uninterrupted):
    _, at_8 = uninterrupted
    shutil.copytree(at_8, tmp_path / "run")
    damage_and_move_aside(fault, tmp_path / "run")


# Every kind of damage is found and moved aside by default (above); the resume after it, which then starts from the
# same intact step 4 whatever the damage was, runs by default after a checksum mismatch (flip_a_byte) and after
# the other four with `make test-all`.
SLOW_FAULTS = ("truncate", "garbage_metadata", "missing_item", "unfinished_save")


@pytest.mark.parametrize(
    "fault", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW_FAULTS else f for f in sorted(FAULTS)]
)
def test_a_damaged_newest_checkpoint_is_moved_aside_and_the_resume_is_exact(fault, tmp_path, corpus, uninterrupted):
    reference, at_8 = uninterrupted
    workdir = tmp_path / "run"
    shutil.copytree(at_8, workdir)
    damage_and_move_aside(fault, workdir)
    train_and_evaluate(tiny_config(corpus), str(workdir))  # resumes from 4
    assert rows_without_timing(workdir) == rows_without_timing(reference)
    model, _, _ = load_trained(str(workdir))
    want, _, _ = load_trained(str(reference))
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(want)), strict=True):
        np.testing.assert_array_equal(plain(a), plain(b))


def test_sample_skips_a_damaged_checkpoint(tmp_path, uninterrupted):
    _, at_8 = uninterrupted
    shutil.copytree(at_8, tmp_path / "run")
    flip_a_byte(tmp_path / "run", 8)
    model, _, config = load_trained(str(tmp_path / "run"))  # what `jaxformer sample --workdir` reads
    assert config.num_steps == STEPS and (tmp_path / "run" / "checkpoints.damaged").is_dir()
    assert model.config.d_model == 32


def test_no_intact_checkpoint_is_an_error_and_nothing_is_overwritten(tmp_path, corpus, uninterrupted):
    _, at_8 = uninterrupted
    workdir = tmp_path / "run"
    shutil.copytree(at_8, workdir)
    for step in (4, 8):
        truncate(workdir, step)
    metrics = (workdir / "metrics.jsonl").read_text()
    for _ in range(2):  # and again: the damaged ones stay where they were moved, and still nothing starts over
        with pytest.raises(FileNotFoundError, match=r"No intact checkpoint .* Nothing was overwritten"):
            train_and_evaluate(tiny_config(corpus), str(workdir))
    assert (workdir / "metrics.jsonl").read_text() == metrics
    assert len(list((workdir / "checkpoints.damaged").iterdir())) == 2


def test_restoring_a_named_damaged_step_raises(tmp_path, uninterrupted):
    _, at_8 = uninterrupted
    shutil.copytree(at_8, tmp_path / "run")
    flip_a_byte(tmp_path / "run", 4)
    with Checkpointer(tmp_path / "run" / "checkpoints") as checkpoints:
        with pytest.raises(DamagedCheckpointError, match=r"has sha256 [0-9a-f]{64}; [0-9a-f]{64} was saved"):
            checkpoints.restore_config(4)
        assert checkpoints.restore_config(8)["num_steps"] == STEPS


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_layers", 2), ("d_model", 64), ("scan_layers", False)],
)
def test_a_changed_architecture_is_refused_before_any_restore(field, value, tmp_path, corpus, uninterrupted):
    _, at_8 = uninterrupted
    shutil.copytree(at_8, tmp_path / "run")
    config = tiny_config(corpus)
    saved = config.model[field]
    config.model[field] = value
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    pattern = rf"model\.{field}: saved {saved!r}, requested {value!r}"
    with pytest.raises(ValueError, match=pattern):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


def test_execution_fields_and_the_schedule_may_change_on_resume(tmp_path, corpus, uninterrupted, capsys):
    _, at_8 = uninterrupted
    shutil.copytree(at_8, tmp_path / "run")
    config = tiny_config(corpus, num_steps=10)
    config.model.remat = "full"  # how the step computes, not what it computes
    train_and_evaluate(config, str(tmp_path / "run"))
    err = capsys.readouterr().err
    assert "Resuming with changed settings:" in err and "model.remat 'dots_no_batch' -> 'full'" in err


def test_a_partial_metrics_line_is_dropped_on_resume(tmp_path, corpus, uninterrupted, capsys):
    reference, at_8 = uninterrupted
    workdir = tmp_path / "run"
    shutil.copytree(at_8, workdir)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "train_loss": 2.5')  # what a kill in the middle of a write leaves
    train_and_evaluate(tiny_config(corpus), str(workdir))
    assert "dropped line" in capsys.readouterr().err
    assert rows_without_timing(workdir) == rows_without_timing(reference)


@pytest.mark.parametrize("name", ["num_steps", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints"])
@pytest.mark.parametrize("value", [0, -1, 1.5, True, None])
def test_loop_intervals_must_be_positive_ints(name, value, corpus):
    config = ml_collections.ConfigDict(tiny_config(corpus).to_dict(), type_safe=False)
    config[name] = value
    error = TypeError if value is None else ValueError  # None is no number; 1.5 and True are no valid count
    with pytest.raises(error, match=rf"`config\.{name}` must be a positive int; got {value!r}"):
        check_loop_config(config)


def test_sigterm_saves_the_step_and_exits_143_then_resumes(tmp_path, corpus):
    args = tiny_args(tmp_path, corpus, 100000, 50)
    child = train(args)
    deadline = time.time() + 300
    while not (tmp_path / "checkpoints" / "50" / CHECKSUMS_FILE).exists():  # the save is complete
        assert child.poll() is None and time.time() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    out = child.communicate(timeout=120)[0]
    assert child.returncode == 143, out[-2000:]
    stopped_at = int(re.search(r"Terminated \(SIGTERM\): saved step (\d+)", out).group(1))
    assert out.rstrip().endswith("run the same command to resume."), out[-2000:]  # nothing printed after it
    with Checkpointer(tmp_path / "checkpoints") as checkpoints:
        assert checkpoints.latest_intact_step() == stopped_at


@pytest.mark.slow  # three runs killed at random moments around their saves (~1 minute)
def test_sigkill_at_random_moments_of_saves_loses_nothing(tmp_path, corpus):
    """checkpoint_every=1 makes most of the run's time saving; each kill lands at a random moment of one, and
    every resume must still end exactly as the uninterrupted run."""
    straight = tmp_path / "straight"
    assert train(tiny_args(straight, corpus, 60, 1)).wait(timeout=600) == 0
    rng = random.Random(0)
    workdir = tmp_path / "killed"
    for _ in range(3):
        child = train(tiny_args(workdir, corpus, 60, 1))
        deadline = time.time() + 300
        saved = workdir / "checkpoints"
        while not saved.is_dir() or not any(p.name.isdigit() for p in saved.iterdir()):
            assert child.poll() is None and time.time() < deadline
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 2.0))
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert train(tiny_args(workdir, corpus, 60, 1)).wait(timeout=600) == 0
    assert rows_without_timing(workdir) == rows_without_timing(straight)


def test_an_unfinished_first_save_alone_starts_the_run_over(tmp_path, corpus, uninterrupted):
    """A kill between orbax's rename and the checksums of the first save lost nothing that had been saved: the
    next run starts from scratch (keeping the unfinished directory aside) instead of refusing to start."""
    reference, at_8 = uninterrupted
    workdir = tmp_path / "run"
    shutil.copytree(at_8, workdir)
    shutil.rmtree(workdir / "checkpoints" / "4")
    unfinished_save(workdir, 8)
    train_and_evaluate(tiny_config(corpus), str(workdir))
    assert rows_without_timing(workdir) == rows_without_timing(reference)
    assert [p.name.endswith(".unfinished") for p in (workdir / "checkpoints.damaged").iterdir()] == [True]
