"""Mixtral, Qwen2-MoE, Qwen3-MoE and GPT-OSS checkpoints in and out, against tiny fixtures that `transformers` made
(experiments/make_pretrained_fixtures.py): logits, greedy generation, the load-balancing loss, save -> load (in
the per-expert layout transformers saves Mixtral and Qwen-MoE in, the stacked layout it holds them in memory loads
too; GPT-OSS's one stacked layout with gate / up interleaved), the config keys of each family (GPT-OSS's sinks,
biases, local / global layers, YaRN), and every refusal."""

import functools
import json
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.flax import load_file

from jaxformer import pretrained
from jaxformer.decoding import generate
from jaxformer.models import GPT, ModelConfig
from jaxformer.ops import RopeScaling, rope_frequencies
from jaxformer.pretrained import hf_config, io
from tests.pretrained.test_pretrained import (
    FIXTURES,
    assert_round_trip,
    copy_fixture,
    edit_config,
    params,
    reference,
    rewrite_tensors,
)

PER_EXPERT = ["mixtral", "qwen2_moe", "qwen3_moe"]  # saved one Linear per expert; stacked in transformers' memory
MOES = [*PER_EXPERT, "gpt_oss"]

# Each fixture loaded once per test process.
load = functools.cache(lambda name: pretrained.from_pretrained(FIXTURES / name))


@pytest.fixture(scope="module", params=MOES)
def loaded(request):
    return request.param, load(request.param)


def fixture_config(name: str) -> dict:
    return json.loads((FIXTURES / name / "config.json").read_text())


def balance_loss(model, ids, mask=None) -> float:
    """jaxformer's unscaled load-balancing loss after a forward pass (padding left out with `valid`)."""
    valid = None if mask is None else jnp.asarray(mask, bool)
    model(jnp.asarray(ids), valid=valid)
    _, metrics = model.router_losses()
    return float(metrics["moe_balance_loss"])


def test_logits_equal_transformers(loaded):
    name, model = loaded
    ref = reference(name)
    logits = model(jnp.asarray(ref["input_ids"]))
    assert logits.shape == ref["logits"].shape
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)


