"""Residual blocks: pre/post-norm composition, cached decoding, cross-attention, config validation."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import nn, ops
from tests.nn.test_layers import randomize

X = np.random.default_rng(0).normal(size=(2, 6, 16)).astype(np.float32)
CTX = np.random.default_rng(1).normal(size=(2, 5, 12)).astype(np.float32)


def config(**overrides):
    return nn.BlockConfig(**{"d_model": 16, "num_heads": 4, "d_ff": 32, "num_kv_heads": 2, **overrides})


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_encoder_block_composes_its_sublayers(norm, norm_position):
    block = randomize(nn.EncoderBlock(config(norm=norm, norm_position=norm_position), rngs=nnx.Rngs(0)))
    mask = ops.padding_mask(ops.lengths_to_valid(jnp.array([6, 4]), 6))
    attn = lambda h: block.attention(h, mask=mask)
    n1, n2 = block.attention_residual.norm, block.ffn_residual.norm
    if norm_position == "pre":
        h = X + attn(n1(X))
        want = h + block.ffn(n2(h))
    else:
        h = n1(X + attn(X))
        want = n2(h + block.ffn(h))
    np.testing.assert_allclose(block(X, mask=mask), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm_position", ["pre", pytest.param("post", marks=pytest.mark.slow)])
def test_decoder_block_cached_decoding_equals_full_pass(norm_position):
    cfg = config(norm_position=norm_position, positional="rope", norm="rmsnorm", activation="swiglu")
    block = nn.DecoderBlock(cfg, cross_attention=True, context_dim=12, rngs=nnx.Rngs(0))
    full = block(X, CTX)
    block.init_cache(2, 8)
    pieces = [block(X[:, :3], CTX, decode=True), block(X[:, 3:4], CTX, decode=True), block(X[:, 4:], CTX, decode=True)]
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)


def test_decoder_block_is_causal():
    block = nn.DecoderBlock(config(), rngs=nnx.Rngs(0))
    changed = X.copy()
    changed[:, 4:] += 1.0
    np.testing.assert_allclose(block(changed)[:, :4], block(X)[:, :4], rtol=1e-6, atol=1e-6)
    assert not np.allclose(block(changed)[:, 4:], block(X)[:, 4:])


def test_batchnorm_block_ignores_padding_in_its_statistics():
    block = nn.EncoderBlock(config(norm="batchnorm"), rngs=nnx.Rngs(0))
    valid = np.ones((2, 6), bool)
    valid[1, 4:] = False
    mask = ops.padding_mask(jnp.asarray(valid))
    noisy = X.copy()
    noisy[~valid] = 100.0
    np.testing.assert_allclose(
        np.asarray(block(noisy, mask=mask, valid=valid))[valid],
        np.asarray(block(X, mask=mask, valid=valid))[valid],
        rtol=1e-4,
        atol=1e-4,
    )


def test_config_and_call_errors():
    with pytest.raises(ValueError, match=r"BlockConfig\.norm='groupnorm'"):
        config(norm="groupnorm")
    with pytest.raises(ValueError, match=r"BlockConfig\.norm_position='sandwich'"):
        config(norm_position="sandwich")
    with pytest.raises(ValueError, match=r"`BlockConfig.dropout_rate` must be a finite number in \[0, 1\); got 1.0"):
        config(dropout_rate=1.0)
    block = nn.DecoderBlock(config(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="exactly when the block was built with cross_attention"):
        block(X, CTX)


@pytest.mark.parametrize(
    "field, value, error, match",
    [
        ("d_model", True, ValueError, r"`BlockConfig.d_model` must be a positive int; got True"),
        ("d_ff", 0, ValueError, r"`BlockConfig.d_ff` must be a positive int; got 0"),
        ("num_kv_heads", -1, ValueError, r"`BlockConfig.num_kv_heads` must be a positive int; got -1"),
        ("head_dim", 0, ValueError, r"`BlockConfig.head_dim` must be a positive int; got 0"),
        ("sliding_window", True, ValueError, r"`BlockConfig.sliding_window` must be a positive int; got True"),
        ("sliding_window", 2.0, ValueError, r"`BlockConfig.sliding_window` must be a positive int; got 2.0"),
        ("d_ff", "64", TypeError, r"`BlockConfig.d_ff` must be a positive int; got '64'"),
        ("num_heads", None, TypeError, r"`BlockConfig.num_heads` must be a positive int; got None"),
        ("rope_base", float("inf"), ValueError, r"`BlockConfig.rope_base` must be a finite number > 0; got inf"),
        ("rope_base", "1e4", TypeError, r"`BlockConfig.rope_base` must be a real number; got '1e4'"),
        ("norm_epsilon", -1e-5, ValueError, r"`BlockConfig.norm_epsilon` must be a finite number > 0"),
        ("norm_epsilon", "x", TypeError, r"`BlockConfig.norm_epsilon` must be a real number"),
        ("dropout_rate", float("nan"), ValueError, r"`BlockConfig.dropout_rate` must be a finite number in \[0, 1\)"),
        ("attention_dropout_rate", "0.1", TypeError, r"`BlockConfig.attention_dropout_rate` must be a real number"),
        ("dtype", "int32", TypeError, r"`BlockConfig.dtype` must be a floating dtype .*got int32"),
        ("param_dtype", "foo", TypeError, r"`BlockConfig.param_dtype` must be a floating dtype .*got 'foo'"),
        ("use_bias", "yes", TypeError, r"`BlockConfig.use_bias` must be True or False"),
        ("qk_norm", 1, TypeError, r"`BlockConfig.qk_norm` must be True or False"),
        ("norm", ["layernorm"], TypeError, r"BlockConfig.norm=\['layernorm'\]; choose one of"),
        ("norm", "groupnorm", ValueError, r"BlockConfig.norm='groupnorm'; choose one of"),
        ("attention_impl", None, TypeError, r"BlockConfig.attention_impl=None; choose one of \('auto'"),
    ],
)
def test_config_refuses_bad_field_values(field, value, error, match):
    with pytest.raises(error, match=match):
        config(**{field: value})


def test_config_stores_numpy_scalars_as_python_ones():
    cfg = config(d_model=np.int64(16), use_bias=np.bool_(False))
    assert type(cfg.d_model) is int and type(cfg.use_bias) is bool and hash(cfg) == hash(config(use_bias=False))
