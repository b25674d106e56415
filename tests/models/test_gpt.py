"""GPT: cached decoding equals the teacher-forced pass, causality through gradients, every option, scan, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer.models import GPT, ModelConfig
from tests.models.helpers import scanned_copy

TOKENS = np.random.default_rng(0).integers(0, 64, size=(2, 11)).astype(np.int32)


def tiny(**overrides):
    base = dict(vocab_size=64, num_layers=2, d_model=32, num_heads=4, d_ff=64, max_len=16, dropout_rate=0.0)
    return ModelConfig(**{**base, **overrides})


CACHED_CASES = {
    "learned": dict(positional="learned"),
    "sinusoidal": dict(positional="sinusoidal"),
    "rope-gqa": dict(positional="rope", num_kv_heads=2),
    "alibi-mqa": dict(positional="alibi", num_kv_heads=1),
    "rope-window": dict(positional="rope", sliding_window=3),
    "post-norm-rmsnorm-swiglu": dict(norm_position="post", norm="rmsnorm", activation="swiglu"),
    "scan": dict(positional="rope", scan_layers=True),
}


# RoPE with a sliding window and the scanned stack in the default run (learned and ALiBi positions decode with a
# cache in tests/decoding/test_generate.py too); the rest with `make test-all`.
SLOW_CACHED = ("learned", "sinusoidal", "rope-gqa", "alibi-mqa", "post-norm-rmsnorm-swiglu")


@pytest.mark.parametrize(
    "overrides",
    [pytest.param(o, marks=pytest.mark.slow) if k in SLOW_CACHED else o for k, o in CACHED_CASES.items()],
    ids=CACHED_CASES.keys(),
)
def test_prefill_then_cached_decoding_equals_the_teacher_forced_logits(overrides):
    model = GPT(tiny(**overrides), rngs=nnx.Rngs(0))
    full = model(TOKENS)
    step = nnx.jit(lambda m, x: m(x, decode=True))  # compiled per chunk length; the cache is carried by nnx.jit
    for prefill in (1, 4, 7):
        model.init_cache(2, 16)
        pieces = [step(model, TOKENS[:, :prefill]), step(model, TOKENS[:, prefill : prefill + 1])]
        pieces.append(step(model, TOKENS[:, prefill + 1 :]))
        np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5, err_msg=f"{prefill=}")


def test_causality_through_gradients():
    """d logits[t] / d (position embedding of s) is zero exactly when s > t."""
    model = GPT(tiny(tie_embeddings=False), rngs=nnx.Rngs(0))
    T = 8
    # One compiled gradient for every t: a one-hot weight picks the position whose logits are differentiated.
    grad_at = nnx.jit(nnx.grad(lambda m, onehot: jnp.sum(m(TOKENS[:1, :T])[0] * onehot[:, None])))
    for t in (0, 3, 7):
        grads = grad_at(model, jnp.eye(T)[t])
        grad = grads["embed"]["positions"]["embedding"][...]
        norms = np.linalg.norm(np.asarray(grad[:T]), axis=-1)
        assert np.all(norms[t + 1 :] == 0.0), f"position {t} sees the future: {norms}"
        assert np.all(norms[: t + 1] > 0.0), f"position {t} ignores its past: {norms}"


# The default run takes every value of every option at least once, several per model (each positional scheme, each
# norm pre and post, each activation); `make test-all` adds each option on its own.
COMBINED_CASES = [
    dict(positional="learned", norm_position="pre", norm="rmsnorm", activation="relu"),
    dict(positional="sinusoidal", norm_position="post", norm="batchnorm", activation="gelu"),
    dict(positional="rope", norm_position="pre", norm="batchnorm", activation="gelu_exact"),
    dict(positional="alibi", norm_position="post", norm="rmsnorm", activation="silu"),
    dict(positional="none", norm_position="post", norm="layernorm", activation="swiglu"),
    dict(qk_norm=True, num_kv_heads=2, use_bias=False, tie_embeddings=False),
    dict(dropout_rate=0.1, attention_dropout_rate=0.1),
]
SINGLE_CASES = [
    *[
        dict(positional=p, norm_position=q)
        for p in ("learned", "sinusoidal", "rope", "alibi", "none")
        for q in ("pre", "post")
    ],
    *[dict(norm=n, norm_position=q) for n in ("rmsnorm", "batchnorm") for q in ("pre", "post")],
    *[dict(activation=a) for a in ("relu", "gelu", "gelu_exact", "silu", "swiglu")],
]
OPTION_CASES = COMBINED_CASES + [pytest.param(o, marks=pytest.mark.slow) for o in SINGLE_CASES]


def option_id(case) -> str:
    overrides = case if isinstance(case, dict) else case.values[0]
    return "-".join(f"{k}={v}" for k, v in overrides.items())


@pytest.mark.parametrize("overrides", OPTION_CASES, ids=[option_id(c) for c in OPTION_CASES])
def test_every_option_gives_finite_outputs_and_gradients_and_jit_agrees(overrides):
    model = GPT(tiny(**overrides), rngs=nnx.Rngs(0))
    labels = np.roll(TOKENS, -1, axis=1)

    def loss(model):
        logits = model(TOKENS)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[..., None], axis=-1))

    value, grads = nnx.jit(nnx.value_and_grad(loss))(model)
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    model.eval()  # deterministic, so that jit and eager see the same computation
    eager = model(TOKENS)
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(model, TOKENS), eager, rtol=2e-5, atol=2e-5)


def test_scan_layers_equals_the_python_loop():
    cfg = tiny(positional="rope", num_kv_heads=2)
    looped = GPT(cfg, rngs=nnx.Rngs(0))
    scanned = scanned_copy(looped)
    assert scanned.blocks.layers.ffn.w_in.shape == (2, 32, 64)
    np.testing.assert_allclose(scanned(TOKENS), looped(TOKENS), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attention_impl", ["xla", "blockwise"])  # blockwise takes the segment ids structurally
def test_packed_segments_do_not_see_each_other(attention_impl):
    model = GPT(tiny(positional="rope", attention_impl=attention_impl, scan_layers=True), rngs=nnx.Rngs(0))
    segments = np.array([[0] * 5 + [1] * 6] * 2, np.int32)
    positions = np.array([list(range(5)) + list(range(6))] * 2, np.int32)
    packed = model(TOKENS, segment_ids=segments, positions=positions)
    np.testing.assert_allclose(packed[:, :5], model(TOKENS[:, :5]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(packed[:, 5:], model(TOKENS[:, 5:]), rtol=1e-5, atol=1e-5)


def test_bad_configs_and_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="d_model=30 is not divisible by num_heads=4"):
        tiny(d_model=30)
    with pytest.raises(ValueError, match="num_heads=4 must be a multiple of num_kv_heads=3"):
        tiny(num_kv_heads=3)
    with pytest.raises(ValueError, match="positional='relative'; choose one of"):
        tiny(positional="relative")
    for impl in ("blockwise", "pallas"):
        with pytest.raises(ValueError, match=f"attention_impl='{impl}' takes no bias .* use positional='rope'"):
            tiny(positional="alibi", attention_impl=impl)
    with pytest.raises(ValueError, match="Unknown ModelConfig variant 'gpt5'"):
        ModelConfig.variant("gpt5")
    with pytest.raises(ValueError, match=r"Unknown ModelConfig fields \['d_modle'\]"):
        ModelConfig.variant("gpt2-tiny", d_modle=8)
    model = GPT(tiny(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="20 tokens but the model's position table holds max_len=16"):
        model(np.zeros((1, 20), np.int32))
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size=64\); got min 0, max 64"):
        model(np.array([[0, 64]], np.int32))
    with pytest.raises(TypeError, match="must be integer token ids"):
        model(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="call init_cache"):
        model(TOKENS[:, :2], decode=True)
    model.init_cache(2, 4)
    with pytest.raises(ValueError, match="5 new tokens do not fit a KV cache of max_len=4"):
        model(TOKENS[:, :5], decode=True)


def test_positions_valid_and_cache_overflow_errors():
    model = GPT(tiny(), rngs=nnx.Rngs(0))
    tokens = TOKENS[:, :3]
    for bad in (16, -1):
        with pytest.raises(ValueError, match=rf"`positions` must lie in \[0, 16\) .*got {bad}"):
            model(tokens, positions=np.array([[0, 1, bad], [0, 1, 2]]))
    with pytest.raises(TypeError, match=r"`positions` must have an integer dtype"):
        model(tokens, positions=np.arange(3, dtype=np.float32))
    with pytest.raises(ValueError, match=r"`positions` must be \[T\] = \(3,\) or \[B, T\] = \(2, 3\)"):
        model(tokens, positions=np.arange(4))
    with pytest.raises(TypeError, match=r"`valid` must be bool \[B, T\] = \(2, 3\).*int32"):
        model(tokens, valid=np.ones((2, 3), np.int32))
    with pytest.raises(TypeError, match=r"`tokens` must be a numeric array; got a str"):
        model("abc")
    model.init_cache(2, 4)
    model(tokens, decode=True)
    with pytest.raises(ValueError, match=r"KV cache overflow: sequence 0 has 3 cached tokens and this call adds T=2"):
        model(tokens[:, :2], decode=True)


@pytest.mark.parametrize("positional", ["learned", "rope", "alibi"])
def test_empty_sequences_give_empty_logits(positional):
    model = GPT(tiny(positional=positional), rngs=nnx.Rngs(0))
    assert model(np.zeros((2, 0), np.int32)).shape == (2, 0, 64)
    assert model(np.zeros((0, 3), np.int32)).shape == (0, 3, 64)
