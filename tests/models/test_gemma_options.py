"""Gemma's options on a GPT: logit soft-caps, attention_scale, (1 + w) RMSNorm, sandwich norms, GeGLU, embed_scale,
per-layer local / global attention (scanned over the repeating group), each against a float64 NumPy reference."""

import contextlib
import functools
import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from jaxformer.decoding import generate
from jaxformer.models import BERT, GPT, ModelConfig, Transformer, ViT
from jaxformer.models.embedding import InputEmbedding
from jaxformer.nn.blocks import DecoderBlock
from jaxformer.nn.feedforward import FeedForward
from jaxformer.nn.norms import RMSNorm
from tests.models.helpers import grouped_scanned_copy, param_count

TOKENS = np.random.default_rng(0).integers(0, 64, size=(2, 11)).astype(np.int32)
LONG_TOKENS = np.random.default_rng(1).integers(0, 64, size=(1, 128)).astype(np.int32)


def tiny(**overrides):
    base = dict(
        vocab_size=64,
        num_layers=2,
        d_model=32,
        num_heads=4,
        d_ff=64,
        max_len=16,
        dropout_rate=0.0,
        positional="rope",
        norm="rmsnorm",
        use_bias=False,
    )
    return ModelConfig(**{**base, **overrides})


# Gemma 2: alternating local / global layers, both soft-caps, sandwich norms, (1 + w) RMSNorm, GeGLU, scaled
# embeddings, a query scale other than 1 / sqrt(H). Gemma 3: qk-norm, no caps, 2 local + 1 global, MQA.
GEMMA_COMMON = dict(norm_plus_one=True, sandwich_norm=True, activation="geglu", embed_scale=True)
GEMMA2 = dict(
    **GEMMA_COMMON,
    num_kv_heads=2,
    attention_scale=0.5,
    attention_logit_softcap=1.0,
    final_logit_softcap=2.0,
    layer_types=("local", "global"),
    sliding_window=3,
    local_rope_base=100.0,
)
GEMMA3 = dict(
    **GEMMA_COMMON,
    num_layers=3,
    num_kv_heads=1,
    qk_norm=True,
    attention_scale=0.25,
    layer_types=("local", "local", "global"),
    sliding_window=4,
    local_rope_base=10.0,
)
# 7 layers of period 3: two scanned groups of (local, local, global) and a tail of one local layer.
PATTERN7 = ("local", "local", "global") * 2 + ("local",)


# One compilation per model structure and input shape: eager calls would compile each operation on its own.
forward = nnx.jit(lambda model, tokens: model(tokens))


# -- building models with given parameters (no initialiser compiled twice) -------------------------------------------


def build(make, seed=0, scale_mean=0.0):
    """`make(rngs)` (a module) built with `nnx.eval_shape` and given random parameters drawn in NumPy, which
    compiles no initialiser: weights ~ N(0, 1 / fan_in), token embeddings ~ N(0, 0.5^2) (logits of a few units,
    so that a final cap binds), norm scales w ~ N(scale_mean, 0.3^2) (so that 1 + w and w are far from 1)."""
    module = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    rng = np.random.default_rng(seed)

    def value(path, x):
        name, shape = path[-1].key, x.shape
        if name == "key":  # dropout streams (the rates are 0)
            return jax.random.wrap_key_data(np.zeros((*shape, 2), np.uint32))
        if name == "count" or name.startswith("b_"):
            return np.zeros(shape, x.dtype)
        if name == "scale":
            std, mean = 0.3, scale_mean
        elif name == "layer_scale":  # Gemma 4's scalar per layer: away from 1
            std, mean = 0.3, 1.0
        elif name == "embedding":
            std, mean = 0.5, 0.0
        else:
            # w_q / w_k / w_v [D, N, H] and w_o [N, H, D] (attention); [fan_in, fan_out] otherwise
            fan_in = (
                shape[-3] if name in ("w_q", "w_k", "w_v") else math.prod(shape[-3:-1]) if name == "w_o" else shape[-2]
            )
            std, mean = 1.0 / math.sqrt(fan_in), 0.0
        return jnp.asarray(rng.normal(mean, std, shape), x.dtype)

    state = nnx.state(module)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(value, nnx.to_pure_dict(state)))
    nnx.update(module, state)
    return module


def build_gpt(config, seed=0):
    return build(lambda rngs: GPT(config, rngs=rngs), seed, scale_mean=0.0 if config.norm_plus_one else 1.0)


