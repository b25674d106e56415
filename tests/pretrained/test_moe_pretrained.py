"""Mixtral, Qwen2-MoE and Qwen3-MoE checkpoints in and out, against tiny fixtures that `transformers` made
(experiments/make_pretrained_fixtures.py): logits, greedy generation, the load-balancing loss, save -> load (in
the per-expert layout transformers saves; the stacked layout it holds in memory loads too), the config keys of
each family, and every refusal."""

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

MOES = ["mixtral", "qwen2_moe", "qwen3_moe"]

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
    """The tensors written are transformers' own, names and values: one Linear per expert, as it saves them."""
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


@pytest.mark.parametrize("name", MOES)
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


@pytest.mark.parametrize("name", MOES)
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


@pytest.mark.parametrize("name", MOES)
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
@pytest.mark.parametrize("name", MOES)
def test_the_stacked_layout_transformers_writes_loads(name, tmp_path):
    """`save_pretrained(save_original_format=False)` writes the experts as transformers holds them (stacked)."""
    transformers = pytest.importorskip("transformers")
    original = transformers.AutoModelForCausalLM.from_pretrained(FIXTURES / name)
    original.save_pretrained(tmp_path / name, save_original_format=False)
    written = io.tensor_files(str(tmp_path / name))
    assert "model.layers.0.mlp.experts.gate_up_proj" in written and not any(".experts.0." in k for k in written)
    for a, b in zip(params(load(name)), params(pretrained.from_pretrained(tmp_path / name)), strict=True):
        np.testing.assert_array_equal(a, b)