def test_greedy_generation_equals_transformers(loaded):
    name, model = loaded
    ref = reference(name)
    tokens = generate(model, jnp.asarray(ref["input_ids"][:, :5]), 20, rng=jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(np.asarray(tokens), ref["greedy"])


def test_the_load_balancing_loss_equals_transformers_aux_loss(loaded):
    """transformers' `outputs.aux_loss` (unscaled: E sum_e f_e P_e over the sparse layers' tokens), stored in the
    fixture, without and with padding (`attention_mask` there, `valid` here)."""
    name, model = loaded
    ref = reference(name)
    np.testing.assert_allclose(balance_loss(model, ref["input_ids"]), ref["aux_loss"], rtol=1e-5)
    masked = balance_loss(model, ref["input_ids"], ref["aux_mask"])
    np.testing.assert_allclose(masked, ref["aux_loss_masked"], rtol=1e-5)
    aux, _ = model.router_losses()
    np.testing.assert_allclose(float(aux), model.config.router_aux_loss_coef * masked, rtol=1e-6)


def test_save_then_load_is_bit_exact_and_rewrites_the_same_tensors(loaded, tmp_path):
    """The tensors written are transformers' own, names and values: one Linear per expert, as it saves them (GPT-OSS:
    stacked, gate / up interleaved, with the sinks and biases)."""
    name, model = loaded
    out = assert_round_trip(model, name, tmp_path)
    assert pretrained.from_pretrained(out).config == model.config


def test_the_config_reads_what_each_family_needs():
    mixtral = load("mixtral").config
    assert (mixtral.num_experts, mixtral.experts_per_token, mixtral.d_ff, mixtral.expert_d_ff) == (4, 2, 16, None)
    assert mixtral.router_normalize and mixtral.shared_expert_d_ff is None and mixtral.dense_layers == ()
    assert mixtral.router == "softmax_topk" and not mixtral.router_bias and mixtral.capacity_factor is None
    assert mixtral.router_aux_loss_coef == 0.02 and mixtral.rope_base == 1e6 and mixtral.sliding_window is None
    assert not (mixtral.qkv_bias or mixtral.out_bias or mixtral.qk_norm or mixtral.tie_embeddings)
    qwen2 = load("qwen2_moe").config
    assert (qwen2.num_experts, qwen2.experts_per_token, qwen2.expert_d_ff, qwen2.shared_expert_d_ff) == (4, 2, 16, 40)
    assert not qwen2.router_normalize and qwen2.qkv_bias and not qwen2.out_bias and qwen2.dense_layers == ()
    assert qwen2.router_aux_loss_coef == 0.001
    qwen3 = load("qwen3_moe").config
    assert qwen3.dense_layers == (1,) and qwen3.d_ff == 48 and qwen3.expert_d_ff == 16 and qwen3.router_normalize
    assert qwen3.qk_norm and qwen3.head_dim == 8 and qwen3.shared_expert_d_ff is None
    assert [type(layer.ffn).__name__ for layer in load("qwen3_moe").blocks.layers] == [
        "MoEFeedForward",
        "FeedForward",
        "MoEFeedForward",
    ]


@pytest.mark.parametrize("name", PER_EXPERT)
def test_the_config_round_trips(name):
    """config.json -> ModelConfig -> config.json -> the same ModelConfig; the keys written are the family's."""
    cfg = hf_config.to_model_config(fixture_config(name))
    written = hf_config.from_model_config(cfg)
    assert written["architectures"] == fixture_config(name)["architectures"]
    assert hf_config.to_model_config(written) == cfg
    assert {k: written[k] for k in ("num_experts_per_tok", "router_aux_loss_coef")} == {
        k: fixture_config(name)[k] for k in ("num_experts_per_tok", "router_aux_loss_coef")
    }
    if name == "mixtral":
        assert written["num_local_experts"] == 4 and written["intermediate_size"] == 16
        assert written["router_jitter_noise"] == 0.0 and "num_experts" not in written
    else:
        assert written["num_experts"] == 4 and written["moe_intermediate_size"] == 16
        assert written["mlp_only_layers"] == ([1] if name == "qwen3_moe" else [])
        assert written["decoder_sparse_step"] == 1
        assert written["norm_topk_prob"] == fixture_config(name)["norm_topk_prob"]
    if name == "qwen2_moe":
        assert written["shared_expert_intermediate_size"] == 40 and written["qkv_bias"] is True


def test_sparse_layers_follow_decoder_sparse_step_and_mlp_only_layers():
    """Layer i is sparse iff num_experts > 0, (i + 1) % decoder_sparse_step == 0 and i is not in mlp_only_layers;
    num_experts 0 is a dense Qwen; a Qwen3-MoE config may name its experts num_local_experts (as transformers 5
    saves it) or num_experts (as the hub's files do)."""
    hf = fixture_config("qwen3_moe") | {"num_hidden_layers": 6, "mlp_only_layers": [], "decoder_sparse_step": 2}
    assert hf_config.to_model_config(hf).dense_layers == (0, 2, 4)
    assert hf_config.to_model_config(hf | {"mlp_only_layers": [3, 9]}).dense_layers == (0, 2, 3, 4)
    hub = {k: v for k, v in hf.items() if k != "num_local_experts"} | {"num_experts": 6}
    assert hf_config.to_model_config(hub).num_experts == 6
    dense = hf_config.to_model_config(fixture_config("qwen2_moe") | {"num_experts": 0})
    assert dense.num_experts == 0 and dense.dense_layers == () and dense.qkv_bias
    assert hf_config.family_for(dense) == "qwen2"


@pytest.mark.parametrize("name", PER_EXPERT)
def test_hub_style_configs_read_as_transformers_5_saves_them(name):
    """The hub's files (transformers 4) spell the RoPE theta `rope_theta`, the dtype `torch_dtype`, a Qwen3-MoE's
    expert count `num_experts`, and carry `rope_scaling: null` and Qwen's `max_window_layers`."""
    hf = {k: v for k, v in fixture_config(name).items() if k not in ("rope_parameters", "dtype", "layer_types")}
    hf |= {"rope_theta": 1e6, "torch_dtype": "float32", "rope_scaling": None}
    if name != "mixtral":
        hf["max_window_layers"] = 28
    if name == "qwen3_moe":
        hf["num_experts"] = hf.pop("num_local_experts")
    assert hf_config.to_model_config(hf) == hf_config.to_model_config(fixture_config(name))


def test_a_mixtral_sliding_window_is_read_and_written():
    cfg = hf_config.to_model_config(fixture_config("mixtral") | {"sliding_window": 8})
    assert cfg.sliding_window == 8
    assert hf_config.from_model_config(cfg)["sliding_window"] == 8


def test_a_missing_key_takes_transformers_default():
    """Mixtral's rope_theta default is 1e6 and its rms_norm_eps 1e-5 (the Qwen MoEs': 1e4 and 1e-6)."""
    hf = {k: v for k, v in fixture_config("mixtral").items() if k not in ("rope_parameters", "rms_norm_eps")}
    cfg = hf_config.to_model_config(hf)
    assert cfg.rope_base == 1e6 and cfg.norm_epsilon == 1e-5
    hf = {k: v for k, v in fixture_config("qwen3_moe").items() if k not in ("rope_parameters", "router_aux_loss_coef")}
    cfg = hf_config.to_model_config(hf)
    assert cfg.rope_base == 1e4 and cfg.router_aux_loss_coef == 0.001


def stacked(tensors: dict) -> None:
    """Rewrites per-expert tensors into transformers 5's in-memory layout (`save_original_format=False`):
    `mlp.gate.weight` [E, D], `mlp.experts.gate_up_proj` [E, 2F, D], `mlp.experts.down_proj` [E, D, F]."""
    layers = sorted({m[1] for k in tensors if (m := re.match(r"(model\.layers\.\d+)\.\w+\.experts\.0\.", k))})
    for m in layers:
        moe = f"{m}.block_sparse_moe" if f"{m}.block_sparse_moe.gate.weight" in tensors else f"{m}.mlp"
        names = ("w1", "w3", "w2") if moe.endswith("block_sparse_moe") else ("gate_proj", "up_proj", "down_proj")
        E = sum(1 for k in tensors if k.startswith(f"{moe}.experts.") and k.endswith(f".{names[0]}.weight"))
        gate, up, down = ([tensors.pop(f"{moe}.experts.{e}.{n}.weight") for e in range(E)] for n in names)
        tensors[f"{m}.mlp.gate.weight"] = tensors.pop(f"{moe}.gate.weight")
        tensors[f"{m}.mlp.experts.gate_up_proj"] = np.concatenate([np.stack(gate), np.stack(up)], axis=1)
        tensors[f"{m}.mlp.experts.down_proj"] = np.stack(down)


@pytest.mark.parametrize("name", PER_EXPERT)
def test_the_stacked_layout_loads_to_the_same_parameters(name, tmp_path):
    d = copy_fixture(name, tmp_path)
    rewrite_tensors(d, stacked)
    assert "model.layers.0.mlp.experts.gate_up_proj" in load_file(d / "model.safetensors")
    for a, b in zip(params(load(name)), params(pretrained.from_pretrained(d)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_jaxformer_mixture_of_experts_saves_and_loads_bit_exactly(tmp_path):
    """A model jaxformer built (random init, expert_d_ff None, dense layers, a shared expert) comes back the same."""
    cfg = ModelConfig(
        vocab_size=64,
        num_layers=3,
        max_len=32,
        d_model=16,
        num_heads=2,
        d_ff=24,
        positional="rope",
        rope_interleaved=False,
        norm="rmsnorm",
        activation="swiglu",
        use_bias=False,
        qkv_bias=True,
        tie_embeddings=False,
        num_experts=3,
        experts_per_token=2,
        shared_expert_d_ff=8,
        router_normalize=False,
        dense_layers=(0,),
    )
    model = GPT(cfg, rngs=nnx.Rngs(0))
    out = pretrained.save_pretrained(model, tmp_path / "qwen2_moe")
    hf = json.loads((pathlib.Path(out) / "config.json").read_text())
    assert hf["architectures"] == ["Qwen2MoeForCausalLM"] and hf["mlp_only_layers"] == [0]
    again = pretrained.from_pretrained(out)
    assert (again.config.expert_d_ff, again.config.shared_expert_d_ff, again.config.dense_layers) == (24, 8, (0,))
    assert not again.config.router_normalize and again.config.router_aux_loss_coef == cfg.router_aux_loss_coef
    for a, b in zip(params(model), params(again), strict=True):
        np.testing.assert_array_equal(a, b)


# -- refusals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "changes", "message"),
    [
        ("mixtral", {"router_jitter_noise": 0.1}, r"router_jitter_noise=0\.1 is not supported.*expected 0"),
        ("mixtral", {"num_experts": 8}, r"num_experts=8 and num_local_experts=4 disagree"),
        ("mixtral", {"num_experts_per_tok": 5}, r"num_experts_per_tok=5 is not supported; .* an int in \[1, 4\]"),
        ("mixtral", {"attention_bias": True}, r"keys jaxformer does not support: \['attention_bias'\]"),
        ("qwen2_moe", {"num_local_experts": 4}, r"keys jaxformer does not support: \['num_local_experts'\]"),
        ("qwen2_moe", {"use_sliding_window": True}, r"use_sliding_window=True is not supported for qwen2_moe"),
        ("qwen3_moe", {"decoder_sparse_step": 0}, r"decoder_sparse_step=0 is not supported; .* an int >= 1"),
        ("qwen3_moe", {"mlp_only_layers": "1"}, r"mlp_only_layers='1' is not supported; .* a list of layer indices"),
        ("qwen3_moe", {"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported for qwen3_moe models"),
    ],
)
def test_an_unsupported_config_is_refused_by_name(name, changes, message, tmp_path):
    d = copy_fixture(name, tmp_path)
    edit_config(d, **changes)
    with pytest.raises(ValueError, match=message):
        pretrained.from_pretrained(d)


def test_a_missing_expert_tensor_is_named(tmp_path):
    d = copy_fixture("qwen3_moe", tmp_path)
    rewrite_tensors(d, lambda t: t.pop("model.layers.2.mlp.experts.3.up_proj.weight"))
    with pytest.raises(ValueError, match=r"lacks tensor 'model.layers.2.mlp.experts.3.up_proj.weight'"):
        pretrained.from_pretrained(d)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(capacity_factor=1.25), r"capacity_factor=1\.25 \(transformers computes every expert assignment"),
        (dict(router="topk_softmax"), r"router='topk_softmax', router_bias=False"),
        (dict(router_normalize=False), r"Mixtral's, which has no attention biases .*router_normalize=False"),
        (dict(num_layers=2, dense_layers=(1,)), r"dense_layers=\(1,\)"),
    ],
)
def test_save_refuses_a_mixture_of_experts_no_architecture_computes(changes, message, tmp_path):
    cfg = load("mixtral").config.replace(**changes)
    with pytest.raises(ValueError, match=f"No Hugging Face architecture computes this ModelConfig: .*{message}"):
        hf_config.from_model_config(cfg)