def rebuild(model, **overrides):
    """A GPT of `model.config.replace(**overrides)` holding `model`'s state but no KV cache (the overrides keep
    the structure): a copy that tests may change without touching a shared model."""
    config = model.config.replace(**overrides)
    copy = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
    state = nnx.state(copy)
    nnx.replace_by_pure_dict(state, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Cache))))
    nnx.update(copy, state)
    return copy


# -- float64 NumPy reference --------------------------------------------------------------------------------------


def np_rms_norm(x, w, epsilon, plus_one):
    y = x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + epsilon)
    return y * ((1.0 + w) if plus_one else w)


def np_gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def np_rope(x, positions, base):
    """Interleaved RoPE (pairs (2i, 2i + 1)) of x [B, T, N, H] at positions [T]."""
    H = x.shape[-1]
    angles = positions[:, None] * base ** (-np.arange(0, H, 2) / H)  # [T, H / 2]
    cos, sin = np.cos(angles)[None, :, None], np.sin(angles)[None, :, None]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def np_attention(h, p, cfg, window, base):
    """Causal self-attention with GQA, qk-norm, RoPE, the logit scale, the soft-cap and a sliding window."""
    T = h.shape[1]
    q, k, v = (np.einsum("BTD,DNH->BTNH", h, p[name]) for name in ("w_q", "w_k", "w_v"))
    if cfg.qk_norm:
        q = np_rms_norm(q, p["q_norm"]["scale"], cfg.qk_norm_epsilon, cfg.norm_plus_one)
        k = np_rms_norm(k, p["k_norm"]["scale"], cfg.qk_norm_epsilon, cfg.norm_plus_one)
    positions = np.arange(T, dtype=np.float64)
    q, k = np_rope(q, positions, base), np_rope(k, positions, base)
    group = cfg.num_heads // cfg.num_kv_heads
    k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # query head n reads kv head n // group
    scale = 1.0 / np.sqrt(cfg.head_dim) if cfg.attention_scale is None else cfg.attention_scale
    logits = scale * np.einsum("BTNH,BSNH->BNTS", q, k)
    if cfg.attention_logit_softcap is not None:
        cap = cfg.attention_logit_softcap
        logits = cap * np.tanh(logits / cap)
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    allowed = (s <= t) if window is None else (s <= t) & (s > t - window)
    logits = np.where(allowed, logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return np.einsum("BTNH,NHD->BTD", np.einsum("BNTS,BSNH->BTNH", weights, v), p["w_o"])


def np_geglu(h, p):
    return (np_gelu_tanh(h @ p["w_gate"]) * (h @ p["w_up"])) @ p["w_out"]


def layer_window_and_base(cfg, i):
    """What layer i should attend with, from the config's fields (not from `layer_config`)."""
    kind = None if cfg.layer_types is None else cfg.layer_types[i]
    if kind == "global":
        return None, cfg.rope_base
    if kind == "local":
        return cfg.sliding_window, cfg.local_rope_base or cfg.rope_base
    return cfg.sliding_window, cfg.rope_base


def np_gpt(model, tokens):
    """Float64 logits of a looped pre-norm RMSNorm GeGLU GPT without biases, from its parameters."""
    cfg = model.config
    assert not cfg.scan_layers and cfg.activation == "geglu" and cfg.rope_scaling is None and cfg.rope_interleaved
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    norm = lambda x, params: np_rms_norm(x, params["scale"], cfg.norm_epsilon, cfg.norm_plus_one)
    table = p["embed"]["tokens"]["embedding"]
    x = table[tokens] * (np.sqrt(cfg.d_model) if cfg.embed_scale else 1.0)
    for i in range(cfg.num_layers):
        layer = p["blocks"]["layers"][i]
        window, base = layer_window_and_base(cfg, i)
        for residual, sublayer, params in (
            ("self_residual", functools.partial(np_attention, cfg=cfg, window=window, base=base), "self_attention"),
            ("ffn_residual", np_geglu, "ffn"),
        ):
            out = sublayer(norm(x, layer[residual]["norm"]), layer[params])
            x = x + (norm(out, layer[residual]["output_norm"]) if cfg.sandwich_norm else out)
    logits = norm(x, p["final_norm"]) @ table.T
    if cfg.final_logit_softcap is not None:
        logits = cfg.final_logit_softcap * np.tanh(logits / cfg.final_logit_softcap)
    return logits


# -- shared models (built once per module) --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gemma2():
    return build_gpt(tiny(**GEMMA2), seed=0)


@pytest.fixture(scope="module")
def gemma3():
    return build_gpt(tiny(**GEMMA3), seed=1)


@pytest.fixture(scope="module")
def pattern7():
    """7 layers (local, local, global) x 2 + local, window 3, local RoPE base 100; looped."""
    config = tiny(d_model=16, num_heads=2, d_ff=32, num_layers=7, layer_types=PATTERN7, sliding_window=3)
    return build_gpt(config.replace(local_rope_base=100.0, **GEMMA_COMMON), seed=2)


# -- 1. soft-caps and the Gemma forward pass ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_gemma_forward_equals_the_float64_numpy_reference(name, request):
    model = request.getfixturevalue(name)
    got = forward(model, TOKENS)
    np.testing.assert_allclose(got, np_gpt(model, TOKENS), rtol=1e-4, atol=1e-4)


def test_final_softcap_is_exactly_cap_tanh_of_the_uncapped_logits(gemma2):
    cap = gemma2.config.final_logit_softcap
    capped = np.asarray(forward(gemma2, TOKENS))
    raw = forward(rebuild(gemma2, final_logit_softcap=None), TOKENS)
    assert np.max(np.abs(raw)) > 2 * cap, "the cap does not bind: the test would not see it"
    np.testing.assert_allclose(capped, cap * jnp.tanh(raw / cap), rtol=1e-6, atol=1e-6)
    assert np.all(np.abs(capped) <= cap)  # (float32 tanh is 1.0 past |z / cap| ~ 9)


def test_attention_softcap_binds_and_equals_the_reference_without_it(gemma2):
    uncapped = rebuild(gemma2, attention_logit_softcap=None)
    logits = forward(uncapped, TOKENS)
    np.testing.assert_allclose(logits, np_gpt(uncapped, TOKENS), rtol=1e-4, atol=1e-4)
    assert np.max(np.abs(logits - forward(gemma2, TOKENS))) > 1e-2, "the attention cap changes nothing"


@pytest.fixture(scope="module")
def long_capped():
    """gemma2's options at T = 128 (the Pallas tile): 1 local + 1 global layer, d_model 16; the model, and the
    reference logits with and without the attention cap."""
    model = build_gpt(tiny(**GEMMA2, d_model=16, num_heads=2, d_ff=32, max_len=128), seed=3)
    return model, np_gpt(model, LONG_TOKENS), np_gpt(rebuild(model, attention_logit_softcap=None), LONG_TOKENS)


@pytest.mark.parametrize("attention_impl", ["xla", "blockwise", "pallas", "auto"])
def test_every_cpu_kernel_applies_the_attention_softcap(attention_impl, long_capped):
    model, want, uncapped = long_capped
    assert np.max(np.abs(want - uncapped)) > 1e-2, "the attention cap does not bind at T = 128"
    model = rebuild(model, attention_impl=attention_impl)
    interpreted = pytest.warns(UserWarning, match="Pallas interpreter")  # pallas runs interpreted on a CPU
    with interpreted if attention_impl == "pallas" else contextlib.nullcontext():
        got = forward(model, LONG_TOKENS)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attention_impl", ["jax_nn", "cudnn"])
def test_kernels_without_a_softcap_refuse_one_at_config_construction(attention_impl):
    with pytest.raises(ValueError, match=rf"attention_impl='{attention_impl}'.*attention_logit_softcap=1.5"):
        tiny(attention_impl=attention_impl, attention_logit_softcap=1.5)
    tiny(attention_impl=attention_impl, final_logit_softcap=1.5)  # the final cap is the head's: any kernel


# -- 2. per-layer local / global attention ----------------------------------------------------------------------


@pytest.mark.parametrize("num_layers", [7, 6], ids=["tail-1", "no-tail"])
def test_scanned_pattern_equals_the_loop(num_layers, pattern7):
    looped = pattern7
    if num_layers != 7:
        looped = build_gpt(pattern7.config.replace(num_layers=6, layer_types=PATTERN7[:6]), seed=4)
    scanned = grouped_scanned_copy(looped)
    assert scanned.blocks.period == 3
    assert scanned.blocks.layers.blocks[0].ffn.w_gate.shape == (2, 16, 32)
    assert (scanned.blocks.tail is not None) == (num_layers == 7)
    kinds = [b.self_attention.sliding_window for b in scanned.blocks.layers.blocks]
    assert kinds == [3, 3, None]
    want = forward(looped, TOKENS)
    np.testing.assert_allclose(want, np_gpt(looped, TOKENS), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(forward(scanned, TOKENS), want, rtol=1e-5, atol=1e-5)


def test_cached_decoding_of_a_scanned_pattern_equals_the_full_forward(pattern7):
    """Prefill 4 tokens, then one token per step past the window (3), through the scanned groups and the tail:
    the logits of the full pass."""
    model = grouped_scanned_copy(pattern7)
    model.init_cache(2, 16)
    step = nnx.jit(lambda m, x: m(x, decode=True))  # two compilations (prefill, one token); the cache is carried
    pieces = [step(model, TOKENS[:, :4])] + [step(model, TOKENS[:, t : t + 1]) for t in range(4, TOKENS.shape[1])]
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), forward(pattern7, TOKENS), rtol=1e-5, atol=1e-5)


