"""ViT: patchify and patch embedding against NumPy and a strided conv, forward reference, norms, jit, scan, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import ops
from jaxformer.models.config import ModelConfig
from jaxformer.models.vit import ViT, patchify
from tests.models.helpers import param_count, scanned_copy
from tests.models.test_bert import NORM_CONFIGS
from tests.nn.test_layers import np_, randomize

IMAGES = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
LABELS = np.array([3, 7])


def tiny(**overrides):
    return ModelConfig.variant("vit-tiny", **{"dropout_rate": 0.0, **overrides})


def build(seed=0, **overrides):
    return randomize(ViT(tiny(**overrides), rngs=nnx.Rngs(seed)), seed)


def np_patches(images, P):
    """Patch (i, j) in row-major order, each patch flattened as (row, column, channel): a loop, not a reshape."""
    B, H, W, C = images.shape
    rows, cols = H // P, W // P
    out = np.empty((B, rows * cols, P * P * C))
    for i in range(rows):
        for j in range(cols):
            out[:, i * cols + j] = images[:, i * P : (i + 1) * P, j * P : (j + 1) * P, :].reshape(B, -1)
    return out


def test_vit_b16_parameter_count():
    model = nnx.eval_shape(lambda: ViT(ModelConfig.variant("vit-b16"), rngs=nnx.Rngs(0)))
    parts = {
        "patch_embed": 16 * 16 * 3 * 768 + 768,
        "cls_token": 768,
        "positions": 197 * 768,
        "blocks": 85_054_464,
        "final_norm": 2 * 768,
        "head_kernel": 768 * 1000,
        "head_bias": 1000,
    }
    for name, want in parts.items():
        assert param_count(model, lambda path, name=name: path[0] == name) == want, name
    total = param_count(model)
    assert total == sum(parts.values()) == 86_567_656  # timm vit_base_patch16_224
    assert abs(total - 86.6e6) / 86.6e6 < 0.01 and abs(total - 86e6) / 86e6 < 0.01  # the published 86M


def test_patchify_and_patch_embedding_match_references():
    np.testing.assert_array_equal(patchify(IMAGES, 8), np_patches(np_(IMAGES), 8).astype(np.float32))
    model = build()
    embed = model.patch_embed
    want = np_patches(np_(IMAGES), 8) @ np_(embed.kernel[...]) + np_(embed.bias[...])
    got = embed(IMAGES)
    assert got.shape == (2, 16, 64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    # The same map as the paper's stride-P convolution with the HWIO kernel W.reshape(P, P, C, D).
    conv = jax.lax.conv_general_dilated(
        IMAGES,
        embed.kernel[...].reshape(8, 8, 3, 64),
        window_strides=(8, 8),
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision="highest",
    )
    np.testing.assert_allclose(got, conv.reshape(2, 16, 64) + embed.bias[...], rtol=1e-4, atol=1e-3)


def test_forward_matches_reference_composition():
    model = build()
    patches = np_patches(np_(IMAGES), 8) @ np_(model.patch_embed.kernel[...]) + np_(model.patch_embed.bias[...])
    cls = np.broadcast_to(np_(model.cls_token[...]), (2, 1, 64))
    x0 = np.concatenate([cls, patches], axis=1) + np_(model.positions.embedding[...])
    states = model.final_norm(model.blocks(jnp.asarray(x0, jnp.float32)))
    np.testing.assert_allclose(model.encode(IMAGES), states, rtol=1e-4, atol=1e-3)
    logits = model(IMAGES)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    want = np_(states)[:, 0] @ np_(model.head_kernel[...]) + np_(model.head_bias[...])
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-2)


def test_without_classes_returns_the_class_token_representation():
    model = build(num_classes=0)
    assert model.head_kernel is None and model.head_bias is None
    features = model(IMAGES)
    assert features.shape == (2, 64) and features.dtype == jnp.float32
    np.testing.assert_array_equal(features, model.encode(IMAGES)[:, 0])


def test_every_norm_forward_and_grad_are_finite():
    """Each norm, pre and post: the loss is about log(num_classes) at initialisation and every parameter gets a
    finite, nonzero gradient. One jit over the six (one-layer) models, as in test_bert."""
    models = [ViT(tiny(num_layers=1, norm=n, norm_position=p), rngs=nnx.Rngs(0)) for n, p in NORM_CONFIGS]
    for model in models:  # the head starts at zero, and no gradient would reach the backbone: small weights
        model.head_kernel[...] = jax.random.normal(jax.random.key(1), (64, 10)) * 0.02

    def loss_fn(model):
        return ops.cross_entropy(model(IMAGES), LABELS)[0]

    results = nnx.jit(lambda models: [nnx.value_and_grad(loss_fn)(m) for m in models])(models)
    for config, model, (loss, grads) in zip(NORM_CONFIGS, models, results, strict=True):
        assert (model.final_norm is None) == (config[1] == "post"), config
        assert np.isfinite(loss) and 1.0 < loss < 4.0, config  # about log(10) = 2.3 at initialisation
        for path, g in nnx.to_flat_state(grads):
            g = np.asarray(g[...])
            assert np.isfinite(g).all() and np.abs(g).sum() > 0, (config, path)


@pytest.mark.parametrize("positional", ["sinusoidal", "rope", "none"])
def test_other_positional_encodings(positional):
    model = build(positional=positional)
    assert model.positions is None
    logits = model(IMAGES)
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


def test_jit_matches_eager():
    model = build()
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda state, images: nnx.merge(graphdef, state)(images))
    np.testing.assert_allclose(forward(state, IMAGES), model(IMAGES), rtol=1e-4, atol=1e-3)


def test_scanned_layers_match_the_loop():
    looped = build()
    got = scanned_copy(looped).encode(IMAGES)
    assert got.shape == (2, 17, 64) and np.isfinite(got).all()
    np.testing.assert_allclose(got, looped.encode(IMAGES), rtol=1e-4, atol=1e-3)


def test_dropout_only_in_training():
    model = build(dropout_rate=0.1)
    assert not np.allclose(model(IMAGES), model(IMAGES))
    model.eval()
    np.testing.assert_array_equal(model(IMAGES), model(IMAGES))


def test_bad_images_and_configs_raise_clear_errors():
    model = ViT(tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"\[B, H=32, W=32, C=3\] \(NHWC\); got shape \(2, 24, 32, 3\)"):
        model(IMAGES[:, :24])
    with pytest.raises(ValueError, match=r"C=3\] \(NHWC\); got shape \(2, 32, 32, 1\)"):
        model(IMAGES[..., :1])
    with pytest.raises(ValueError, match=r"got shape \(32, 32, 3\)"):
        model(IMAGES[0])
    with pytest.raises(TypeError, match=r"floating point .* got dtype uint8"):
        model(IMAGES.astype(np.uint8))
    with pytest.raises(ValueError, match=r"max_len >= num_patches \+ 1 = 17 .* got max_len=16\. Set max_len=17"):
        ViT(tiny(max_len=16), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"max_len >= num_patches \+ 1 = 65"):
        ViT(tiny(patch_size=4), rngs=nnx.Rngs(0))


def test_lists_are_images_and_the_pooler_checks_its_input():
    model = ViT(tiny(), rngs=nnx.Rngs(0))
    np.testing.assert_allclose(model(IMAGES[:1].tolist()), model(IMAGES[:1]), rtol=1e-5, atol=1e-6)
    headless = ViT(tiny(num_classes=0), rngs=nnx.Rngs(0))
    hidden = headless.encode(IMAGES[:1])
    with pytest.raises(ValueError, match=r"`hidden` must be final states \[B, T, D=64\] with T >= 1"):
        headless.pool(hidden[..., :8])
    with pytest.raises(TypeError, match=r"`hidden` must have a floating dtype"):
        headless.pool(np.ones(hidden.shape, np.int32))