# -- GPT-OSS ----------------------------------------------------------------------------------------------------


def test_the_gpt_oss_config_reads_what_it_needs():
    """Sinks, q/k/v/o biases, [sliding, full] layers with window 4 sharing one YaRN RoPE, the router's top-k of its
    biased logits then softmax, expert biases and the clamped SwiGLU with the file's limit / alpha."""
    model = load("gpt_oss")
    cfg = model.config
    assert (cfg.num_experts, cfg.experts_per_token, cfg.d_ff, cfg.expert_d_ff, cfg.dense_layers) == (4, 2, 16, None, ())
    assert cfg.router == "topk_softmax" and cfg.router_bias and cfg.expert_bias and cfg.capacity_factor is None
    assert (cfg.expert_activation, cfg.swiglu_limit, cfg.swiglu_alpha) == ("gptoss_swiglu", 3.0, 1.5)
    assert cfg.attention_sinks and cfg.qkv_bias and cfg.out_bias and not cfg.qk_norm and not cfg.mlp_bias
    assert (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (32, 4, 2, 8)
    assert cfg.layer_types == ("local", "global") and cfg.sliding_window == 4 and cfg.max_len == 32768
    yarn = RopeScaling("yarn", factor=32.0, original_max_len=1024, beta_fast=32.0, beta_slow=1.0, truncate=False)
    assert cfg.rope_base == 150000.0 and cfg.rope_scaling == yarn and cfg.rope_scaling.attention_factor is None
    assert cfg.local_rope_scaling == yarn and cfg.local_rope_base is None  # the sliding layers turn alike
    assert cfg.norm == "rmsnorm" and cfg.norm_epsilon == 1e-5 and not cfg.tie_embeddings and not cfg.embed_scale
    assert cfg.router_aux_loss_coef == 0.9
    layer = model.blocks.layers[1]
    assert layer.self_attention.sinks[...].shape == (4,) and np.abs(np.asarray(layer.self_attention.sinks[...])).min()
    assert layer.ffn.b_gate[...].shape == (4, 16) and layer.ffn.b_down[...].shape == (4, 32)


def test_gpt_oss_gate_and_up_are_interleaved_in_gate_up_proj():
    """gate = gate_up_proj[..., ::2], up = gate_up_proj[..., 1::2] (weights and biases); down_proj is x @ W."""
    tensors = load_file(FIXTURES / "gpt_oss" / "model.safetensors")
    ffn = load("gpt_oss").blocks.layers[0].ffn
    e = "model.layers.0.mlp.experts"
    np.testing.assert_array_equal(np.asarray(ffn.w_gate[...]), np.asarray(tensors[f"{e}.gate_up_proj"])[..., ::2])
    np.testing.assert_array_equal(np.asarray(ffn.w_up[...]), np.asarray(tensors[f"{e}.gate_up_proj"])[..., 1::2])
    np.testing.assert_array_equal(np.asarray(ffn.b_up[...]), np.asarray(tensors[f"{e}.gate_up_proj_bias"])[..., 1::2])
    np.testing.assert_array_equal(np.asarray(ffn.w_down[...]), np.asarray(tensors[f"{e}.down_proj"]))
    router = np.asarray(tensors["model.layers.0.mlp.router.weight"])
    np.testing.assert_array_equal(np.asarray(ffn.router[...]), router.T)


def test_the_gpt_oss_config_round_trips():
    """config.json -> ModelConfig -> config.json -> the same ModelConfig, with GPT-OSS's own keys and its YaRN
    parameters written back as the fixture has them."""
    hf = fixture_config("gpt_oss")
    cfg = hf_config.to_model_config(hf)
    written = hf_config.from_model_config(cfg)
    assert hf_config.to_model_config(written) == cfg
    assert written["architectures"] == ["GptOssForCausalLM"] and written["model_type"] == "gpt_oss"
    same = (
        "num_local_experts",
        "num_experts_per_tok",
        "intermediate_size",
        "swiglu_limit",
        "swiglu_alpha",
        "attention_bias",
        "layer_types",
        "sliding_window",
        "router_aux_loss_coef",
        "head_dim",
        "rms_norm_eps",
        "rope_parameters",
        "tie_word_embeddings",
        "max_position_embeddings",
    )
    assert {k: written[k] for k in same} == {k: hf[k] for k in same}
    assert not {"num_experts", "moe_intermediate_size", "norm_topk_prob", "mlp_bias"} & set(written)


def gpt_oss_hub_config() -> dict:
    """The fixture's config as the hub's GPT-OSS files spell it (transformers 4.55): `rope_scaling` + `rope_theta`,
    `torch_dtype`, OpenAI's `experts_per_token` and `initial_context_length`."""
    hf = {k: v for k, v in fixture_config("gpt_oss").items() if k not in ("rope_parameters", "dtype")}
    rope = dict(fixture_config("gpt_oss")["rope_parameters"])
    hf |= {"rope_theta": rope.pop("rope_theta"), "rope_scaling": rope, "torch_dtype": "float32"}
    return hf | {"experts_per_token": 2, "initial_context_length": 1024}


def test_a_hub_style_gpt_oss_config_reads_the_same():
    assert hf_config.to_model_config(gpt_oss_hub_config()) == load("gpt_oss").config
    # transformers' defaults where the file says nothing: alternating sliding / full layers from layer 0
    hf = {k: v for k, v in gpt_oss_hub_config().items() if k != "layer_types"}
    assert hf_config.to_model_config(hf).layer_types == ("local", "global")


def test_gpt_oss_defaults_are_transformers():
    """GptOssConfig's defaults: YaRN (factor 32, beta 32 / 1, truncate False, original 4096) at theta 150000 when
    neither rope_parameters nor rope_scaling is given (only rope_theta: the same YaRN at that theta), head_dim 64,
    attention_bias True, window 128, swiglu 7 / 1.702, 128 experts top-4, router_aux_loss_coef 0.001."""
    drop = ("rope_parameters", "head_dim", "attention_bias", "sliding_window", "swiglu_limit", "swiglu_alpha")
    drop += ("num_local_experts", "num_experts_per_tok", "router_aux_loss_coef", "rms_norm_eps")
    hf = {k: v for k, v in fixture_config("gpt_oss").items() if k not in drop}
    cfg = hf_config.to_model_config(hf)
    yarn = RopeScaling("yarn", factor=32.0, original_max_len=4096, beta_fast=32.0, beta_slow=1.0, truncate=False)
    assert cfg.rope_base == 150000.0 and cfg.rope_scaling == cfg.local_rope_scaling == yarn
    assert cfg.head_dim == 64 and cfg.qkv_bias and cfg.out_bias and cfg.sliding_window == 128
    assert (cfg.swiglu_limit, cfg.swiglu_alpha, cfg.num_experts, cfg.experts_per_token) == (7.0, 1.702, 128, 4)
    assert cfg.router_aux_loss_coef == 0.001 and cfg.norm_epsilon == 1e-5
    assert hf_config.to_model_config(hf | {"rope_theta": 1e4}).rope_scaling == yarn
    assert hf_config.to_model_config(hf | {"rope_theta": 1e4}).rope_base == 1e4
    default = {"rope_type": "default", "rope_theta": 1e4}  # given rope_parameters are read as they are
    assert hf_config.to_model_config(hf | {"rope_parameters": default}).rope_scaling is None
    assert hf_config.to_model_config(hf | {"num_experts": 6}).num_experts == 6  # transformers' attribute_map


def test_gpt_oss_layer_types_all_full_or_all_sliding():
    """Only full layers: no window; only sliding ones: every layer windowed (no layer_types). Either writes the
    layer_types back, and a window transformers needs even when no layer uses it."""
    hf = fixture_config("gpt_oss")
    full = hf_config.to_model_config(hf | {"layer_types": ["full_attention"] * 2})
    assert full.layer_types is None and full.sliding_window is None and full.local_rope_scaling is None
    written = hf_config.from_model_config(full)
    assert written["layer_types"] == ["full_attention"] * 2 and written["sliding_window"] == 128
    assert hf_config.to_model_config(written) == full
    sliding = hf_config.to_model_config(hf | {"layer_types": ["sliding_attention"] * 2})
    assert sliding.layer_types is None and sliding.sliding_window == 4
    written = hf_config.from_model_config(sliding)
    assert written["layer_types"] == ["sliding_attention"] * 2 and written["sliding_window"] == 4
    assert hf_config.to_model_config(written) == sliding


@pytest.mark.parametrize(
    ("rope", "expected"),
    [
        # attention_factor from mscale / mscale_all_dim as transformers computes it (both given), else the default
        (dict(mscale=2.0, mscale_all_dim=1.0), (0.2 * np.log(32) + 1) / (0.1 * np.log(32) + 1)),
        (dict(mscale=2.0), None),
        (dict(attention_factor=1.5, mscale=2.0, mscale_all_dim=1.0), 1.5),
        (dict(beta_fast=None, beta_slow=0), None),  # transformers' `or 32` / `or 1`
    ],
)
def test_yarn_parameters_read_as_transformers_computes_them(rope, expected):
    base = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 32.0, "original_max_position_embeddings": 1024}
    cfg = hf_config.to_model_config(fixture_config("gpt_oss") | {"rope_parameters": base | rope})
    scaling = cfg.rope_scaling
    assert (scaling.beta_fast, scaling.beta_slow, scaling.truncate) == (32.0, 1.0, True)
    if expected is None:
        assert scaling.attention_factor is None
    else:
        np.testing.assert_allclose(scaling.attention_factor, expected, rtol=1e-12)
    written = hf_config.from_model_config(cfg)["rope_parameters"]
    assert (
        not {"mscale", "mscale_all_dim"} & set(written)
        and hf_config.to_model_config(fixture_config("gpt_oss") | {"rope_parameters": written}) == cfg
    )