def test_greedy_generation_of_a_pattern_follows_the_full_forward(pattern7):
    """`generate` (prefill, then cached one-token steps in a while loop) on the looped 7-layer model."""
    prompt, n = TOKENS[:, :4], 7
    generated = np.asarray(generate(rebuild(pattern7), prompt, n, rng=None, temperature=0.0))
    assert generated.shape == (2, n)
    logits = forward(pattern7, np.concatenate([prompt, generated], axis=1))
    np.testing.assert_array_equal(np.argmax(logits[:, 3:-1], axis=-1), generated)


@pytest.fixture(scope="module")
def one_layer_local():
    """A 1-layer model whose only layer is local (window 3); `rebuild(..., layer_types=("global",))` is the same
    layer attending globally."""
    return build_gpt(tiny(num_layers=1, layer_types=("local",), sliding_window=3), seed=5)


def test_local_layers_attend_only_within_their_window(one_layer_local):
    local = one_layer_local
    global_ = rebuild(local, layer_types=("global",))
    assert local.blocks.layers[0].self_attention.sliding_window == 3
    assert global_.blocks.layers[0].self_attention.sliding_window is None
    T, W = 8, 3
    tokens = TOKENS[:1, :T]
    out_of_window, in_window = tokens.copy(), tokens.copy()
    out_of_window[0, T - 1 - W] = (tokens[0, T - 1 - W] + 1) % 64  # position p - W: outside the window of p
    in_window[0, T - W] = (tokens[0, T - W] + 1) % 64  # position p - W + 1: inside it
    last = lambda model, x: np.asarray(forward(model, x)[0, -1])
    base_local, base_global = last(local, tokens), last(global_, tokens)
    np.testing.assert_allclose(last(local, out_of_window), base_local, rtol=0, atol=1e-6)
    assert np.max(np.abs(last(local, in_window) - base_local)) > 1e-3
    assert np.max(np.abs(last(global_, out_of_window) - base_global)) > 1e-3


