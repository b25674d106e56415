"""LoRA on whole models (jaxformer/models/lora.py): add_adapters leaves the outputs unchanged, counts, scanned ==
looped with trained adapters (a scanned group and its unscanned tail), merge, GPT-2's fused c_attn adapter,
gradients only for A and B, targets / patterns / dropout, and argument errors that leave the model untouched."""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer.models import GPT, ModelConfig, Transformer, lora
from tests.ops import reference

V, D, N, K, F, R, ALPHA = 50, 16, 4, 2, 32, 2, 4.0
H = D // N
TOKENS = np.random.default_rng(0).integers(0, V, size=(2, 7)).astype(np.int32)

BASE = dict(vocab_size=V, d_model=D, num_heads=N, num_kv_heads=K, d_ff=F, max_len=16, dropout_rate=0.0)
CONFIGS = {
    "swiglu": ModelConfig(**BASE, num_layers=2, activation="swiglu", norm="rmsnorm", positional="rope", use_bias=False),
    "gelu": ModelConfig(**BASE, num_layers=2, activation="gelu", norm="layernorm", positional="learned", use_bias=True),
    # period 2 (local, global): scanned as 2 groups of 2 blocks stacked [2, ...], then a tail of 1 local layer
    "pattern": ModelConfig(
        **BASE,
        num_layers=5,
        activation="swiglu",
        norm="rmsnorm",
        positional="rope",
        use_bias=False,
        layer_types=("local", "global") * 2 + ("local",),
        sliding_window=3,
    ),
}
# GPT-2: multi-head attention with biases (c_attn = [w_q | w_k | w_v]), GELU, LayerNorm, learned positions
GPT2 = ModelConfig(
    **{**BASE, "num_kv_heads": N}, num_layers=2, activation="gelu", norm="layernorm", positional="learned"
)

forward = nnx.jit(lambda model, tokens: model(tokens))


def assert_logits_close(got, want):
    """Within 1e-5 relative to the logits' scale (a few units): the same sums in another float32 order (a merged
    weight W + s A B, a scan) may differ by ~1e-5 on a small logit after 5 layers."""
    want = np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.max(np.abs(want)))))


# -- building models with given parameters (no initialiser compiled) -----------------------------------------------


def fill(module, seed):
    """`module` (from nnx.eval_shape) given random parameters drawn in NumPy: weights ~ N(0, 1 / fan_in), norm
    scales ~ N(1, 0.2^2), biases ~ N(0, 0.1^2), embeddings ~ N(0, 0.5^2) (looped models: no stacked axis)."""
    rng = np.random.default_rng(seed)

    def value(path, x):
        name, shape = path[-1].key, x.shape
        if name == "key":
            return jax.random.wrap_key_data(np.zeros((*shape, 2), np.uint32))
        if name == "count":
            return np.zeros(shape, x.dtype)
        if name == "scale":
            mean, std = 1.0, 0.2
        elif name == "embedding":
            mean, std = 0.0, 0.5
        elif name == "bias" or name.startswith("b_"):
            mean, std = 0.0, 0.1
        else:  # w_q / w_k / w_v [D, N, H] and w_o [N, H, D]; [fan_in, fan_out] otherwise
            fan_in = shape[0] if name in ("w_q", "w_k", "w_v") else shape[0] * shape[1] if name == "w_o" else shape[-2]
            mean, std = 0.0, 1.0 / math.sqrt(fan_in)
        return jnp.asarray(rng.normal(mean, std, shape), x.dtype)

    state = nnx.state(module)
    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(value, nnx.to_pure_dict(state)))
    nnx.update(module, state)
    return module


def build(config, seed=0, cls=GPT):
    return fill(nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0))), seed)


def randomize_b(model, seed):
    """Every adapter's B ~ N(0, 0.5^2) (in place; also returned): a 'trained' adapter that changes the outputs."""
    rng = np.random.default_rng(seed)
    for *_, adapter in lora.adapters(model):
        adapter.b[...] = jnp.asarray(rng.normal(0.0, 0.5, adapter.b.shape), jnp.float32)
    return model