def test_a_llama_yarn_rope_reads_and_writes():
    """YaRN is read for every Llama-family file (Qwen2.5's long-context configs: legacy `type`)."""
    rope = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}
    hf = {k: v for k, v in fixture_config("qwen3_moe").items() if k != "rope_parameters"}
    cfg = hf_config.to_model_config(hf | {"rope_scaling": rope, "rope_theta": 1e6})
    assert cfg.rope_scaling == RopeScaling("yarn", factor=4.0, original_max_len=16) and cfg.rope_base == 1e6
    written = hf_config.from_model_config(cfg)["rope_parameters"]
    assert written == {
        "rope_type": "yarn",
        "rope_theta": 1e6,
        "factor": 4.0,
        "original_max_position_embeddings": 16,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": True,
    }


def test_a_jaxformer_gpt_oss_model_saves_and_loads_bit_exactly(tmp_path):
    """A GPT-OSS model jaxformer built (random init, sinks and biases drawn non-zero) is written in transformers'
    layout, gate / up interleaved, and comes back the same."""
    cfg = hf_config.to_model_config(fixture_config("gpt_oss"))
    cfg = cfg.replace(num_layers=3, layer_types=None, local_rope_scaling=None, expert_d_ff=8)
    model = GPT(cfg, rngs=nnx.Rngs(1))
    state = nnx.state(model, nnx.Param)
    leaves = jax.tree.leaves(state)
    keys = jax.random.split(jax.random.key(0), len(leaves))
    nnx.update(
        model,
        jax.tree.unflatten(
            jax.tree.structure(state),
            [leaf + 0.1 * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys, strict=True)],
        ),
    )
    out = pathlib.Path(pretrained.save_pretrained(model, tmp_path / "gpt_oss"))
    hf = json.loads((out / "config.json").read_text())
    assert hf["layer_types"] == ["sliding_attention"] * 3 and hf["intermediate_size"] == 8
    written = load_file(out / "model.safetensors")
    ffn = model.blocks.layers[2].ffn
    gate_up = np.asarray(written["model.layers.2.mlp.experts.gate_up_proj"])
    assert gate_up.shape == (4, 32, 16)
    np.testing.assert_array_equal(gate_up[..., ::2], np.asarray(ffn.w_gate[...]))
    np.testing.assert_array_equal(gate_up[..., 1::2], np.asarray(ffn.w_up[...]))
    bias = np.asarray(written["model.layers.2.mlp.experts.gate_up_proj_bias"])
    np.testing.assert_array_equal(bias[..., ::2], np.asarray(ffn.b_gate[...]))
    again = pretrained.from_pretrained(out)
    assert again.config == cfg.replace(d_ff=8, expert_d_ff=None)
    for a, b in zip(params(model), params(again), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported for gpt_oss models"),
        (
            {"quantization_config": {"quant_method": "mxfp4"}},
            r"quantization_config \(quant_method='mxfp4'\) is not supported; .* MXFP4: dequantize",
        ),
        ({"experts_per_token": 4}, r"experts_per_token=4 and num_experts_per_tok=2 disagree"),
        ({"num_local_experts": 4, "num_experts": 8}, r"num_experts=8 and num_local_experts=4 disagree"),
        ({"num_experts_per_tok": 5}, r"num_experts_per_tok=5 is not supported; .* an int in \[1, 4\]"),
        ({"layer_types": ["sliding_attention", "chunked_attention"]}, r"layer_types=\[.*\] is not supported"),
        ({"layer_types": ["sliding_attention"]}, r"layer_types=\['sliding_attention'\] is not supported.*\(2 layers\)"),
        ({"sliding_window": 0}, r"sliding_window=0 is not supported; jaxformer expects an int >= 1"),
        ({"use_sliding_window": True}, r"keys jaxformer does not support: \['use_sliding_window'\]"),
        ({"mlp_bias": False}, r"keys jaxformer does not support: \['mlp_bias'\]"),
    ],
)
def test_an_unsupported_gpt_oss_config_is_refused_by_name(changes, message, tmp_path):
    d = copy_fixture("gpt_oss", tmp_path)
    edit_config(d, **changes)
    with pytest.raises(ValueError, match=message):
        pretrained.from_pretrained(d)