def test_local_rope_base_changes_only_the_local_layers():
    config = tiny(layer_types=("global", "local"), sliding_window=16, local_rope_base=10.0)
    model = build_gpt(config, seed=6)
    same_base = rebuild(model, local_rope_base=None)
    layers = model.blocks.layers
    assert [layer.self_attention.rope_base for layer in layers] == [10000.0, 10.0]
    assert [layer.self_attention.rope_base for layer in same_base.blocks.layers] == [10000.0, 10000.0]
    x = model.embed(TOKENS)
    apply = nnx.jit(lambda block, x: block(x))
    global_out, local_out = apply(layers[0], x), apply(layers[1], x)
    np.testing.assert_array_equal(global_out, apply(same_base.blocks.layers[0], x))
    assert np.max(np.abs(local_out - apply(same_base.blocks.layers[1], x))) > 1e-3
    assert np.max(np.abs(forward(model, TOKENS) - forward(same_base, TOKENS))) > 1e-3


# -- 3. validation -----------------------------------------------------------------------------------------------


# (overrides of tiny(), the error, what its message must say): each names the field at fault.
BAD_OPTIONS = [
    (dict(layer_types=("local", "global", "local")), ValueError, r"layer_types has 3 entries.*num_layers=2"),
    (dict(layer_types=("local", "sliding")), ValueError, r"layer_types\[1\]='sliding'; choose one of"),
    (dict(layer_types=("local", 1)), TypeError, r"layer_types\[1\]=1; choose one of"),
    (dict(layer_types="local"), TypeError, r"layer_types must be a tuple"),
    (dict(layer_types=("local", "global")), ValueError, r"layer_types has local layers: set sliding_window"),
    (dict(local_rope_base=10.0), ValueError, r"local_rope_base / local_rope_scaling are for the local layers"),
    (
        dict(layer_types=("global", "global"), sliding_window=4, local_rope_base=10.0),
        ValueError,
        r"local_rope_base / local_rope_scaling are for the local layers",
    ),
    (dict(sandwich_norm=True, norm_position="post"), ValueError, r"sandwich_norm=True .*norm_position='post'"),
    (dict(norm_plus_one=True, norm="layernorm"), ValueError, r"norm_plus_one=True .*norm='layernorm'"),
    (dict(attention_logit_softcap=0), ValueError, r"attention_logit_softcap` must be a finite number > 0"),
    (dict(attention_logit_softcap=-1.0), ValueError, r"attention_logit_softcap` must be a finite number > 0"),
    (dict(attention_logit_softcap="x"), TypeError, r"attention_logit_softcap"),
    (dict(final_logit_softcap=0.0), ValueError, r"final_logit_softcap` must be a finite number > 0"),
    (dict(final_logit_softcap="x"), TypeError, r"final_logit_softcap"),
    (dict(attention_scale=-0.5), ValueError, r"attention_scale` must be a finite number > 0"),
    # Gemma 4
    (dict(global_head_dim=16), ValueError, r"global_head_dim / global_num_kv_heads / global_value_is_key shape"),
    (
        dict(layer_types=("local", "global"), sliding_window=4, global_num_kv_heads=3),
        ValueError,
        r"num_heads=4 must be a multiple of global_num_kv_heads=3",
    ),
    (dict(num_kv_shared_layers=2), ValueError, r"num_kv_shared_layers=2 must be < num_layers=2"),
    (dict(num_kv_shared_layers=-1), ValueError, r"num_kv_shared_layers"),
    (dict(kv_shared_d_ff=128), ValueError, r"kv_shared_d_ff is the FFN width of KV-shared layers"),
    (dict(per_layer_vocab_size=64), ValueError, r"per_layer_vocab_size needs per_layer_input_dim > 0"),
    (dict(per_layer_input_dim=-1), ValueError, r"per_layer_input_dim"),
    (
        dict(layer_types=("global", "local"), sliding_window=4, num_kv_shared_layers=1),
        ValueError,
        r"layer 1 \(local layer\) shares keys and values, but no layer of its kind precedes",
    ),
]


