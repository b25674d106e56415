"""Checkpointer: exact round trip (params, optimizer, RNG state, input position), keep-last-N, incomplete
checkpoints ignored."""

import os

import chex
import grain
import jax
import numpy as np
import pytest
from flax import nnx

from jaxformer import training
from jaxformer.data import pipeline
from jaxformer.models import GPT, ModelConfig
from jaxformer.training.checkpoints import Checkpointer
from jaxformer.training.tasks.lm import lm_loss

CFG = ModelConfig(vocab_size=32, num_layers=1, d_model=16, num_heads=2, d_ff=32, max_len=8, dropout_rate=0.1)
TOKENS = np.random.default_rng(0).integers(0, 32, size=(2, 9)).astype(np.int32)
BATCH = {"inputs": TOKENS[:, :-1], "targets": TOKENS[:, 1:]}


def input_iterator(consumed: int = 0):
    """A grain iterator over the batches 0, 1, 2, ... that has served `consumed` of them."""
    batches = pipeline.iterator(grain.MapDataset.range(100))
    for _ in range(consumed):
        next(batches)
    return batches


def fresh():
    schedule = training.make_schedule("constant", learning_rate=1e-2, num_steps=10)
    optimizer = training.make_optimizer(schedule)
    graphs, state = training.create_train_state(GPT(CFG, rngs=nnx.Rngs(0)), optimizer)
    return state, training.make_train_step(graphs, optimizer, schedule, lm_loss)


def leaves(state):
    def plain(x):
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return [plain(x) for x in jax.tree.leaves(state)]


def test_round_trip_continues_exactly(tmp_path):
    state, step = fresh()
    state, _ = step(state, BATCH)
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, state, data_iterator=input_iterator(1), config={"name": "t"})
        template, _ = fresh()
        batches = input_iterator()
        restored, config = ckpt.restore(template, data_iterator=batches)
    assert next(batches) == 1 and config == {"name": "t"}
    chex.assert_trees_all_equal_structs(restored, template)
    chex.assert_trees_all_equal_shapes_and_dtypes(restored, state)
    chex.assert_trees_all_equal(leaves(state), leaves(restored))  # bit-exact, RNG keys as their raw data
    # The next step (dropout masks included) is the same from the original and from the restored state.
    _, m1 = step(state, BATCH)
    _, m2 = step(restored, BATCH)
    assert float(m1["loss"]) == float(m2["loss"])


def test_keeps_the_last_n_and_ignores_incomplete_ones(tmp_path):
    state, _ = fresh()
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        for s in (1, 2, 3):
            ckpt.save(s, state, data_iterator=input_iterator(s), config={})
        assert ckpt.all_steps() == [2, 3]
        # What a crash in the middle of writing step 4 leaves behind: a temporary directory, never restored.
        os.makedirs(tmp_path / "4.orbax-checkpoint-tmp-1234" / "state")
        assert ckpt.latest_step() == 3
        batches = input_iterator()
        ckpt.restore(state, data_iterator=batches)
        assert next(batches) == 3
        with pytest.raises(ValueError, match="step 3 already exists"):
            ckpt.save(3, state, data_iterator=batches, config={})


def test_max_to_keep_must_be_a_positive_int(tmp_path):
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=rf"`max_to_keep` must be a positive int; got {bad!r}"):
            Checkpointer(tmp_path, max_to_keep=bad)
    with pytest.raises(TypeError, match=r"`max_to_keep` must be a positive int; got '3'"):
        Checkpointer(tmp_path, max_to_keep="3")


def test_restore_without_checkpoints_says_so(tmp_path):
    state, _ = fresh()
    with Checkpointer(tmp_path / "empty") as ckpt, pytest.raises(FileNotFoundError, match="No intact checkpoint"):
        ckpt.restore(state)
