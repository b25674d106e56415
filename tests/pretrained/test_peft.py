"""LoRA adapters in peft's layout, against adapters that `peft` made (experiments/make_lora_fixtures.py): logits of
base + adapter equal peft's, save -> load is bit-exact and rewrites peft's tensors, merging equals peft's
merge_and_unload, and what jaxformer cannot compute is refused by the name the file gives it. The slow tests run
peft and transformers themselves on what jaxformer writes."""

import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from jaxformer import lora, pretrained

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
ADAPTERS = ["gpt2_all", "llama_all", "llama_qv_rslora", "llama_patterns", "gemma2_all", "qwen2_all"]


@functools.cache
def reference(name: str) -> dict:
    ref = np.load(FIXTURES / "lora" / name / "reference.npz")
    return {**{k: ref[k] for k in ref.files if k != "meta"}, "meta": json.loads(str(ref["meta"]))}


def base_of(name: str) -> pathlib.Path:
    return FIXTURES / "pretrained" / reference(name)["meta"]["base"]


def adapter_of(name: str) -> pathlib.Path:
    return FIXTURES / "lora" / name / "adapter"


@functools.cache
def loaded(name: str):
    return pretrained.from_pretrained(base_of(name), adapter=adapter_of(name))


def logits(model, name: str) -> np.ndarray:
    return np.asarray(model(jnp.asarray(reference(name)["input_ids"])))


def copy_adapter(name: str, tmp_path) -> pathlib.Path:
    out = tmp_path / name
    shutil.copytree(adapter_of(name), out)
    return out


@pytest.mark.parametrize("name", ADAPTERS)
def test_base_plus_peft_adapter_equals_peft(name):
    ref = reference(name)
    np.testing.assert_allclose(logits(loaded(name), name), ref["logits"], atol=1e-4, rtol=0)
    # the adapter binds: without it the logits are the base's, far from peft's
    assert np.abs(ref["logits"] - ref["base_logits"]).max() > 1e-1


@pytest.mark.parametrize("name", ADAPTERS)
def test_parameter_counts_equal_peft(name):
    """Every adapter holds rank x (in + out) parameters: the sizes of the tensors peft wrote (GPT-2's c_attn: one
    A shared by q, k and v)."""
    tensors = load_file(adapter_of(name) / "adapter_model.safetensors")
    assert lora.count(loaded(name)) == sum(t.size for t in tensors.values())
    assert len(list(lora.adapters(loaded(name)))) == len(tensors) // 2


def test_per_module_ranks_alphas_and_rslora_are_applied():
    model = loaded("llama_patterns")
    by_name = {path.rpartition("/")[2]: adapter for path, *_, adapter in lora.adapters(model)}
    assert by_name["w_out"].rank == 2 and by_name["w_out"].scale == 8 / 2  # rank_pattern {"down_proj": 2}
    assert by_name["w_o"].alpha == 16 and by_name["w_o"].scale == 16 / 4  # alpha_pattern {"o_proj": 16}
    assert by_name["w_q"].scale == 8 / 4
    rslora = {path.rpartition("/")[2]: a for path, *_, a in lora.adapters(loaded("llama_qv_rslora"))}
    assert set(rslora) == {"w_q", "w_v"} and rslora["w_q"].scale == pytest.approx(4 / np.sqrt(2))


@pytest.mark.parametrize("name", ["gpt2_all", "llama_patterns", "gemma2_all"])
def test_save_then_load_is_bit_exact_and_rewrites_peft_tensors(name, tmp_path):
    model = loaded(name)
    out = lora.save_adapter(model, tmp_path / "out", base_model_name_or_path=str(base_of(name)))
    theirs = load_file(adapter_of(name) / "adapter_model.safetensors")
    ours = load_file(pathlib.Path(out) / "adapter_model.safetensors")
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(ours[key], value, err_msg=key)
    again = pretrained.from_pretrained(base_of(name), adapter=out)
    np.testing.assert_array_equal(logits(again, name), logits(model, name))
    config = json.loads((pathlib.Path(out) / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["fan_in_fan_out"] == (name == "gpt2_all")
    if name == "llama_patterns":  # per-module exceptions by full module name
        assert set(config["rank_pattern"].values()) == {2} and set(config["alpha_pattern"].values()) == {16}


@pytest.mark.parametrize("name", ["gpt2_all", "llama_patterns"])
def test_merge_equals_peft_merge_and_unload(name):
    model = pretrained.from_pretrained(base_of(name), adapter=adapter_of(name))
    lora.merge(model)
    assert not list(lora.adapters(model))
    np.testing.assert_allclose(logits(model, name), reference(name)["merged_logits"], atol=1e-4, rtol=0)


def test_what_jaxformer_cannot_compute_is_refused_by_name(tmp_path):
    llama = FIXTURES / "pretrained" / "llama"
    with pytest.raises(ValueError, match=r"use_dora=True \(DoRA"):
        pretrained.from_pretrained(llama, adapter=adapter_of("llama_dora"))
    for key, value in [("bias", "all"), ("modules_to_save", ["lm_head"]), ("peft_type", "IA3")]:
        out = copy_adapter("llama_all", tmp_path / key)
        config = json.loads((out / "adapter_config.json").read_text())
        (out / "adapter_config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(ValueError, match=re.escape(f"{key}={value!r}")):
            pretrained.from_pretrained(llama, adapter=out)
    # DoRA's magnitudes in the file alone are named too
    out = copy_adapter("llama_dora", tmp_path / "magnitudes")
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "use_dora": False}))
    with pytest.raises(ValueError, match=r"lora_magnitude_vector"):
        pretrained.from_pretrained(llama, adapter=out)


