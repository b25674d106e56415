"""Encoder-decoder Transformer: cached decoding, decoder causality, encoder padding invariance, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer.models import ModelConfig
from jaxformer.models.transformer import Transformer

rng = np.random.default_rng(0)
SRC = rng.integers(1, 50, size=(2, 7)).astype(np.int32)
SRC_VALID = np.array([[1] * 7, [1] * 4 + [0] * 3], bool)
TGT = rng.integers(1, 50, size=(2, 9)).astype(np.int32)


def tiny(**overrides):
    return ModelConfig.variant("transformer-tiny", **{"vocab_size": 50, "dropout_rate": 0.0, **overrides})


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        pytest.param(dict(positional="rope", num_kv_heads=2, norm_position="pre"), marks=pytest.mark.slow),
        pytest.param(dict(positional="alibi", scan_layers=True), marks=pytest.mark.slow),
    ],
    ids=["paper", "rope-gqa-prenorm", "alibi-scan"],
)
def test_encode_then_cached_decoding_equals_the_teacher_forced_logits(overrides):
    model = Transformer(tiny(**overrides), rngs=nnx.Rngs(0))
    full = model(SRC, TGT, src_valid=SRC_VALID)
    memory = model.encode(SRC, src_valid=SRC_VALID)
    step = nnx.jit(lambda m, x: m.decode(x, memory, src_valid=SRC_VALID, decode=True))
    for prefill in (1, 5):
        model.init_cache(2, 12)
        pieces = [step(model, TGT[:, :prefill]), step(model, TGT[:, prefill : prefill + 1])]
        pieces.append(step(model, TGT[:, prefill + 1 :]))
        np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5, err_msg=f"{prefill=}")


def test_decoder_causality_through_gradients():
    """d logits[t] / d decoder-input embedding of position s is zero exactly when s > t (through the memory too)."""
    model = Transformer(tiny(positional="learned", tie_embeddings=False), rngs=nnx.Rngs(0))
    grad_at = nnx.jit(nnx.grad(lambda m, onehot: jnp.sum(m(SRC, TGT, src_valid=SRC_VALID) * onehot[:, None])))
    for t in (0, 4, 8):
        grads = grad_at(model, jnp.eye(9)[t])
        # The position table is shared by source and target; the source uses rows < 7 at every t, so look at the
        # target-only rows 7..8 and at the token table rows of target tokens that do not occur in the source.
        rows = np.linalg.norm(np.asarray(grads["embed"]["positions"]["embedding"][...]), axis=-1)
        assert (rows[7:9] > 0).tolist() == [t >= 7, t >= 8], (t, rows)


def test_encoder_and_decoder_ignore_source_padding():
    model = Transformer(tiny(norm="batchnorm"), rngs=nnx.Rngs(0))
    model.eval()  # BatchNorm's running statistics: the padding test is about attention
    other = SRC.copy()
    other[1, 4:] = [33, 44, 2]  # different ids where row 1 is padding
    longer = np.concatenate([SRC, np.zeros((2, 3), np.int32)], axis=1)  # more padding
    longer_valid = np.concatenate([SRC_VALID, np.zeros((2, 3), bool)], axis=1)
    memory = model.encode(SRC, src_valid=SRC_VALID)
    np.testing.assert_allclose(model.encode(other, src_valid=SRC_VALID)[1, :4], memory[1, :4], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        model.encode(longer, src_valid=longer_valid)[:, :7][SRC_VALID], memory[SRC_VALID], rtol=1e-5, atol=1e-5
    )
    logits = model(SRC, TGT, src_valid=SRC_VALID)
    np.testing.assert_allclose(model(other, TGT, src_valid=SRC_VALID), logits, rtol=1e-5, atol=1e-5)
    # (a longer source changes the order of float32 sums: rounding only)
    np.testing.assert_allclose(model(longer, TGT, src_valid=longer_valid), logits, rtol=1e-4, atol=1e-4)


def test_target_padding_does_not_change_the_real_positions():
    model = Transformer(tiny(), rngs=nnx.Rngs(0))
    tgt_valid = np.array([[1] * 9, [1] * 6 + [0] * 3], bool)
    other = TGT.copy()
    other[1, 6:] = 1
    a = model(SRC, TGT, src_valid=SRC_VALID, tgt_valid=tgt_valid)
    b = model(SRC, other, src_valid=SRC_VALID, tgt_valid=tgt_valid)
    np.testing.assert_allclose(a[1, :6], b[1, :6], rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(a))


def test_jit_matches_eager_and_gradients_are_finite():
    model = Transformer(tiny(dropout_rate=0.1), rngs=nnx.Rngs(0))
    grads = nnx.jit(nnx.grad(lambda m: jnp.mean(m(SRC, TGT, src_valid=SRC_VALID) ** 2)))(model)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    model.eval()
    jitted = nnx.jit(lambda m, s, t, v: m(s, t, src_valid=v))(model, SRC, TGT, SRC_VALID)
    np.testing.assert_allclose(jitted, model(SRC, TGT, src_valid=SRC_VALID), rtol=2e-5, atol=2e-5)


def test_bad_inputs():
    model = Transformer(tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"`src_valid` must be bool \[B, T\] = \(2, 7\), the shape of its tokens"):
        model(SRC, TGT, src_valid=SRC_VALID[:, :3])
    with pytest.raises(ValueError, match=r"`memory` must be \[B=2, S, D=64\]"):
        model.decode(TGT, np.zeros((2, 7, 8), np.float32))
    with pytest.raises(ValueError, match="200 tokens but the model's position table holds max_len=128"):
        model(SRC, np.ones((2, 200), np.int32))


def test_more_bad_inputs_and_empty_sequences():
    model = Transformer(tiny(), rngs=nnx.Rngs(0))
    model.eval()
    with pytest.raises(TypeError, match=r"`src` must be integer token ids \[B, T\]; got float32"):
        model(SRC.astype(np.float32), TGT)
    with pytest.raises(ValueError, match=r"`tgt` ids must lie in \[0, vocab_size=50\)"):
        model(SRC, TGT + 50)
    memory = model.encode(SRC, src_valid=SRC_VALID)
    with pytest.raises(TypeError, match=r"`memory` must have a floating dtype"):
        model.decode(TGT, np.asarray(memory).astype(np.int32))
    with pytest.raises(TypeError, match=r"`src_valid` must be bool \[B, T\] = \(2, 7\)"):
        model.decode(TGT, memory, src_valid=SRC_VALID.astype(np.int32))
    np.testing.assert_allclose(  # nested lists are arrays
        model.decode(TGT, np.asarray(memory).tolist(), src_valid=SRC_VALID.tolist()),
        model.decode(TGT, memory, src_valid=SRC_VALID),
        rtol=1e-5,
        atol=1e-5,
    )
    assert model(SRC, np.zeros((2, 0), np.int32)).shape == (2, 0, 50)
    logits = model(np.zeros((2, 0), np.int32), TGT)  # no source token: cross-attention adds zeros
    assert logits.shape == (2, 9, 50) and np.isfinite(np.asarray(logits)).all()
