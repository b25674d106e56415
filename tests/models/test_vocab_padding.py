"""ModelConfig.vocab_multiple: tables padded to a multiple, logits still V wide and equal to an unpadded model's;
the padding rows get no gradient and no token may use them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer.models import BERT, GPT, ModelConfig, Transformer

V = 50
TOKENS = np.random.default_rng(0).integers(0, V, size=(2, 9)).astype(np.int32)


def tiny(**overrides):
    base = dict(vocab_size=V, num_layers=2, d_model=32, num_heads=4, d_ff=64, max_len=16)
    return ModelConfig(**{**base, **overrides})


def padded_copy(model, multiple: int):
    """`model` rebuilt with `vocab_multiple` and given `model`'s parameters in the first V rows / columns."""
    cls = type(model)
    padded = cls(model.config.replace(vocab_multiple=multiple), rngs=nnx.Rngs(1))
    source = nnx.to_flat_state(nnx.state(model))
    target = nnx.state(padded)
    flat = dict(nnx.to_flat_state(target))
    for path, var in source:
        value = var[...]
        old = flat[path][...]
        if old.shape != value.shape:  # the padded axis: copy the V real entries, keep the padding's own init
            axis = next(i for i, (a, b) in enumerate(zip(old.shape, value.shape, strict=True)) if a != b)
            value = jax.lax.dynamic_update_slice_in_dim(old, value, 0, axis)
        flat[path][...] = value
    nnx.update(padded, target)
    return padded


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_padded_gpt_has_the_logits_of_the_unpadded_one(tied):
    model = GPT(tiny(tie_embeddings=tied), rngs=nnx.Rngs(0))
    padded = padded_copy(model, 64)
    assert padded.config.padded_vocab_size == 64
    assert padded.embed.tokens.embedding.shape == (64, 32)
    logits = padded(TOKENS)
    assert logits.shape == (2, 9, V)
    np.testing.assert_allclose(logits, model(TOKENS), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_the_padding_rows_get_no_gradient(tied):
    model = GPT(tiny(tie_embeddings=tied, vocab_multiple=64), rngs=nnx.Rngs(0))
    grads = nnx.grad(lambda m: jnp.sum(jax.nn.log_softmax(m(TOKENS))[..., 3]))(model)
    table = grads["embed"]["tokens"]["embedding"][...]
    assert np.all(table[V:] == 0) and np.any(table[:V] != 0)
    if not tied:
        kernel = grads["head"]["kernel"][...]
        assert np.all(kernel[:, V:] == 0) and np.any(kernel[:, :V] != 0)


def test_bert_and_the_encoder_decoder_keep_v_logits():
    bert = BERT(tiny(vocab_multiple=128, type_vocab_size=2), rngs=nnx.Rngs(0))
    assert bert.mlm_logits(bert(TOKENS).hidden).shape == (2, 9, V)
    untied = BERT(tiny(vocab_multiple=128, tie_embeddings=False), rngs=nnx.Rngs(0))
    assert untied.mlm_logits(untied(TOKENS).hidden).shape == (2, 9, V)
    seq2seq = Transformer(tiny(vocab_multiple=128), rngs=nnx.Rngs(0))
    assert seq2seq(TOKENS, TOKENS).shape == (2, 9, V)


def test_multiple_one_changes_nothing_and_bad_values_are_named():
    assert tiny().padded_vocab_size == V and tiny(vocab_multiple=10).padded_vocab_size == V
    assert tiny(vocab_multiple=64).padded_vocab_size == 64
    assert ModelConfig.variant("gpt2-small", vocab_multiple=128).padded_vocab_size == 50304  # nanoGPT's size
    with pytest.raises(ValueError, match="vocab_multiple` must be a positive int; got 0"):
        tiny(vocab_multiple=0)
    model = GPT(tiny(vocab_multiple=64), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=50\)"):
        model(np.full((1, 3), 60, np.int32))  # a padding row is not a token
