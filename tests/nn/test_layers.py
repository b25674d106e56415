"""jaxformer.nn layers: float64 NumPy references, logical axis names, no-mesh construction, eval_shape, jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import nn


def randomize(module, seed=0):
    """Replaces every parameter by N(0, 1) values so that ones/zeros initialisations cannot hide a bug."""
    rng = np.random.default_rng(seed)
    for _, param in nnx.iter_graph(module):
        if isinstance(param, nnx.Param):
            param[...] = jnp.asarray(rng.normal(size=param[...].shape), param[...].dtype)
    return module


def np_(x):
    return np.asarray(x, np.float64)


X = np.random.default_rng(1).normal(size=(2, 5, 8)).astype(np.float32)


def test_layer_norm_and_rms_norm_match_reference():
    ln = randomize(nn.LayerNorm(8, rngs=nnx.Rngs(0)))
    x = np_(X)
    want = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * np_(ln.scale[...])
    np.testing.assert_allclose(ln(X), want + np_(ln.bias[...]), rtol=1e-5, atol=1e-5)
    rms = randomize(nn.RMSNorm(8, rngs=nnx.Rngs(0)), seed=1)
    want = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * np_(rms.scale[...])
    np.testing.assert_allclose(rms(X), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"D=8.*\(2, 5, 7\)"):
        ln(X[..., :7])


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


@pytest.mark.parametrize("activation", ["relu", "gelu", "swiglu"])
def test_feedforward_matches_reference(activation):
    ff = randomize(nn.FeedForward(8, 16, activation=activation, rngs=nnx.Rngs(0)))
    x = np_(X)
    if activation == "swiglu":
        gate, up = x @ np_(ff.w_gate[...]), x @ np_(ff.w_up[...])
        hidden = gate / (1 + np.exp(-gate)) * up
        want = hidden @ np_(ff.w_out[...])
    else:
        pre = x @ np_(ff.w_in[...]) + np_(ff.b_in[...])
        hidden = np.maximum(pre, 0) if activation == "relu" else gelu_tanh(pre)
        want = hidden @ np_(ff.w_out[...]) + np_(ff.b_out[...])
    np.testing.assert_allclose(ff(X), want, rtol=1e-4, atol=1e-4)


def test_feedforward_dropout_only_in_training_and_unknown_activation():
    ff = nn.FeedForward(8, 64, dropout_rate=0.5, rngs=nnx.Rngs(0))
    train_a, train_b = ff(X), ff(X)
    assert not np.allclose(train_a, train_b)  # a fresh dropout mask per call
    ff.eval()
    np.testing.assert_array_equal(ff(X), ff(X))
    with pytest.raises(ValueError, match="Unknown activation 'swish'"):
        nn.FeedForward(8, 16, activation="swish", rngs=nnx.Rngs(0))


def test_embed_lookup_and_tied_logits():
    emb = nn.Embed(11, 8, rngs=nnx.Rngs(0))
    table = np_(emb.embedding[...])
    assert abs(table.std() - 0.02) < 0.005
    ids = np.array([[0, 3, 10], [5, 5, 1]])
    np.testing.assert_array_equal(emb(ids), table[ids].astype(np.float32))
    np.testing.assert_allclose(emb.attend(X), np_(X) @ table.T, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="integer token ids"):
        emb(ids.astype(np.float32))


def test_learned_positions_refuse_more_positions_than_max_len():
    pos = nn.LearnedPositions(4, 8, rngs=nnx.Rngs(0))
    np.testing.assert_array_equal(pos(jnp.arange(3)), pos.embedding[...][:3])
    with pytest.raises(ValueError, match="exceed max_len=4"):
        pos(jnp.arange(5))


def test_batch_norm_uses_valid_tokens_and_running_averages():
    bn = nn.BatchNorm(8, momentum=0.9, rngs=nnx.Rngs(0))
    valid = np.ones((2, 5), bool)
    valid[1, 3:] = False
    x_pad = X.copy()
    x_pad[~valid] = 1e3  # garbage at padded positions must not enter the statistics
    y = bn(x_pad, valid)
    real = np_(X)[valid]
    np.testing.assert_allclose(np_(y)[valid], (real - real.mean(0)) / np.sqrt(real.var(0) + 1e-5), atol=1e-4)
    np.testing.assert_allclose(bn.mean[...], 0.1 * real.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * real.var(0), rtol=1e-5)
    bn.eval()
    mean, var = np_(bn.mean[...]), np_(bn.var[...])
    np.testing.assert_allclose(bn(X), (np_(X) - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(bn.mean[...], mean)  # evaluation does not update the statistics


def all_layers(rngs):
    return {
        "layer_norm": nn.LayerNorm(8, rngs=rngs),
        "rms_norm": nn.RMSNorm(8, rngs=rngs),
        "batch_norm": nn.BatchNorm(8, rngs=rngs),
        "ffn": nn.FeedForward(8, 16, rngs=rngs),
        "swiglu": nn.FeedForward(8, 16, activation="swiglu", rngs=rngs),
        "embed": nn.Embed(11, 8, rngs=rngs),
        "positions": nn.LearnedPositions(4, 8, rngs=rngs),
    }


EXPECTED_AXES = {
    ("layer_norm", "scale"): ("embed",),
    ("layer_norm", "bias"): ("embed",),
    ("rms_norm", "scale"): ("embed",),
    ("batch_norm", "scale"): ("embed",),
    ("batch_norm", "bias"): ("embed",),
    ("ffn", "w_in"): ("embed", "mlp"),
    ("ffn", "b_in"): ("mlp",),
    ("ffn", "w_out"): ("mlp", "embed"),
    ("ffn", "b_out"): ("embed",),
    ("swiglu", "w_gate"): ("embed", "mlp"),
    ("swiglu", "w_up"): ("embed", "mlp"),
    ("swiglu", "w_out"): ("mlp", "embed"),
    ("embed", "embedding"): ("vocab", "embed"),
    ("positions", "embedding"): (None, "embed"),
}


def test_every_parameter_has_its_logical_axes_and_no_mesh_is_needed():
    layers = all_layers(nnx.Rngs(0))  # no mesh in scope: must just work
    found = {}
    for layer_name, layer in layers.items():
        for path, param in nnx.iter_graph(layer):
            if isinstance(param, nnx.Param):
                found[(layer_name, path[-1])] = nn.logical_axes(param)
    assert found == EXPECTED_AXES


def test_eval_shape_allocates_nothing():
    abstract = nnx.eval_shape(lambda: all_layers(nnx.Rngs(0)))
    ffn = abstract["ffn"]
    value = ffn.w_in.get_value()
    assert isinstance(value, jax.ShapeDtypeStruct) and value.shape == (8, 16)
    assert nn.logical_axes(ffn.w_in) == ("embed", "mlp")


def test_split_once_and_jit_a_pure_function():
    ffn = randomize(nn.FeedForward(8, 16, activation="swiglu", rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(ffn)

    @jax.jit
    def apply(state, x):
        return nnx.merge(graphdef, state)(x)

    np.testing.assert_allclose(apply(state, X), ffn(X), rtol=1e-6, atol=1e-6)


def test_logical_param_rejects_bad_axes():
    with pytest.raises(ValueError, match="must name each of the 2 dims"):
        nn.logical_param(nnx.Rngs(0), nnx.initializers.zeros, (2, 3), ("embed",), jnp.float32)
    with pytest.raises(ValueError, match="Unknown logical axis names \\['hidden'\\]"):
        nn.logical_param(nnx.Rngs(0), nnx.initializers.zeros, (2, 3), ("embed", "hidden"), jnp.float32)


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda r: nn.FeedForward(0, 8, rngs=r), ValueError, r"`d_model` must be a positive int; got 0"),
        (lambda r: nn.FeedForward(8, -1, rngs=r), ValueError, r"`d_ff` must be a positive int; got -1"),
        (lambda r: nn.FeedForward(8, 8, dropout_rate=1.5, rngs=r), ValueError, r"`dropout_rate` must be a finite"),
        (lambda r: nn.LayerNorm(0, rngs=r), ValueError, r"`dim` must be a positive int; got 0"),
        (lambda r: nn.LayerNorm(8, epsilon=0.0, rngs=r), ValueError, r"`epsilon` must be a finite number > 0"),
        (lambda r: nn.RMSNorm(-1, rngs=r), ValueError, r"`dim` must be a positive int; got -1"),
        (lambda r: nn.RMSNorm(8, epsilon=-1e-6, rngs=r), ValueError, r"`epsilon` must be a finite number > 0"),
        (
            lambda r: nn.BatchNorm(8, momentum=1.5, rngs=r),
            ValueError,
            r"`momentum` must be a finite number in \[0, 1\]",
        ),
        (lambda r: nn.BatchNorm(8, epsilon=0.0, rngs=r), ValueError, r"`epsilon` must be a finite number > 0"),
        (lambda r: nn.Embed(0, 8, rngs=r), ValueError, r"`vocab_size` must be a positive int; got 0"),
        (lambda r: nn.Embed(4, 0, rngs=r), ValueError, r"`dim` must be a positive int; got 0"),
        (lambda r: nn.Embed(4, 8, init_std=-1.0, rngs=r), ValueError, r"`init_std` must be a finite number >= 0"),
        (lambda r: nn.Embed(4, 8, dtype=jnp.int32, rngs=r), TypeError, r"`dtype` must be a floating dtype"),
        (lambda r: nn.LearnedPositions(0, 8, rngs=r), ValueError, r"`max_len` must be a positive int; got 0"),
    ],
)
def test_constructors_refuse_bad_values(build, error, match):
    with pytest.raises(error, match=match):
        build(nnx.Rngs(0))


def test_calls_check_dtypes_ranges_and_accept_lists():
    rngs = nnx.Rngs(0)
    x = np.ones((2, 3, 8), np.float32)
    for layer in (nn.FeedForward(8, 16, rngs=rngs), nn.LayerNorm(8, rngs=rngs), nn.BatchNorm(8, rngs=rngs)):
        np.testing.assert_allclose(layer(x.tolist()), layer(x), rtol=1e-6)
        with pytest.raises(TypeError, match=r"`x` must have a floating dtype; got int32"):
            layer(x.astype(np.int32))
    with pytest.raises(TypeError, match=r"`valid` must be a boolean array \(True = a real token"):
        nn.BatchNorm(8, rngs=rngs)(x, np.ones((2, 3), np.int32))
    emb = nn.Embed(4, 8, rngs=rngs)
    np.testing.assert_array_equal(emb([[0, 3]]), emb(np.array([[0, 3]])))
    for bad in (4, -1):
        with pytest.raises(ValueError, match=rf"`ids` must lie in \[0, 4\) .*got {bad} at position \(0, 1\)"):
            emb(np.array([[0, bad]]))
    assert np.isnan(np.asarray(jax.jit(emb)(np.array([[0, 4]])))[0, 1]).all()  # traced: NaN, never clamped
    with pytest.raises(TypeError, match=r"`x` must have a floating dtype"):
        emb.attend(np.ones((1, 8), np.int32))
    pos = nn.LearnedPositions(4, 8, rngs=rngs)
    with pytest.raises(TypeError, match=r"`positions` must have an integer dtype"):
        pos(np.arange(3, dtype=np.float32))
    for bad in (7, -1):
        with pytest.raises(ValueError, match=rf"`positions` must lie in \[0, 4\) .*got {bad}"):
            pos(np.array([0, bad]))