YARN = {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 1024}


@pytest.mark.parametrize(
    ("rope", "message"),
    [
        (YARN | {"partial_rotary_factor": 0.5}, r"rope parameters \['partial_rotary_factor'\] are not supported for "),
        (YARN | {"factor": None}, r"rope parameter factor=None is not supported for rope_type 'yarn'"),
        ({"rope_type": "yarn", "factor": 4.0}, r"original_max_position_embeddings=None is not supported"),
        (YARN | {"truncate": "no"}, r"rope parameter truncate='no' is not supported; expected a bool"),
        ({"rope_type": "longrope", "factor": 4.0}, r"rope_type='longrope' is not supported; .* proportional, yarn"),
    ],
)
def test_an_unsupported_rope_is_refused_by_name(rope, message):
    with pytest.raises(ValueError, match=message):
        hf_config.to_model_config(fixture_config("gpt_oss") | {"rope_parameters": rope})


def test_a_missing_sink_is_named(tmp_path):
    d = copy_fixture("gpt_oss", tmp_path)
    rewrite_tensors(d, lambda t: t.pop("model.layers.1.self_attn.sinks"))
    with pytest.raises(ValueError, match=r"lacks tensor 'model.layers.1.self_attn.sinks'"):
        pretrained.from_pretrained(d)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(attention_sinks=False), r"attention_sinks=False, expert_bias=True, .*\(GPT-OSS has all three"),
        (dict(router="softmax_topk"), r"router='softmax_topk', router_bias=True \(GPT-OSS routes topk_softmax"),
        (dict(capacity_factor=2.0), r"capacity_factor=2\.0 \(transformers computes every expert assignment"),
        (dict(dense_layers=(1,)), r"dense_layers=\(1,\).* every layer a mixture of experts"),
        (dict(out_bias=False), r"qkv_bias=True, out_bias=False, qk_norm=False \(GPT-OSS: one attention_bias"),
        (dict(local_rope_scaling=None), r"local_rope_scaling=None \(GPT-OSS turns every layer with the one RoPE"),
        (dict(local_rope_base=1e4), r"local_rope_base=10000\.0, .* one RoPE"),
        (dict(activation="geglu"), r"expert_activation='gptoss_swiglu' \(GPT-OSS's\) outside a rope, rmsnorm"),
        (dict(num_experts=0, dense_layers=()), r"num_experts=0, dense_layers=\(\)"),
    ],
)
def test_save_refuses_a_gpt_oss_no_architecture_computes(changes, message):
    cfg = load("gpt_oss").config.replace(**changes)
    with pytest.raises(ValueError, match=f"No Hugging Face architecture computes this ModelConfig: .*{message}"):
        hf_config.from_model_config(cfg)