def scanned_copy(model, **adapter_kwargs):
    """`model` (looped) rebuilt with `scan_layers=True` (and, with `adapter_kwargs`, the same adapters) and given
    `model`'s state: layer i sits in row i // P of group member i % P, the last L mod P layers in `blocks.tail`."""
    config = model.config.replace(scan_layers=True)

    def make():
        scanned = GPT(config, rngs=nnx.Rngs(0))
        return lora.add_adapters(scanned, **adapter_kwargs, rngs=nnx.Rngs(1)) if adapter_kwargs else scanned

    scanned = nnx.eval_shape(make)
    L, P = config.num_layers, scanned.blocks.period
    G = L // P
    values = nnx.to_pure_dict(nnx.state(model))
    layers = values["blocks"]["layers"]
    stack = lambda rows: jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in rows])
    if P == 1:
        blocks = {"layers": stack(range(L))}
    else:
        blocks = {"layers": {"blocks": {j: stack(range(j, G * P, P)) for j in range(P)}}}
    if L % P:
        blocks["tail"] = {k: layers[G * P + k] for k in range(L % P)}
    values["blocks"] = blocks
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, values)
    nnx.update(scanned, state)
    assert scanned.blocks.scan
    return scanned


def lora_leaves(model):
    return nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))


def expected_count(config, rank=R):
    """r (prod(in) + prod(out)) summed over every adapted weight, from the config alone."""
    NH, KH = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    d, f = config.d_model, config.d_ff
    attention = rank * ((d + NH) + 2 * (d + KH) + (NH + d))  # w_q, w_k, w_v, w_o
    gated = config.activation in ("swiglu", "geglu")
    ffn = rank * ((3 if gated else 2) * (d + f))  # w_gate, w_up (or w_in), w_out
    return config.num_layers * (attention + ffn)


# -- shared models ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base():
    """A looped GPT per config, without adapters: tests clone it and never change it."""
    return {name: build(config, seed=i) for i, (name, config) in enumerate(CONFIGS.items())}


@pytest.fixture(scope="module", params=list(CONFIGS))
def adapted(request, base):
    """One config, looped and scanned, with the same base weights: logits before and right after add_adapters
    (rank 2, alpha 4, every linear weight), and the adapted models (B = 0)."""
    looped = nnx.clone(base[request.param])
    scanned = scanned_copy(looped)
    models = {False: looped, True: scanned}
    before = {scan: np.asarray(forward(m, TOKENS)) for scan, m in models.items()}
    for m in models.values():
        lora.add_adapters(m, rank=R, alpha=ALPHA, rngs=nnx.Rngs(1))
    after = {scan: np.asarray(forward(m, TOKENS)) for scan, m in models.items()}
    return types.SimpleNamespace(name=request.param, models=models, before=before, after=after)


@pytest.fixture(scope="module")
def trained(adapted):
    """`adapted`'s looped model with random A and B (a copy), its logits, and its scanned copy."""
    looped = randomize_b(nnx.clone(adapted.models[False]), seed=3)
    scanned = scanned_copy(looped, rank=R, alpha=ALPHA)
    logits = np.asarray(forward(looped, TOKENS))
    return types.SimpleNamespace(name=adapted.name, looped=looped, scanned=scanned, logits=logits)


# -- 1. adding adapters changes nothing; what is added -----------------------------------------------------------