def rewrite_tensors(name: str, tmp_path, change) -> pathlib.Path:
    out = copy_adapter(name, tmp_path)
    tensors = load_file(out / "adapter_model.safetensors")
    change(tensors)
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    return out


def test_bad_tensors_are_named(tmp_path):
    llama = FIXTURES / "pretrained" / "llama"
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    missing = rewrite_tensors("llama_all", tmp_path / "missing", lambda t: t.pop(f"{q}.lora_B.weight"))
    with pytest.raises(ValueError, match=rf"lacks tensor {q}\.lora_B\.weight"):
        pretrained.from_pretrained(llama, adapter=missing)

    def wrong_in(t):
        t[f"{q}.lora_A.weight"] = np.zeros((4, 23), np.float32)

    wrong = rewrite_tensors("llama_all", tmp_path / "shape", wrong_in)
    with pytest.raises(ValueError, match=r"lora_A \(4, 23\).* needs \[4, 24\]"):
        pretrained.from_pretrained(llama, adapter=wrong)

    def rank_3(t):
        t[f"{q}.lora_A.weight"] = np.zeros((3, 24), np.float32)
        t[f"{q}.lora_B.weight"] = np.zeros((24, 3), np.float32)

    mismatch = rewrite_tensors("llama_all", tmp_path / "rank", rank_3)
    with pytest.raises(ValueError, match=r"has rank 3, but adapter_config\.json gives .*q_proj' rank 4"):
        pretrained.from_pretrained(llama, adapter=mismatch)

    def unknown(t):
        t["base_model.model.lm_head.lora_A.weight"] = np.zeros((4, 24), np.float32)
        t["base_model.model.lm_head.lora_B.weight"] = np.zeros((352, 4), np.float32)

    head = rewrite_tensors("llama_all", tmp_path / "head", unknown)
    with pytest.raises(ValueError, match=r"adapts 'lm_head', which is not a linear layer jaxformer adapts"):
        pretrained.from_pretrained(llama, adapter=head)
    with pytest.raises(FileNotFoundError, match=r"llama/adapter_config\.json does not exist"):  # not an adapter
        pretrained.from_pretrained(llama, adapter=llama)


def test_an_adapter_hub_id_downloads_through_huggingface_hub(tmp_path):
    """A stand-in hub on 127.0.0.1 serves the base and the adapter; only the adapter's two files are fetched for
    it (tests/pretrained/hub_server.py)."""
    from tests.pretrained.hub_server import HubServer

    script = f"""
import numpy as np
from jaxformer import pretrained
ref = np.load("{FIXTURES}/lora/llama_all/reference.npz")
model = pretrained.from_pretrained("someone/tiny-llama", adapter="someone/tiny-llama-lora")
print(float(np.abs(np.asarray(model(ref["input_ids"])) - ref["logits"]).max()))
"""
    repos = {
        "someone/tiny-llama": str(FIXTURES / "pretrained" / "llama"),
        "someone/tiny-llama-lora": str(adapter_of("llama_all")),
    }
    with HubServer(repos) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path), "HF_HUB_DISABLE_XET": "1"}
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
        assert float(out.stdout.split()[-1]) < 1e-4
        fetched = {path for method, path in hub.requests if method == "GET" and "tiny-llama-lora/resolve" in path}
        assert {p.rpartition("/")[2] for p in fetched} == {"adapter_config.json", "adapter_model.safetensors"}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2_all", "llama_patterns", "gemma2_all"])
def test_peft_loads_what_jaxformer_saves_and_transformers_loads_the_merge(name, tmp_path):
    """peft.PeftModel.from_pretrained(transformers base, jaxformer's adapter) gives peft's logits; jaxformer's merged
    save_pretrained loads in transformers equal to peft's merge_and_unload()."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    model = pretrained.from_pretrained(base_of(name), adapter=adapter_of(name))
    out = lora.save_adapter(model, tmp_path / "adapter")
    ids = torch.as_tensor(reference(name)["input_ids"]).long()
    base = transformers.AutoModelForCausalLM.from_pretrained(base_of(name), dtype=torch.float32)
    with torch.no_grad():
        theirs = peft.PeftModel.from_pretrained(base, out).eval()
        np.testing.assert_allclose(theirs(ids).logits.numpy(), reference(name)["logits"], atol=1e-4, rtol=0)
        merged_by_peft = theirs.merge_and_unload()(ids).logits.numpy()
    merged = pretrained.save_pretrained(lora.merge(model), tmp_path / "merged")
    with torch.no_grad():
        hf = transformers.AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        np.testing.assert_allclose(hf(ids).logits.numpy(), merged_by_peft, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_an_adapter_loaded_onto_a_mesh_is_sharded_like_its_weights():
    """from_pretrained(mesh=, adapter=) on 8 fake devices (data 2 x fsdp 2 x tensor 2): A is split like its
    weight's input axis, B like its output axes, and the logits are peft's."""
    script = f"""
import numpy as np, jax.numpy as jnp
from jaxformer import lora, pretrained, sharding
mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
ref = np.load("{FIXTURES}/lora/llama_all/reference.npz")
model = pretrained.from_pretrained("{FIXTURES}/pretrained/llama", mesh=mesh, adapter="{adapter_of("llama_all")}")
print(float(np.abs(np.asarray(model(jnp.asarray(ref["input_ids"]))) - ref["logits"]).max()))
specs = {{path: (a.a[...].sharding.spec, a.b[...].sharding.spec) for path, *_, a in lora.adapters(model)}}
print(specs["blocks/layers/0/self_attention/w_q"])
"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    delta, specs = out.stdout.strip().splitlines()[-2:]
    assert float(delta) < 1e-4
    assert specs == "(P('fsdp', None), P(None, 'tensor', None))"