# -- against transformers itself (slow) --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", MOES)
def test_transformers_loads_what_jaxformer_saves(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    out = pretrained.save_pretrained(load(name), tmp_path / name)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(model).__name__ == fixture_config(name)["architectures"][0]
    ref = reference(name)
    with torch.no_grad():
        logits = model(torch.as_tensor(ref["input_ids"]).long()).logits.numpy()
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)
    original = transformers.AutoModelForCausalLM.from_pretrained(FIXTURES / name)
    theirs, ours = original.state_dict(), model.state_dict()
    assert sorted(theirs) == sorted(ours)
    for key, value in theirs.items():
        assert torch.equal(value, ours[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("name", MOES)
def test_the_load_balancing_loss_equals_transformers_computing_it(name):
    """transformers run here (output_router_logits=True, with labels, so that it also adds the loss): its unscaled
    `aux_loss` over the sparse layers equals `router_losses()`'s moe_balance_loss, without and with padding."""
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    theirs = AutoModelForCausalLM.from_pretrained(FIXTURES / name).eval()
    ref = reference(name)
    ids = torch.as_tensor(ref["input_ids"]).long()
    model = load(name)
    for mask in (None, ref["aux_mask"]):
        attention = None if mask is None else torch.as_tensor(mask).long()
        with torch.no_grad():
            out = theirs(ids, attention_mask=attention, labels=ids, output_router_logits=True)
        assert len(out.router_logits) == sum(map(model.config.is_sparse, range(model.config.num_layers)))
        np.testing.assert_allclose(balance_loss(model, ref["input_ids"], mask), out.aux_loss.item(), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", PER_EXPERT)
def test_the_stacked_layout_transformers_writes_loads(name, tmp_path):
    """`save_pretrained(save_original_format=False)` writes the experts as transformers holds them (stacked)."""
    transformers = pytest.importorskip("transformers")
    original = transformers.AutoModelForCausalLM.from_pretrained(FIXTURES / name)
    original.save_pretrained(tmp_path / name, save_original_format=False)
    written = io.tensor_files(str(tmp_path / name))
    assert "model.layers.0.mlp.experts.gate_up_proj" in written and not any(".experts.0." in k for k in written)
    for a, b in zip(params(load(name)), params(pretrained.from_pretrained(tmp_path / name)), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize(
    "rope",
    [
        {},  # the fixture's: truncate False
        {"truncate": True},
        {"mscale": 2.0, "mscale_all_dim": 1.0},
        {"mscale": 2.0},
        {"attention_factor": 1.5, "beta_fast": 16.0, "beta_slow": 2.0},
        {"beta_fast": None, "beta_slow": 0, "truncate": True},
    ],
)
def test_yarn_frequencies_and_attention_factor_equal_transformers(rope):
    """jaxformer's RopeScaling('yarn') from a config's rope_parameters turns at transformers' inv_freq and scales
    cos / sin by its attention_scaling (`_compute_yarn_parameters` on the same GptOssConfig)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = fixture_config("gpt_oss")
    hf = hf | {"rope_parameters": hf["rope_parameters"] | rope}
    inv_freq, attention = ROPE_INIT_FUNCTIONS["yarn"](transformers.GptOssConfig.from_dict(hf))
    cfg = hf_config.to_model_config(hf)
    ours = rope_frequencies(cfg.head_dim, base=cfg.rope_base, scaling=cfg.rope_scaling)
    np.testing.assert_allclose(ours, inv_freq.numpy(), rtol=1e-6)
    np.testing.assert_allclose(cfg.rope_scaling.attention_scaling, attention, rtol=1e-12)


@pytest.mark.slow
def test_transformers_gpt_oss_configs_read_with_every_key_accounted_for(tmp_path):
    """The config.json transformers writes for GptOssConfig's defaults reads (no key refused) to those defaults, and
    transformers reads the hub-style spelling to the fixture's RoPE, as jaxformer does."""
    transformers = pytest.importorskip("transformers")
    small = dict(vocab_size=96, hidden_size=32, num_hidden_layers=4, num_attention_heads=8, intermediate_size=16)
    transformers.GptOssConfig(**small).save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text()) | {"architectures": ["GptOssForCausalLM"]}
    cfg = hf_config.to_model_config(hf)
    yarn = RopeScaling("yarn", factor=32.0, original_max_len=4096, beta_fast=32.0, beta_slow=1.0, truncate=False)
    assert cfg.rope_scaling == yarn and cfg.rope_base == 150000.0 and cfg.head_dim == 64
    assert cfg.layer_types == ("local", "global") * 2 and cfg.sliding_window == 128
    assert (cfg.num_experts, cfg.experts_per_token, cfg.swiglu_limit, cfg.swiglu_alpha) == (128, 4, 7.0, 1.702)
    hub = transformers.GptOssConfig.from_dict(gpt_oss_hub_config())
    assert hub.rope_parameters == fixture_config("gpt_oss")["rope_parameters"]