@pytest.mark.parametrize("scan", [False, True], ids=["looped", "scanned"])
def test_add_adapters_leaves_the_outputs_exactly_unchanged(adapted, scan):
    assert adapted.models[scan].blocks.scan == scan
    assert list(lora.adapters(adapted.models[scan]))
    np.testing.assert_array_equal(adapted.after[scan], adapted.before[scan])
    np.testing.assert_allclose(adapted.before[True], adapted.before[False], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan", [False, True], ids=["looped", "scanned"])
def test_count_is_rank_times_fan_in_plus_fan_out_of_every_adapted_weight(adapted, scan):
    model = adapted.models[scan]
    want = expected_count(model.config)
    assert lora.count(model) == want
    assert sum(math.prod(v.shape) for _, v in lora_leaves(model)) == want
    for path, *_, adapter in lora.adapters(model):  # peft's init: A ~ U(+-1 / sqrt(fan_in)), B = 0
        assert adapter.rank == R and adapter.scale == ALPHA / R, path
        bound = 1.0 / math.sqrt(math.prod(adapter.in_shape))
        assert 0 < np.max(np.abs(adapter.a[...])) <= bound, path
        np.testing.assert_array_equal(adapter.b[...], 0.0)


def test_the_pattern_has_stacked_adapters_in_its_scanned_group_and_plain_ones_in_its_tail(adapted):
    if adapted.name != "pattern":
        pytest.skip("a layer_types pattern only")
    scanned = adapted.models[True]
    assert scanned.blocks.period == 2 and len(scanned.blocks.tail) == 1
    found = {path: adapter for path, _, _, adapter in lora.adapters(scanned)}
    names = ("self_attention/w_q", "self_attention/w_k", "self_attention/w_v", "self_attention/w_o")
    names += ("ffn/w_gate", "ffn/w_up", "ffn/w_out")
    want = [f"blocks/layers/blocks/{j}/{n}" for j in (0, 1) for n in names] + [f"blocks/tail/0/{n}" for n in names]
    assert sorted(found) == sorted(want)
    assert found["blocks/layers/blocks/1/self_attention/w_q"].a.shape == (2, D, R)  # [L // P, D, r]
    assert found["blocks/layers/blocks/1/self_attention/w_q"].b.shape == (2, R, N, H)
    assert found["blocks/tail/0/self_attention/w_o"].a.shape == (N, H, R)
    assert found["blocks/tail/0/self_attention/w_o"].b.shape == (R, D)
    looped_paths = [path for path, *_ in lora.adapters(adapted.models[False])]
    assert len(looped_paths) == 5 * len(names) and "blocks/layers/4/ffn/w_out" in looped_paths


# -- 2. trained adapters: scanned == looped, merge ------------------------------------------------------------------


def test_trained_adapters_change_the_outputs(adapted, trained):
    assert np.max(np.abs(trained.logits - adapted.before[False])) > 1e-2


def test_scanned_model_with_adapters_equals_the_looped_one(trained):
    assert lora.count(trained.scanned) == lora.count(trained.looped)
    assert_logits_close(forward(trained.scanned, TOKENS), trained.logits)


@pytest.mark.parametrize("scan", [False, True], ids=["looped", "scanned"])
def test_merge_folds_the_adapters_into_the_weights(trained, scan):
    model = nnx.clone(trained.scanned if scan else trained.looped)
    attention, adapter = next((m, a) for _, m, n, a in lora.adapters(model) if n == "w_q")
    w_q, delta = np.asarray(attention.w_q[...]), np.asarray(adapter.weight_delta())
    assert lora.merge(model) is model
    assert len(lora_leaves(model)) == 0 and list(lora.adapters(model)) == [] and lora.count(model) == 0
    assert attention.lora is None and np.max(np.abs(delta)) > 1e-3
    np.testing.assert_allclose(attention.w_q[...], w_q + delta, rtol=1e-6, atol=1e-6)  # W <- W + s A B
    assert_logits_close(forward(model, TOKENS), trained.logits)


# -- 3. GPT-2's fused c_attn adapter --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2():
    """GPT-2-like, with fused q|k|v adapters (trained), and its logits before adding them."""
    model = build(GPT2, seed=7)
    before = np.asarray(forward(model, TOKENS))
    lora.add_adapters(model, rank=R, alpha=ALPHA, fused_qkv=True, rngs=nnx.Rngs(2))
    return types.SimpleNamespace(model=randomize_b(model, seed=8), before=before)


def test_fused_qkv_gives_one_adapter_over_q_k_v_per_layer(gpt2):
    found = {path: adapter for path, _, _, adapter in lora.adapters(gpt2.model)}
    names = ("self_attention/w_qkv", "self_attention/w_o", "ffn/w_in", "ffn/w_out")
    assert sorted(found) == sorted(f"blocks/layers/{i}/{n}" for i in (0, 1) for n in names)
    fused = found["blocks/layers/0/self_attention/w_qkv"]
    assert fused.a.shape == (D, R) and fused.b.shape == (R, 3 * N, H)
    layer = 2 * (R * (D + 3 * N * H) + R * (N * H + D) + 2 * R * (D + F))
    assert lora.count(gpt2.model) == layer == sum(math.prod(v.shape) for _, v in lora_leaves(gpt2.model))


def test_fused_qkv_layer_equals_the_numpy_reference(gpt2):
    attention = gpt2.model.blocks.layers[0].self_attention
    x = np.random.default_rng(9).normal(size=(2, 5, D))
    p = {
        k: np.asarray(v, np.float64)
        for k, v in nnx.to_pure_dict(nnx.state(attention, nnx.Param)).items()
        if k != "lora"
    }
    ad = {n: attention.lora[n] for n in ("w_qkv", "w_o")}
    delta = lambda n, y, n_in: (
        ad[n].scale
        * (y.reshape(*y.shape[: y.ndim - n_in], -1) @ np.asarray(ad[n].a[...], np.float64).reshape(-1, R))
        @ np.asarray(ad[n].b[...], np.float64).reshape(R, -1)
    )
    qkv = delta("w_qkv", x, 1).reshape(2, 5, 3 * N, H)  # x A B, split along the heads into q | k | v
    q, k, v = (np.einsum("btd,dnh->btnh", x, p[w]) + p["b_" + w[-1]] + qkv[:, :, i * N : (i + 1) * N]
               for i, w in enumerate(("w_q", "w_k", "w_v")))  # fmt: skip
    out = reference.attention(q, k, v, mask=reference.causal(5, 5))
    want = np.einsum("btnh,nhd->btd", out, p["w_o"]) + p["b_o"] + delta("w_o", out, 2)
    got = nnx.jit(lambda m, x: m(x, is_causal=True))(attention, jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_fused_qkv_merges_into_w_q_w_k_w_v(gpt2):
    logits = np.asarray(forward(gpt2.model, TOKENS))
    assert np.max(np.abs(logits - gpt2.before)) > 1e-2
    model = lora.merge(nnx.clone(gpt2.model))
    assert len(lora_leaves(model)) == 0
    assert_logits_close(forward(model, TOKENS), logits)


def test_fused_qkv_on_an_encoder_decoder_merges_to_the_same_logits():
    config = ModelConfig(**{**BASE, "num_kv_heads": N}, num_layers=1, activation="gelu", norm="layernorm")
    model = build(config, seed=10, cls=Transformer)
    lora.add_adapters(model, rank=R, alpha=ALPHA, fused_qkv=True, rngs=nnx.Rngs(0))
    kinds = {(path.split("/")[-2], name) for path, _, name, _ in lora.adapters(model)}
    assert ("self_attention", "w_qkv") in kinds and ("cross_attention", "w_qkv") not in kinds  # k, v: the context
    assert {("cross_attention", n) for n in ("w_q", "w_k", "w_v")} <= kinds
    randomize_b(model, seed=11)
    apply = nnx.jit(lambda m, src, tgt: m(src, tgt))
    src, tgt = TOKENS[:, :6], TOKENS[:, 1:]
    logits = apply(model, src, tgt)
    assert_logits_close(apply(lora.merge(model), src, tgt), logits)


# -- 4. gradients, jit ---------------------------------------------------------------------------------------------


def loss(model, tokens):
    logits = model(tokens)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], axis=-1))


