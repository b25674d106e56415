"""ops.dense: a weight matmul in the compute dtype with float32 accumulation, and its one-row form on CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import ops
from jaxformer.decoding.generate import _generate
from jaxformer.models import GPT, ModelConfig

RNG = np.random.default_rng(0)
CASES = [
    ("BTD,DF->BTF", (2, 3, 8), (8, 5)),
    ("...D,DF->...F", (2, 3, 8), (8, 5)),
    ("BTD,DNH->BTNH", (2, 3, 8), (8, 2, 4)),
    ("BTNH,NHD->BTD", (2, 3, 2, 4), (2, 4, 8)),
    ("...D,VD->...V", (2, 3, 8), (11, 8)),
]


@pytest.mark.parametrize("subscripts, x_shape, w_shape", CASES)
def test_float32_is_the_plain_einsum(subscripts, x_shape, w_shape):
    x, w = RNG.normal(size=x_shape).astype(np.float32), RNG.normal(size=w_shape).astype(np.float32)
    np.testing.assert_array_equal(ops.dense(subscripts, x, w, dtype=jnp.float32), jnp.einsum(subscripts, x, w))


@pytest.mark.parametrize("subscripts, x_shape, w_shape", CASES)
@pytest.mark.parametrize("rows", ["many", "one"])
def test_bfloat16_accumulates_in_float32_and_rounds_once(subscripts, x_shape, w_shape, rows):
    """bf16 operands, float32 products and sums, one rounding at the end; with a single row (x's free axes of
    size 1, padded to two rows on CPU) the result is that of the same row inside a larger batch."""
    if rows == "one":
        x_shape = (1, 1, *x_shape[2:])
    x = jnp.asarray(RNG.normal(size=x_shape), jnp.bfloat16)
    w = jnp.asarray(RNG.normal(size=w_shape), jnp.bfloat16)
    got = ops.dense(subscripts, x, w, dtype=jnp.bfloat16)
    assert got.dtype == jnp.bfloat16
    want = np.einsum(subscripts, np.asarray(x, np.float64), np.asarray(w, np.float64))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=2**-8, atol=1e-6)
    if rows == "one":  # the padded computation is the first row of a two-row one
        two = ops.dense(subscripts, jnp.concatenate([x, x]), w, dtype=jnp.bfloat16)
        np.testing.assert_array_equal(got[0], two[0])


def test_batch_one_bfloat16_decoding_keeps_no_float32_copy_of_the_weights():
    """XLA:CPU computes a one-row bfloat16 dot in float32 and hoists the weight's float32 copy out of the decoding
    loop: the compiled `generate` would hold twice the model in temporaries. With the padded row it holds a
    fraction of one copy."""
    cfg = ModelConfig.variant("gpt2-tiny", vocab_size=4096, dtype="bfloat16", param_dtype="bfloat16", dropout_rate=0.0)
    graphdef, state = nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))
    prompt, lengths = jax.ShapeDtypeStruct((1, 8), jnp.int32), jax.ShapeDtypeStruct((1,), jnp.int32)
    settings = dict(max_new_tokens=4, max_len=16, temperature=0.0, top_k=None, top_p=None, eos_id=None)
    memory = _generate.lower(graphdef, state, prompt, lengths, jax.random.key(0), **settings).compile()
    memory = memory.memory_analysis()
    assert memory.temp_size_in_bytes < 0.25 * memory.argument_size_in_bytes, memory


def test_bad_arguments_are_named():
    x, w = np.ones((2, 3), np.float32), np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"`subscripts` must be an einsum spec of two operands.*got 'ab->b'"):
        ops.dense("ab->b", x, w, dtype=jnp.float32)
    with pytest.raises(TypeError, match="`dtype`"):
        ops.dense("ab,bc->ac", x, w, dtype=jnp.int32)
    with pytest.raises(TypeError, match="`x`"):
        ops.dense("ab,bc->ac", np.ones((2, 3), np.int32), w, dtype=jnp.float32)