def option_id(overrides) -> str:
    return "-".join(f"{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in overrides.items())


@pytest.mark.parametrize("overrides, error, match", BAD_OPTIONS, ids=[option_id(o) for o, _, _ in BAD_OPTIONS])
def test_bad_gemma_options_raise_naming_the_field(overrides, error, match):
    with pytest.raises(error, match=match):
        tiny(**overrides)


def test_good_gemma_options_are_stored_resolved():
    config = tiny(layer_types=["local", "global"], sliding_window=4, local_rope_base=10, attention_logit_softcap=50)
    assert config.layer_types == ("local", "global")  # a list (from a config file) is stored as a tuple
    assert config.local_rope_base == 10.0 and isinstance(config.local_rope_base, float)
    assert config.attention_logit_softcap == 50.0 and isinstance(config.attention_logit_softcap, float)
    local, global_ = config.layer_config("local"), config.layer_config("global")
    assert (local.sliding_window, local.rope_base, local.layer_types) == (4, 10.0, None)
    assert (global_.sliding_window, global_.rope_base, global_.layer_types) == (None, 10000.0, None)


def test_models_with_one_or_no_language_head_refuse_gpt_only_options():
    with pytest.raises(ValueError, match="layer_types"):
        Transformer(
            ModelConfig.variant("transformer-tiny", vocab_size=50, layer_types=("local", "global"), sliding_window=4),
            rngs=nnx.Rngs(0),
        )
    with pytest.raises(ValueError, match=r"final_logit_softcap.*BERT"):
        BERT(ModelConfig.variant("bert-tiny", final_logit_softcap=30.0), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"final_logit_softcap.*ViT"):
        ViT(ModelConfig.variant("vit-tiny", final_logit_softcap=30.0), rngs=nnx.Rngs(0))


# -- 4-7. the (1 + w) RMSNorm, embed_scale, GeGLU, sandwich norms ----------------------------------------------


def test_plus_one_rmsnorm_inits_to_zero_and_sums_one_plus_w_in_float32():
    assert np.all(RMSNorm(8, rngs=nnx.Rngs(0)).scale[...] == 1.0)
    norm = RMSNorm(8, plus_one=True, param_dtype=jnp.bfloat16, epsilon=1e-6, rngs=nnx.Rngs(0))
    assert norm.scale.dtype == jnp.bfloat16 and np.all(norm.scale[...] == 0.0)
    w = jnp.asarray(np.array([1e-3, -1e-3, 2e-3, 0.0, 3e-3, -1.5e-3, 1e-3, 0.5]), jnp.bfloat16)
    assert np.all((jnp.bfloat16(1.0) + w)[:7] == 1.0)  # in bfloat16 these scales would all round to 1
    norm.scale[...] = w
    x = np.random.default_rng(7).normal(size=(3, 8)).astype(np.float32)
    x64 = x.astype(np.float64)
    want = x64 / np.sqrt(np.mean(x64**2, axis=-1, keepdims=True) + 1e-6) * (1.0 + np.asarray(w, np.float64))
    got = norm(x)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=0)


