"""Activation sharding hints (nn/constraints.py): off by default, and on at every block boundary when a training
step turns them on. That they reach the compiled program on a real mesh is checked in training/test_sharding.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer.models import GPT, ModelConfig
from jaxformer.nn.constraints import RESIDUAL_AXES, activation_sharding, constrain


def test_without_hints_constrain_is_the_identity():
    x = jnp.ones((2, 3, 4))
    assert constrain(x, RESIDUAL_AXES) is x


@pytest.mark.parametrize("scan", [False, True])
def test_the_residual_stream_is_constrained_entering_the_stack_and_after_every_block(scan):
    cfg = ModelConfig.variant("gpt2-tiny", num_layers=3, scan_layers=scan)
    model = GPT(cfg, rngs=nnx.Rngs(0))
    model.eval()  # no dropout: the two calls below must agree
    seen = []

    def record(axes, shape):
        seen.append((axes, shape))
        return None  # leave the array alone

    tokens = np.zeros((2, 5), np.int32)
    want = model(tokens)
    with activation_sharding(record):
        got = model(tokens)
    # Unrolled: the stack's input and each of the 3 blocks' outputs. Scanned: the input and the one scanned block.
    residual = [entry for entry in seen if entry[0] == RESIDUAL_AXES]
    assert residual == [(RESIDUAL_AXES, (2, 5, cfg.d_model))] * (2 if scan else 4)
    # Besides, the model asks once whether its sequence is split (its default positions follow the layout), and
    # each attention how its queries are laid out (context parallelism: ring attention).
    queries = [entry for entry in seen if entry[0] != RESIDUAL_AXES]
    assert queries[0] == (("batch", "length"), (2, 5))
    assert queries[1:] == [(("batch", "length", "heads", "head_dim"), (2, 5, 4, 16))] * (1 if scan else 3)
    np.testing.assert_array_equal(got, want)
    assert constrain(want, RESIDUAL_AXES) is want  # the context is gone again


def test_a_constraint_applies_the_resolved_sharding_under_jit():
    device = jax.devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)

    @jax.jit
    def f(x):
        with activation_sharding(lambda axes, shape: sharding):
            return constrain(x * 2, ("batch", "embed"))

    assert "sharding" in jax.jit(f).lower(jnp.ones((2, 3))).as_text().lower()
    np.testing.assert_array_equal(f(jnp.ones((2, 3))), 2 * np.ones((2, 3)))


def test_axes_must_name_every_dimension():
    with activation_sharding(lambda axes, shape: None):
        with pytest.raises(ValueError, match=r"axes \('batch', 'embed'\) must name each of the 3 dims .*\(2, 3, 4\)"):
            constrain(jnp.ones((2, 3, 4)), ("batch", "embed"))


def test_the_hints_are_switched_off_after_an_error():
    with pytest.raises(RuntimeError), activation_sharding(lambda axes, shape: None):
        raise RuntimeError
    x = jnp.ones(3)
    assert constrain(x, ("batch",)) is x
