"""BERT and MLM masking: float64 NumPy references, padding invariance, every norm, jit, scan, errors, param counts."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
from flax import nnx

from jaxformer import nn, ops
from jaxformer.models.bert import BERT, BERTOutput
from jaxformer.models.config import ModelConfig
from jaxformer.models.masking import mask_for_mlm
from tests.models.helpers import param_count, scanned_copy
from tests.nn.test_layers import np_, randomize

# T = 17, the sequence length of the vit-tiny tests: jax caches eager op compilations by shape, so both files share
# the compilations of the blocks' ops, which dominate the run time.
TOKENS = np.random.default_rng(0).integers(0, 256, size=(2, 17))
VALID = np.arange(17)[None, :] < np.array([[14], [4]])  # lengths 14 and 4


def tiny(**overrides):
    return ModelConfig.variant("bert-tiny", **{"dropout_rate": 0.0, **overrides})


def build(seed=0, **overrides):
    return randomize(BERT(tiny(**overrides), rngs=nnx.Rngs(seed)), seed)


# -- parameter counts ------------------------------------------------------------------------------------------


def test_bert_base_parameter_counts():
    model = nnx.eval_shape(lambda: BERT(ModelConfig.variant("bert-base"), rngs=nnx.Rngs(0)))
    total = param_count(model)
    backbone = param_count(model, lambda path: path[0] != "mlm_head")
    assert backbone == 109_482_240  # Hugging Face bert-base-uncased (BertModel, pooler included)
    assert total - backbone == 768 * 768 + 768 + 2 * 768 + 30522  # transform + LayerNorm + output bias; tied decoder
    assert total == 110_104_890
    assert abs(total - 110e6) / 110e6 < 0.01  # the published 110M


def test_untied_head_adds_a_decoder_and_every_param_has_logical_axes():
    tied = nnx.eval_shape(lambda: BERT(tiny(), rngs=nnx.Rngs(0)))
    untied = nnx.eval_shape(lambda: BERT(tiny(tie_embeddings=False), rngs=nnx.Rngs(0)))
    assert param_count(untied) - param_count(tied) == 64 * 256
    for path, param in nnx.iter_graph(untied):
        if isinstance(param, nnx.Param):
            axes = nn.logical_axes(param)
            assert axes is not None and len(axes) == len(param.shape), path


# -- forward pass: references ----------------------------------------------------------------------------------


def test_output_shapes_and_dtypes():
    model = build()
    out = model(TOKENS, valid=VALID, token_types=np.zeros_like(TOKENS))
    assert isinstance(out, BERTOutput)
    assert out.hidden.shape == (2, 17, 64) and out.pooled.shape == (2, 64)
    logits = model.mlm_logits(out.hidden)
    assert logits.shape == (2, 17, 256) and logits.dtype == jnp.float32
    assert model.mlm_logits(out.hidden[VALID]).shape == (int(VALID.sum()), 256)  # gathered positions [M, D]
    assert np.isfinite(out.hidden).all()  # padded query rows included


def test_pooler_matches_reference():
    model = build()
    kernel = np.random.default_rng(5).normal(size=(64, 64)) / 8  # unit-variance outputs: tanh not saturated
    model.pooler.kernel[...] = jnp.asarray(kernel, jnp.float32)
    hidden, pooled = model(TOKENS, valid=VALID)
    want = np.tanh(np_(hidden)[:, 0] @ kernel + np_(model.pooler.bias[...]))
    assert 0.05 < np.abs(want).mean() < 0.95
    np.testing.assert_allclose(pooled, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("tie", [True, False])
def test_mlm_head_matches_reference(tie):
    model = build(tie_embeddings=tie)
    head = model.mlm_head
    head.kernel[...] = head.kernel[...] / 8
    hidden = np.random.default_rng(2).normal(size=(2, 5, 64)).astype(np.float32)
    z = np_(hidden) @ np_(head.kernel[...]) + np_(head.bias[...])
    z = 0.5 * z * (1 + scipy.special.erf(z / math.sqrt(2)))  # exact GELU (bert's "gelu_exact")
    z = (z - z.mean(-1, keepdims=True)) / np.sqrt(z.var(-1, keepdims=True) + 1e-12)
    z = z * np_(head.norm.scale[...]) + np_(head.norm.bias[...])
    decoder = np_(model.embed.tokens.embedding[...]).T if tie else np_(head.decoder[...])
    want = z @ decoder + np_(head.output_bias[...])
    np.testing.assert_allclose(model.mlm_logits(hidden), want, rtol=1e-4, atol=1e-3)


def test_swiglu_config_builds_with_a_gelu_head():
    model = build(activation="swiglu")
    assert model.mlm_head.act is ops.ACTIVATIONS["gelu_exact"]  # a gated activation has no D -> D form
    hidden = model(TOKENS).hidden
    assert np.isfinite(model.mlm_logits(hidden)).all()


@pytest.mark.parametrize("norm", ["layernorm", "batchnorm"])
def test_padding_does_not_change_the_real_tokens(norm):
    model = build(norm=norm)
    want = model(TOKENS, valid=VALID)
    other_ids = TOKENS.copy()
    other_ids[~VALID] = (TOKENS[~VALID] + 17) % 256
    got = model(other_ids, valid=VALID)
    shorter = model(TOKENS[:, :14], valid=VALID[:, :14])  # TOKENS is this with 3 more padding tokens appended
    for out in (got, shorter):
        np.testing.assert_allclose(
            np.asarray(out.hidden)[VALID[:, : out.hidden.shape[1]]], np.asarray(want.hidden)[VALID], atol=1e-4
        )
        # The pooler's dense + tanh amplifies float32 rounding of the batch statistics: 1.06e-4 seen on jax 0.11.
        np.testing.assert_allclose(out.pooled, want.pooled, atol=3e-4)
        assert np.isfinite(out.hidden).all()
    # Without the mask the padding does leak in: the test above can fail.
    assert not np.allclose(np.asarray(model(other_ids).hidden)[VALID], np.asarray(want.hidden)[VALID], atol=1e-4)


def test_token_types_change_the_output():
    model = build()
    a = model(TOKENS).hidden
    b = model(TOKENS, token_types=np.ones_like(TOKENS)).hidden
    np.testing.assert_array_equal(a, model(TOKENS, token_types=np.zeros_like(TOKENS)).hidden)
    assert not np.allclose(a, b)


# -- every norm, grads, jit, scan, dropout ---------------------------------------------------------------------


NORM_CONFIGS = [(norm, position) for norm in ("layernorm", "rmsnorm", "batchnorm") for position in ("pre", "post")]


def test_every_norm_forward_and_grad_are_finite():
    """Each norm, pre and post: the loss is about log V at initialisation and every parameter gets a finite, nonzero
    gradient. One jit over the six (one-layer) models: a fraction of the cost of six compilations or of eager mode."""
    models = [BERT(tiny(num_layers=1, norm=n, norm_position=p), rngs=nnx.Rngs(0)) for n, p in NORM_CONFIGS]
    targets = VALID & (np.arange(17) % 3 == 1)  # every third real token is predicted

    def loss_fn(model):
        hidden, pooled = model(np.where(targets, 3, TOKENS), valid=VALID)  # 3: [MASK]
        loss, _ = ops.cross_entropy(model.mlm_logits(hidden, valid=VALID), TOKENS, weights=targets)
        return loss + jnp.mean(pooled**2)

    results = nnx.jit(lambda models: [nnx.value_and_grad(loss_fn)(m) for m in models])(models)
    for config, model, (loss, grads) in zip(NORM_CONFIGS, models, results, strict=True):
        assert (model.final_norm is None) == (config[1] == "post"), config
        assert np.isfinite(loss) and 4.0 < loss < 8.0, config  # about log(256) = 5.5 at initialisation
        for path, g in nnx.to_flat_state(grads):
            g = np.asarray(g[...])
            assert np.isfinite(g).all() and np.abs(g).sum() > 0, (config, path)


def test_jit_matches_eager():
    model = build()
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def forward(state, tokens, valid):
        model = nnx.merge(graphdef, state)
        out = model(tokens, valid=valid)
        return out, model.mlm_logits(out.hidden)

    (hidden, pooled), logits = forward(state, TOKENS, VALID)
    want = model(TOKENS, valid=VALID)
    np.testing.assert_allclose(hidden, want.hidden, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pooled, want.pooled, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, model.mlm_logits(want.hidden), rtol=1e-4, atol=1e-3)


def test_scanned_layers_match_the_loop():
    looped = build(norm_position="pre")
    scanned = scanned_copy(looped)
    want, got = looped(TOKENS, valid=VALID), scanned(TOKENS, valid=VALID)
    assert got.hidden.shape == (2, 17, 64) and np.isfinite(got.hidden).all()
    np.testing.assert_allclose(np.asarray(got.hidden)[VALID], np.asarray(want.hidden)[VALID], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.pooled, want.pooled, rtol=1e-4, atol=1e-4)


def test_dropout_only_in_training():
    model = BERT(tiny(dropout_rate=0.1), rngs=nnx.Rngs(0))
    assert not np.allclose(model(TOKENS).hidden, model(TOKENS).hidden)
    model.eval()
    np.testing.assert_array_equal(model(TOKENS).hidden, model(TOKENS).hidden)


# -- errors ----------------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    model = BERT(tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=256\); got min 0, max 256"):
        model(np.array([[0, 256]]))
    with pytest.raises(ValueError, match=r"130 tokens but .* max_len=128"):
        model(np.zeros((1, 130), np.int32))
    with pytest.raises(ValueError, match=r"integer token ids \[B, T\]"):
        model(np.zeros((17,), np.int32))
    with pytest.raises(TypeError, match=r"`valid` must be bool \[B, T\] = \(2, 17\).*int(32|64) of shape \(2, 17\)"):
        model(TOKENS, valid=VALID.astype(np.int64))
    with pytest.raises(ValueError, match=r"`valid` must be bool.*shape \(2, 16\)"):
        model(TOKENS, valid=VALID[:, :16])
    with pytest.raises(ValueError, match=r"`token_types` ids must lie in \[0, vocab_size=2\)"):
        model(TOKENS, token_types=np.full_like(TOKENS, 2))
    with pytest.raises(ValueError, match=r"`token_types` must have the shape of `tokens`"):
        model(TOKENS, token_types=np.zeros((2, 16), np.int32))
    with pytest.raises(ValueError, match="type_vocab_size > 0"):
        BERT(tiny(type_vocab_size=0), rngs=nnx.Rngs(0))(TOKENS, token_types=np.zeros_like(TOKENS))
    with pytest.raises(ValueError, match=r"`hidden` must be \[\.\.\., D=64\]"):
        model.mlm_logits(np.zeros((2, 17, 32), np.float32))


# -- MLM masking -----------------------------------------------------------------------------------------------

PAD, CLS, SEP, MASK, V = 0, 1, 2, 3, 1000


def batch(rng, B, T, lengths):
    """[CLS] w_1 .. w_{n-2} [SEP] then padding, words drawn from [4, V)."""
    tokens = rng.integers(4, V, size=(B, T), dtype=np.int32)
    valid = np.arange(T)[None, :] < lengths[:, None]
    tokens[:, 0] = CLS
    tokens[np.arange(B), lengths - 1] = SEP
    tokens[~valid] = PAD
    return tokens, valid


def test_mask_for_mlm_statistics():
    rng = np.random.default_rng(0)
    B, T = 2000, 64
    lengths = rng.integers(2, T + 1, size=B)
    lengths[:3] = (2, 3, T)  # nothing eligible; one eligible token; a full row
    tokens, valid = batch(rng, B, T, lengths)
    inputs, labels, targets = mask_for_mlm(
        jax.random.key(0), tokens, vocab_size=V, mask_id=MASK, valid=valid, special_ids=(CLS, SEP)
    )
    inputs, labels, targets = np.asarray(inputs), np.asarray(labels), np.asarray(targets)
    assert inputs.dtype == tokens.dtype and targets.dtype == bool
    np.testing.assert_array_equal(labels, tokens)
    eligible = valid & (tokens != CLS) & (tokens != SEP)
    assert not (targets & ~eligible).any()  # never padding, [CLS] or [SEP]
    n = eligible.sum(-1)
    want = np.where(n > 0, np.maximum(1, np.round(np.float32(0.15) * n.astype(np.float32))), 0)
    np.testing.assert_array_equal(targets.sum(-1), want)
    assert (np.abs(targets.sum(-1) - 0.15 * n) <= 0.5 + 1e-6)[n >= 4].all()
    assert targets[:2].sum(-1).tolist() == [0, 1]
    np.testing.assert_array_equal(inputs[~targets], tokens[~targets])  # only chosen positions change
    chosen_inputs, chosen_tokens = inputs[targets], tokens[targets]
    masked = chosen_inputs == MASK
    kept = chosen_inputs == chosen_tokens
    randomized = ~masked & ~kept
    assert targets.sum() > 8_000  # about 4.6 per row: each fraction below is within 0.003 (1 sigma)
    assert abs(masked.mean() - 0.8) < 0.02
    assert abs(kept.mean() - 0.1) < 0.02  # (a random id equals the original with probability 1 / V)
    assert abs(randomized.mean() - 0.1) < 0.02
    random_ids = chosen_inputs[randomized]
    assert random_ids.min() >= 0 and random_ids.max() < V and len(np.unique(random_ids)) > 500


def test_mask_for_mlm_chooses_positions_uniformly_and_jits():
    rng = np.random.default_rng(1)
    B, T = 2000, 64  # the shape of the test above: eager compilations are shared
    tokens, valid = batch(rng, B, T, np.full(B, T))
    corrupt = functools.partial(mask_for_mlm, vocab_size=V, mask_id=MASK, special_ids=(CLS, SEP))
    key = jax.random.key(3)
    eager = corrupt(key, tokens, valid=valid)
    jitted = jax.jit(corrupt)(key, tokens, valid=valid)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_array_equal(a, b)
    freq = np.asarray(eager[2]).mean(0)  # round(0.15 * 62) = 9 of the 62 words in every row; sigma 0.008
    assert freq[0] == freq[-1] == 0
    np.testing.assert_allclose(freq[1:-1], 9 / 62, atol=0.04)
    assert not np.array_equal(corrupt(jax.random.key(4), tokens, valid=valid)[2], eager[2])


def test_mask_for_mlm_errors():
    tokens = np.array([[5, 6, 7]])
    corrupt = functools.partial(mask_for_mlm, jax.random.key(0), vocab_size=10, mask_id=3)
    with pytest.raises(ValueError, match=r"`mask_rate` must be a finite number in \(0, 1\); got 0.0"):
        corrupt(tokens, mask_rate=0.0)
    with pytest.raises(ValueError, match=r"`mask_rate` must be a finite number in \(0, 1\); got 1.0"):
        corrupt(tokens, mask_rate=1.0)
    with pytest.raises(TypeError, match=r"`mask_rate` must be a real number; got '0.15'"):
        corrupt(tokens, mask_rate="0.15")
    with pytest.raises(ValueError, match=r"`mask_id` must be the \[MASK\] token id, in \[0, vocab_size=10\); got 10"):
        mask_for_mlm(jax.random.key(0), tokens, vocab_size=10, mask_id=10)
    with pytest.raises(ValueError, match=r"integer token ids \[B, T\]"):
        corrupt(tokens[0])
    with pytest.raises(TypeError, match=r"integer token ids \[B, T\]; got float32"):
        corrupt(tokens.astype(np.float32))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=10\)"):
        corrupt(tokens + 5)
    with pytest.raises(ValueError, match=r"`valid` must be bool \[B, T\] = \(1, 3\)"):
        corrupt(tokens, valid=np.ones((1, 4), bool))
    with pytest.raises(ValueError, match=r"`special_ids` must be token ids, in \[0, vocab_size=10\); got -1"):
        corrupt(tokens, special_ids=(-1,))
    with pytest.raises(ValueError, match=r"`vocab_size` must be a positive int"):
        mask_for_mlm(jax.random.key(0), tokens, vocab_size=10.0, mask_id=3)


def test_empty_sequences_and_mlm_head_inputs():
    model = BERT(tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`tokens` must hold at least one token \(\[CLS\], which the pooler reads\)"):
        model(np.zeros((2, 0), np.int32))
    hidden = BERT(tiny(pooler=False), rngs=nnx.Rngs(0))(np.zeros((2, 0), np.int32)).hidden
    assert hidden.shape == (2, 0, 64)
    with pytest.raises(TypeError, match=r"`hidden` must have a floating dtype"):
        model.mlm_logits(np.ones((2, 3, 64), np.int32))
    with pytest.raises(TypeError, match=r"`valid` must be bool \[B, T\] = \(2, 3\)"):
        model.mlm_logits(np.ones((2, 3, 64), np.float32), valid=np.ones((2, 3), np.int32))
    with pytest.raises(ValueError, match=r"`token_types` ids must lie in \[0, vocab_size=2\)"):
        model(TOKENS, token_types=np.full(TOKENS.shape, 2))


def test_mask_for_mlm_refuses_what_is_not_a_key_or_a_sequence():
    tokens = np.array([[5, 6, 7]])
    for rng in (0, None):
        with pytest.raises(TypeError, match=r"`rng` must be a jax.random key"):
            mask_for_mlm(rng, tokens, vocab_size=10, mask_id=3)
    with pytest.raises(TypeError, match=r"`special_ids` must be a sequence of token ids"):
        mask_for_mlm(jax.random.key(0), tokens, vocab_size=10, mask_id=3, special_ids=5)
    mask_for_mlm(jax.random.PRNGKey(0), tokens, vocab_size=10, mask_id=3)  # a raw uint32 key is a key