def test_every_norm_of_a_norm_plus_one_model_scales_by_one_plus_w():
    config = tiny(qk_norm=True, sandwich_norm=True, norm_plus_one=True)
    norms = [
        m for _, m in nnx.iter_graph(nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))) if isinstance(m, RMSNorm)
    ]
    # per layer: 2 residual norms, 2 sandwich output norms, q and k norms; and the final norm
    assert len(norms) == 2 * 6 + 1
    assert all(norm.plus_one for norm in norms)
    plain = nnx.eval_shape(lambda: GPT(config.replace(norm_plus_one=False), rngs=nnx.Rngs(0)))
    assert not any(m.plus_one for _, m in nnx.iter_graph(plain) if isinstance(m, RMSNorm))


def test_embed_scale_is_rounded_to_the_compute_dtype():
    D = 24  # sqrt(24) = 4.898979... is 4.90625 in bfloat16
    factor = float(jnp.asarray(math.sqrt(D), jnp.bfloat16))
    assert factor == 4.90625
    config = tiny(d_model=D, num_heads=2, dtype="bfloat16", embed_scale=True)
    embed = build(lambda rngs: InputEmbedding(config, rngs=rngs))
    table = np.asarray(embed.tokens.embedding[...].astype(jnp.bfloat16), np.float64)
    got = np.asarray(embed(TOKENS).astype(jnp.float32), np.float64)
    want = (table[TOKENS] * factor).astype(ml_dtypes.bfloat16).astype(np.float64)  # one rounding of the product
    np.testing.assert_array_equal(got, want)
    unrounded = (table[TOKENS] * math.sqrt(D)).astype(ml_dtypes.bfloat16).astype(np.float64)
    assert np.any(unrounded != want), "the rounded and the exact factor give the same result: nothing tested"


def test_geglu_feedforward_equals_gelu_tanh_gate_times_up_projection():
    ffn = build(lambda rngs: FeedForward(16, 48, activation="geglu", rngs=rngs))
    assert not hasattr(ffn, "w_in") or ffn.w_in is None
    x = np.random.default_rng(8).normal(size=(2, 5, 16)).astype(np.float32)
    p = {name: np.asarray(getattr(ffn, name)[...], np.float64) for name in ("w_gate", "w_up", "w_out")}
    for name in ("b_in", "b_out"):
        assert getattr(ffn, name, None) is None  # a gated FFN has no biases
    np.testing.assert_allclose(ffn(x), np_geglu(x.astype(np.float64), p), rtol=1e-5, atol=1e-6)