def test_gradients_only_for_a_and_b_and_at_init_only_for_b(base):
    model = lora.add_adapters(nnx.clone(base["swiglu"]), rank=R, alpha=ALPHA, rngs=nnx.Rngs(1))
    grad = nnx.jit(nnx.value_and_grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam)))
    value, grads = grad(model, TOKENS)
    leaves = nnx.to_flat_state(grads)
    assert np.isfinite(value)
    assert all(isinstance(v, nnx.LoRAParam) for _, v in leaves)
    want = {
        (*path.split("/")[:-1], "lora", path.split("/")[-1], ab) for path, *_ in lora.adapters(model) for ab in "ab"
    }
    assert {tuple(str(k) for k in path) for path, _ in leaves} == want
    for path, g in leaves:
        if path[-1] == "a":  # dL/dA = x^T dL/dh and dL/dh = s dL/dy B^T = 0 while B = 0
            np.testing.assert_array_equal(g[...], 0.0)
        else:
            assert np.max(np.abs(g[...])) > 1e-6, path


def test_jit_and_eager_agree(trained):
    if trained.name != "swiglu":
        pytest.skip("one config is enough")
    np.testing.assert_allclose(trained.looped(TOKENS), trained.logits, rtol=1e-5, atol=1e-5)


def test_cached_decoding_with_adapters_equals_the_full_pass(trained):
    """Prefill 4 tokens, then one at a time past the window (3), through the scanned groups and the tail."""
    if trained.name != "pattern":
        pytest.skip("the scanned pattern only")
    model = nnx.clone(trained.scanned)
    model.init_cache(2, 16)
    step = nnx.jit(lambda m, x: m(x, decode=True))
    pieces = [step(model, TOKENS[:, :4])] + [step(model, TOKENS[:, t : t + 1]) for t in range(4, TOKENS.shape[1])]
    assert_logits_close(jnp.concatenate(pieces, axis=1), trained.logits)


# -- 5. targets, patterns, dropout ---------------------------------------------------------------------------------


def adapted_names(model):
    return [path for path, *_ in lora.adapters(model)]


def test_targets_by_name_adapt_only_those_weights(base):
    model = lora.add_adapters(nnx.clone(base["swiglu"]), rank=R, alpha=ALPHA, targets=("w_q", "w_v"), rngs=nnx.Rngs(0))
    want = [f"blocks/layers/{i}/self_attention/{n}" for i in (0, 1) for n in ("w_q", "w_v")]
    assert adapted_names(model) == want
    assert lora.count(model) == 2 * (R * (D + N * H) + R * (D + K * H))


def test_a_full_path_adapts_one_layer(base):
    path = "blocks/layers/0/self_attention/w_q"
    model = lora.add_adapters(nnx.clone(base["swiglu"]), rank=R, alpha=ALPHA, targets=[path], rngs=nnx.Rngs(0))
    assert adapted_names(model) == [path]
    assert model.blocks.layers[1].self_attention.lora is None and model.blocks.layers[0].ffn.lora is None


def test_rank_and_alpha_patterns_and_rslora(base):
    model = lora.add_adapters(
        nnx.clone(base["swiglu"]),
        rank=R,
        alpha=ALPHA,
        rank_pattern={"w_out": 3},
        alpha_pattern={"self_attention/w_o": 12.0},
        use_rslora=True,
        rngs=nnx.Rngs(0),
    )
    for path, _, name, adapter in lora.adapters(model):
        rank, alpha = (3 if name == "w_out" else R), (12.0 if name == "w_o" else ALPHA)
        assert (adapter.rank, adapter.alpha) == (rank, alpha), path
        assert adapter.a.shape[-1] == adapter.b.shape[0] == rank
        assert adapter.scale == pytest.approx(alpha / math.sqrt(rank))
    assert lora.count(model) == expected_count(model.config) + 2 * (D + F)  # w_out: rank 3, not 2, in 2 layers


def test_dropout_changes_train_outputs_only(base):
    model = lora.add_adapters(nnx.clone(base["swiglu"]), rank=R, alpha=ALPHA, dropout=0.5, rngs=nnx.Rngs(0))
    randomize_b(model, seed=12)
    no_dropout = lora.add_adapters(nnx.clone(base["swiglu"]), rank=R, alpha=ALPHA, rngs=nnx.Rngs(5))
    nnx.update(no_dropout, nnx.state(model, nnx.LoRAParam))  # the same A and B
    want = np.asarray(forward(no_dropout, TOKENS))
    model.train()
    train = np.asarray(forward(model, TOKENS))
    assert np.max(np.abs(train - want)) > 1e-3
    assert np.max(np.abs(np.asarray(forward(model, TOKENS)) - train)) > 1e-3  # a new mask each step
    model.eval()
    np.testing.assert_array_equal(forward(model, TOKENS), want)