def test_sandwich_norm_adds_an_output_norm_to_both_residuals():
    config = tiny(sandwich_norm=True, norm_plus_one=True, activation="geglu")
    block = build(lambda rngs: DecoderBlock(config, rngs=rngs), seed=9)
    plain = nnx.eval_shape(lambda: DecoderBlock(config.replace(sandwich_norm=False), rngs=nnx.Rngs(0)))
    assert isinstance(block.self_residual.output_norm, RMSNorm) and isinstance(block.ffn_residual.output_norm, RMSNorm)
    assert plain.self_residual.output_norm is None and plain.ffn_residual.output_norm is None
    assert param_count(block) == param_count(plain) + 2 * 32
    x = np.random.default_rng(9).normal(size=(2, 6, 32)).astype(np.float32) * 3
    # x + n2(f(n1(x))) for each sublayer, in float64 NumPy from the block's parameters
    p = jax.tree.map(lambda v: np.asarray(v, np.float64), nnx.to_pure_dict(nnx.state(block, nnx.Param)))
    norm = lambda x, params: np_rms_norm(x, params["scale"], config.norm_epsilon, plus_one=True)
    s, f = p["self_residual"], p["ffn_residual"]
    attention = np_attention(norm(x.astype(np.float64), s["norm"]), p["self_attention"], config, None, config.rope_base)
    h = x + norm(attention, s["output_norm"])
    want = h + norm(np_geglu(norm(h, f["norm"]), p["ffn"]), f["output_norm"])
    np.testing.assert_allclose(nnx.jit(lambda b, x: b(x))(block, x), want, rtol=1e-5, atol=1e-5)
    # without the output norms (plain pre-norm) the same parameters give another result
    without = h - norm(attention, s["output_norm"]) + attention
    assert np.max(np.abs(without - h)) > 1e-1


# -- 8. Gemma 4: per-layer inputs, layer scalars, v-norm, values = keys, KV sharing ---------------------------------

GEMMA4 = dict(
    sandwich_norm=True,
    activation="geglu",
    embed_scale=True,
    qk_norm=True,
    v_norm=True,
    layer_scale=True,
    attention_scale=1.0,
    per_layer_input_dim=4,
    layer_types=PATTERN7,
    sliding_window=3,
    global_head_dim=16,
    global_num_kv_heads=1,
    global_value_is_key=True,
    num_layers=7,
)


@pytest.fixture(scope="module")
def gemma4_pattern():
    return build_gpt(tiny(**GEMMA4), seed=8)


def test_gemma4_per_layer_inputs_scan_over_the_groups_as_the_loop(gemma4_pattern):
    """Per-layer inputs [L, B, T, P] are scanned with the groups ([G, P, ...]) and indexed for the tail; global
    layers hold their own shapes (head_dim 16, one kv head, no value projection)."""
    looped = gemma4_pattern
    attention = [block.self_attention for block in looped.blocks.layers]
    assert [a.head_dim for a in attention] == [8, 8, 16] * 2 + [8] and attention[2].w_v is None
    assert attention[0].w_v is not None and attention[2].w_k.shape == (32, 1, 16)
    scanned = grouped_scanned_copy(looped)
    np.testing.assert_allclose(forward(scanned, TOKENS), forward(looped, TOKENS), rtol=1e-5, atol=1e-5)
    without = rebuild(looped)
    without.per_layer_embed.embedding[...] = jnp.zeros_like(without.per_layer_embed.embedding[...])
    assert np.abs(forward(without, TOKENS) - forward(looped, TOKENS)).max() > 1e-3  # the inputs are used


def test_gemma4_kv_shared_layers_decode_as_the_full_forward():
    """The last 3 of 7 layers attend over the keys / values (and, decoding, the cache: a ring for local ones) of
    the last earlier layer of their kind."""
    config = tiny(**{**GEMMA4, "num_kv_shared_layers": 3, "kv_shared_d_ff": 128})
    assert config.kv_sources == (None, None, None, None, 3, 2, 3)
    model = build_gpt(config, seed=9)
    assert [b.self_attention.shared_kv for b in model.blocks.layers] == [False] * 4 + [True] * 3
    assert model.blocks.layers[6].ffn.w_gate.shape == (32, 128)
    full = forward(model, TOKENS)
    cached = rebuild(model)
    cached.init_cache(2, 16)
    step = nnx.jit(lambda m, x: m(x, decode=True))
    pieces = [step(cached, TOKENS[:, :5])] + [step(cached, TOKENS[:, t : t + 1]) for t in range(5, TOKENS.shape[1])]
    # (7 layers with logits up to ~7: float32 rounding of a different summation order reaches 2.5e-5)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="num_kv_shared_layers > 0 needs scan_layers=False"):
        GPT(config.replace(scan_layers=True), rngs=nnx.Rngs(0))