# -- 6. errors ---------------------------------------------------------------------------------------------------

BAD = [
    (dict(rank=0), ValueError, r"`rank` must be a positive int; got 0"),
    (dict(rank=2.0), ValueError, r"`rank`"),
    (dict(alpha=0.0), ValueError, r"`alpha` must be a finite number > 0"),
    (dict(alpha=-2.0), ValueError, r"`alpha`"),
    (dict(dropout=1.5), ValueError, r"`dropout` must be"),
    (dict(targets="foo"), ValueError, r"`targets` must be 'all-linear' .*got 'foo'"),
    (dict(targets=[]), ValueError, r"`targets` must be 'all-linear' or a non-empty sequence"),
    (dict(targets=["w_q["]), ValueError, r"`targets` entry 'w_q\[' is not a regular expression"),
    (dict(targets=["w_nope"]), ValueError, r"No weight of this model matches targets=\['w_nope'\]"),
    (dict(targets=["w_q", "w_nope"]), ValueError, r"targets\['w_nope'\] match no weight"),
    (dict(rank_pattern={"w_nope": 3}), ValueError, r"rank_pattern\['w_nope'\] match no weight"),
    (dict(rank_pattern={"w_q": 0}), ValueError, r"`rank_pattern\['w_q'\]` must be a positive int"),
    (dict(alpha_pattern={"w_q": -1.0}), ValueError, r"`alpha_pattern\['w_q'\]` must be a finite number > 0"),
    (dict(targets=["w_q"], rank_pattern={"w_v": 3}), ValueError, r"rank_pattern\['w_v'\] match no weight"),
    (dict(fused_qkv=True, rank_pattern={"w_q": 3}), ValueError, r"fused_qkv: .*one rank and alpha"),
    # the second layer fails after the first was planned: still nothing is attached
    (
        dict(fused_qkv=True, alpha_pattern={"layers/1/self_attention/w_k": 1.0}),
        ValueError,
        r"fused_qkv: blocks/layers/1",
    ),
]


@pytest.mark.parametrize("kwargs, error, match", BAD)
def test_bad_arguments_raise_and_leave_the_model_without_adapters(base, kwargs, error, match):
    model = nnx.clone(base["swiglu"])
    with pytest.raises(error, match=match):
        lora.add_adapters(model, **{"rank": R, "alpha": ALPHA, "rngs": nnx.Rngs(0), **kwargs})
    assert list(lora.adapters(model)) == [] and len(lora_leaves(model)) == 0 and lora.count(model) == 0
    assert all(getattr(m, "lora", None) is None for _, m in nnx.iter_graph(model))


def test_adding_adapters_twice_is_refused(adapted):
    model = adapted.models[True]
    before = lora.count(model)
    with pytest.raises(ValueError, match=r"has LoRA adapters already; merge them"):
        lora.add_adapters(model, rank=R, alpha=ALPHA, rngs=nnx.Rngs(0))
    assert lora.count(model) == before


def test_a_scanned_path_has_no_layer_index(base):
    scanned = scanned_copy(base["swiglu"])
    with pytest.raises(ValueError, match=r"No weight of this model matches targets=\['blocks/layers/0/self_attent"):
        lora.add_adapters(
            scanned, rank=R, alpha=ALPHA, targets=["blocks/layers/0/self_attention/w_q"], rngs=nnx.Rngs(0)
        )
    lora.add_adapters(scanned, rank=R, alpha=ALPHA, targets=["blocks/layers/self_attention/w_q"], rngs=nnx.Rngs(0))
    assert adapted_names(scanned) == ["blocks/layers/self_attention/w_q"]
