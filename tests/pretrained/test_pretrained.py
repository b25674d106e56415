"""Hugging Face checkpoints in and out, against fixtures that `transformers` made
(experiments/make_pretrained_fixtures.py): logits, greedy generation, tokenizers, bit-exact save -> load, sharded
loading, and every refusal.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.flax import load_file, save_file

from jaxformer import pretrained
from jaxformer.decoding import generate

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "pretrained"
DECODERS = ["gpt2", "llama", "mistral", "qwen2", "qwen3"]


def reference(name: str) -> dict:
    return dict(np.load(FIXTURES / name / "reference.npz"))


def copy_fixture(name: str, tmp_path) -> pathlib.Path:
    out = tmp_path / name
    shutil.copytree(FIXTURES / name, out)
    return out


def params(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def assert_round_trip(model, name: str, tmp_path, *, prefix: str = "") -> pathlib.Path:
    """save_pretrained then from_pretrained is bit-exact, and the tensors written are transformers' own, to the bit
    (`prefix`: a base model's names as saved inside its task model's namespace)."""
    out = pathlib.Path(pretrained.save_pretrained(model, tmp_path / name))
    for a, b in zip(params(model), params(pretrained.from_pretrained(out)), strict=True):
        np.testing.assert_array_equal(a, b)
    original = {}
    for file in (FIXTURES / name).glob("*.safetensors"):
        original.update(load_file(file))
    written = load_file(out / "model.safetensors")
    assert sorted(written) == sorted(prefix + k for k in original)
    for key, value in original.items():
        np.testing.assert_array_equal(np.asarray(written[prefix + key]), np.asarray(value), err_msg=key)
    return out


@pytest.fixture(scope="module", params=DECODERS)
def loaded(request):
    return request.param, pretrained.from_pretrained(FIXTURES / request.param)


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


def test_the_config_reads_what_the_architecture_needs():
    llama = pretrained.from_pretrained(FIXTURES / "llama").config
    assert not llama.rope_interleaved and llama.rope_scaling.kind == "llama3" and llama.num_kv_heads == 2
    assert pretrained.from_pretrained(FIXTURES / "mistral").config.sliding_window == 4
    qwen2 = pretrained.from_pretrained(FIXTURES / "qwen2").config
    assert qwen2.qkv_bias and not qwen2.out_bias and not qwen2.mlp_bias and qwen2.tie_embeddings
    qwen3 = pretrained.from_pretrained(FIXTURES / "qwen3").config
    assert qwen3.qk_norm and qwen3.head_dim * qwen3.num_heads != qwen3.d_model


# meta-llama/Llama-3.2-1B's config.json (copied from the hub): the `llama3.2-1b` variant is its shape.
LLAMA_3_2_1B = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2048,
    "initializer_range": 0.02,
    "intermediate_size": 8192,
    "max_position_embeddings": 131072,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 32,
    "num_hidden_layers": 16,
    "num_key_value_heads": 8,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {
        "factor": 32.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.45.0.dev0",
    "use_cache": True,
    "vocab_size": 128256,
}


def test_the_llama_variant_is_the_shape_of_llama_3_2_1b():
    from jaxformer.models import ModelConfig
    from jaxformer.pretrained import hf_config

    assert hf_config.to_model_config(LLAMA_3_2_1B) == ModelConfig.variant("llama3.2-1b")


@pytest.mark.parametrize("name", DECODERS)
def test_save_then_load_is_bit_exact_and_rewrites_the_same_tensors(name, tmp_path):
    model = pretrained.from_pretrained(FIXTURES / name)
    out = assert_round_trip(model, name, tmp_path)
    assert pretrained.from_pretrained(out).config == model.config


def test_a_jitted_call_on_a_loaded_model_traces_once():
    """Parameters and the rest of the state (dropout RNGs) are placed alike, so the outputs of a jitted call come
    back with the shardings of its inputs and calling it again compiles nothing (it traced twice before)."""
    name = "gpt2"
    model = pretrained.from_pretrained(FIXTURES / name)
    traces = []
    forward = nnx.jit(lambda m, x: (traces.append(1), m(x).sum())[1])
    tokens = jnp.asarray(reference(name)["input_ids"])
    for _ in range(3):
        forward(model, tokens)
    assert len(traces) == 1


def test_save_shards_past_the_size_limit_and_loads_them(tmp_path):
    model = pretrained.from_pretrained(FIXTURES / "gpt2")
    out = pathlib.Path(pretrained.save_pretrained(model, tmp_path / "sharded", max_shard_bytes=20_000))
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    for a, b in zip(params(model), params(pretrained.from_pretrained(out)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_dtype_bfloat16_is_kept_through_a_save(tmp_path):
    model = pretrained.from_pretrained(FIXTURES / "llama", dtype=jnp.bfloat16)
    assert {x.dtype for x in params(model)} == {jnp.dtype(jnp.bfloat16)}
    out = pretrained.save_pretrained(model, tmp_path / "bf16")
    assert json.loads((pathlib.Path(out) / "config.json").read_text())["dtype"] == "bfloat16"
    again = pretrained.from_pretrained(out)  # no dtype: the checkpoint's own
    assert again.config.param_dtype == jnp.bfloat16
    for a, b in zip(params(model), params(again), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen2", "bert"])
def test_tokenizer_encodes_as_transformers(name):
    ref = reference(name)
    tokenizer = pretrained.load_tokenizer(FIXTURES / name)
    ids = tokenizer.encode(str(ref["text"]))
    np.testing.assert_array_equal(ids, ref["text_ids_plain"])
    assert ids.dtype == np.int32 and tokenizer.vocab_size >= int(ids.max()) + 1
    # transformers' tokenizer(text) puts the post-processor's specials first: <s> (llama), [CLS] (bert), none
    prefix = tokenizer.prefix_ids
    assert list(ref["text_ids"][: len(prefix) + len(ids)]) == [*prefix, *ids]
    assert len(prefix) == {"gpt2": 0, "qwen2": 0, "llama": 1, "bert": 1}[name]
    if name == "gpt2":  # byte-level BPE is lossless
        assert tokenizer.decode(ids) == str(ref["text"])
    from jaxformer import data

    again = data.tokenizer_from_dict(json.loads(json.dumps(tokenizer.to_dict())))  # as a workdir stores it
    np.testing.assert_array_equal(again.encode(str(ref["text"])), ids)


def test_a_loaded_model_loads_onto_a_mesh_of_eight_devices():
    script = f"""
import os
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"  # + conftest's
import jax, numpy as np
from jaxformer import pretrained
from jaxformer import sharding
ref = np.load("{FIXTURES}/llama/reference.npz")
model = pretrained.from_pretrained("{FIXTURES}/llama", mesh=sharding.make_mesh(1, 8, 1))
w = model.blocks.layers[0].ffn.w_gate.get_value()
print(len(w.sharding.device_set), float(np.abs(np.asarray(model(ref["input_ids"])) - ref["logits"]).max()))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    devices, delta = out.stdout.split()
    assert int(devices) == 8 and float(delta) < 1e-4


# -- refusals -------------------------------------------------------------------------------------------------


def edit_config(directory: pathlib.Path, **changes) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def test_an_unknown_config_key_is_refused_by_name(tmp_path):
    d = copy_fixture("gpt2", tmp_path)
    edit_config(d, some_new_option=True)
    with pytest.raises(ValueError, match=r"keys jaxformer does not support: \['some_new_option'\]"):
        pretrained.from_pretrained(d)


def test_an_unsupported_value_is_refused_by_name(tmp_path):
    d = copy_fixture("llama", tmp_path)
    edit_config(d, hidden_act="gelu")
    with pytest.raises(ValueError, match=r"hidden_act='gelu' is not supported for llama models"):
        pretrained.from_pretrained(d)
    d = copy_fixture("gpt2", tmp_path / "b")
    edit_config(d, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True"):
        pretrained.from_pretrained(d)


def test_an_unsupported_architecture_or_dtype_is_refused(tmp_path):
    d = copy_fixture("gpt2", tmp_path)
    edit_config(d, architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(ValueError, match=r"architectures=\['GPTNeoXForCausalLM'\].*not supported"):
        pretrained.from_pretrained(d)
    edit_config(d, architectures=["GPT2LMHeadModel"], dtype="int8")
    with pytest.raises(ValueError, match="dtype='int8' is not supported"):
        pretrained.from_pretrained(d)


def rewrite_tensors(directory: pathlib.Path, change) -> None:
    path = directory / "model.safetensors"
    tensors = {k: np.asarray(v) for k, v in load_file(path).items()}
    change(tensors)
    save_file({k: jnp.asarray(v) for k, v in tensors.items()}, path, metadata={"format": "pt"})


def test_a_missing_tensor_is_named(tmp_path):
    d = copy_fixture("gpt2", tmp_path)
    rewrite_tensors(d, lambda t: t.pop("transformer.h.1.mlp.c_fc.bias"))
    with pytest.raises(ValueError, match=r"lacks tensor 'transformer.h.1.mlp.c_fc.bias'"):
        pretrained.from_pretrained(d)


def test_an_extra_tensor_is_named(tmp_path):
    d = copy_fixture("qwen2", tmp_path)
    rewrite_tensors(d, lambda t: t.update({"model.layers.0.self_attn.o_proj.bias": np.zeros(24, np.float32)}))
    with pytest.raises(ValueError, match=r"tensors no part of the model reads: \['model.layers.0.self_attn.o_proj"):
        pretrained.from_pretrained(d)


def test_a_wrong_shape_is_named(tmp_path):
    d = copy_fixture("gpt2", tmp_path)
    rewrite_tensors(d, lambda t: t.update({"transformer.ln_f.weight": np.ones(7, np.float32)}))
    with pytest.raises(ValueError, match=r"\['transformer.ln_f.weight'\] give final_norm/scale shape \(7,\)"):
        pretrained.from_pretrained(d)


def test_old_gpt2_files_without_the_prefix_and_with_mask_buffers_load(tmp_path):
    """The original GPT-2 release names tensors `h.0...` and stores the causal mask `h.{i}.attn.bias`."""
    d = copy_fixture("gpt2", tmp_path)

    def old_style(tensors):
        for key in list(tensors):
            tensors[key.removeprefix("transformer.")] = tensors.pop(key)
        tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))

    rewrite_tensors(d, old_style)
    ref = reference("gpt2")
    logits = pretrained.from_pretrained(d)(jnp.asarray(ref["input_ids"]))
    np.testing.assert_allclose(np.asarray(logits), ref["logits"], atol=1e-4, rtol=0)


def test_a_hub_id_offline_and_not_cached_says_what_to_do(tmp_path):
    script = "from jaxformer import pretrained; pretrained.from_pretrained('nobody/no-such-model')"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0
    assert "'nobody/no-such-model' is not a local directory" in out.stderr and "huggingface-cli download" in out.stderr


def test_save_refuses_what_no_architecture_computes(tmp_path):
    from jaxformer.models import GPT, ModelConfig

    model = GPT(ModelConfig.variant("gpt2-tiny", norm_position="post"), rngs=nnx.Rngs(0))
    with pytest.raises(
        ValueError, match="No Hugging Face architecture computes this ModelConfig: norm_position='post'"
    ):
        pretrained.save_pretrained(model, tmp_path)


def images(ref) -> jax.Array:
    return jnp.asarray(ref["pixel_values"]).transpose(0, 2, 3, 1)  # transformers' NCHW -> jaxformer's NHWC


def test_vit_logits_equal_transformers_and_save_load_is_bit_exact(tmp_path):
    ref = reference("vit")
    model = pretrained.from_pretrained(FIXTURES / "vit")
    np.testing.assert_allclose(np.asarray(model(images(ref))), ref["logits"], atol=1e-4, rtol=0)
    assert_round_trip(model, "vit", tmp_path)


def bert_outputs(model, ref):
    valid = ref["attention_mask"].astype(bool)
    out = model(jnp.asarray(ref["input_ids"]), valid=jnp.asarray(valid), token_types=jnp.asarray(ref["token_type_ids"]))
    return out, valid


def test_bert_masked_lm_equals_transformers_on_real_tokens_and_save_load_is_bit_exact(tmp_path):
    """Padded query positions are not compared: transformers lets them attend to the real tokens, jaxformer gives
    them nothing to attend to (their states are documented as meaningless)."""
    ref = reference("bert")
    model = pretrained.from_pretrained(FIXTURES / "bert")
    assert model.config.mlm_head and not model.config.pooler  # BertForMaskedLM has no pooler
    out, valid = bert_outputs(model, ref)
    np.testing.assert_allclose(np.asarray(out.hidden)[valid], ref["hidden"][valid], atol=1e-4, rtol=0)
    logits = np.asarray(model.mlm_logits(out.hidden))
    np.testing.assert_allclose(logits[valid], ref["logits"][valid], atol=1e-4, rtol=0)
    assert_round_trip(model, "bert", tmp_path)


def test_a_bert_model_with_a_pooler_round_trips_as_bert_model(tmp_path):
    from jaxformer.models import BERT, ModelConfig

    cfg = ModelConfig.variant("bert-tiny", num_layers=1, mlm_head=False)
    model = BERT(cfg, rngs=nnx.Rngs(0))
    out = pathlib.Path(pretrained.save_pretrained(model, tmp_path / "base"))
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    again = pretrained.from_pretrained(out)
    assert again.config.pooler and not again.config.mlm_head
    for a, b in zip(params(model), params(again), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="no masked-LM head"):
        again.mlm_logits(jnp.zeros((1, 2, cfg.d_model)))


@pytest.mark.slow
def test_transformers_loads_the_bert_models_jaxformer_saves(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    ref = reference("bert")
    out = pretrained.save_pretrained(pretrained.from_pretrained(FIXTURES / "bert"), tmp_path / "mlm")
    model = transformers.BertForMaskedLM.from_pretrained(out).eval()
    inputs = {k: torch.as_tensor(ref[k]).long() for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        logits = model(**inputs).logits.numpy()
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)
    from jaxformer.models import BERT, ModelConfig

    base = BERT(ModelConfig.variant("bert-tiny", num_layers=1, mlm_head=False), rngs=nnx.Rngs(0))
    base.eval()  # bert-tiny trains with dropout 0.1
    theirs = transformers.BertModel.from_pretrained(pretrained.save_pretrained(base, tmp_path / "base")).eval()
    ids = np.arange(10, dtype=np.int64)[None]
    with torch.no_grad():
        want = theirs(torch.as_tensor(ids)).pooler_output.numpy()
    np.testing.assert_allclose(np.asarray(base(jnp.asarray(ids)).pooled), want, atol=1e-4, rtol=0)


def test_vit_model_hidden_states_and_pooler_equal_transformers_and_save_load_is_bit_exact(tmp_path):
    ref = reference("vit_model")
    model = pretrained.from_pretrained(FIXTURES / "vit_model")
    assert model.config.num_classes == 0 and model.config.pooler
    hidden = model.encode(images(ref))
    np.testing.assert_allclose(np.asarray(hidden), ref["hidden"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(model.pool(hidden)), ref["pooled"], atol=1e-4, rtol=0)
    out = assert_round_trip(model, "vit_model", tmp_path, prefix="vit.")  # saved in the task model's namespace
    assert json.loads((out / "config.json").read_text())["architectures"] == ["ViTModel"]


@pytest.mark.slow
def test_transformers_loads_the_vit_model_jaxformer_saves(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    out = pretrained.save_pretrained(pretrained.from_pretrained(FIXTURES / "vit_model"), tmp_path / "vit_model")
    model = transformers.ViTModel.from_pretrained(out).eval()
    ref = reference("vit_model")
    with torch.no_grad():
        theirs = model(torch.as_tensor(ref["pixel_values"]))
    np.testing.assert_allclose(theirs.last_hidden_state.numpy(), ref["hidden"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(theirs.pooler_output.numpy(), ref["pooled"], atol=1e-4, rtol=0)


@pytest.mark.slow
def test_transformers_loads_the_vit_jaxformer_saves(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    out = pretrained.save_pretrained(pretrained.from_pretrained(FIXTURES / "vit"), tmp_path / "vit")
    model = transformers.ViTForImageClassification.from_pretrained(out).eval()
    ref = reference("vit")
    with torch.no_grad():
        logits = model(torch.as_tensor(ref["pixel_values"])).logits.numpy()
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", DECODERS)
def test_transformers_loads_what_jaxformer_saves(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    out = pretrained.save_pretrained(pretrained.from_pretrained(FIXTURES / name), tmp_path / name)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ref = reference(name)
    with torch.no_grad():
        logits = model(torch.as_tensor(ref["input_ids"]).long()).logits.numpy()
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)


def test_jaxformer_sample_generates_from_a_pretrained_checkpoint():
    """The command prints the prompt and the model's greedy continuation (greedy itself is checked against
    transformers above; this checks the command's wiring: checkpoint, tokenizer, decoding)."""
    prompt = str(reference("gpt2")["text"])
    tokenizer = pretrained.load_tokenizer(FIXTURES / "gpt2")
    model = pretrained.from_pretrained(FIXTURES / "gpt2")
    want = generate(model, jnp.asarray([tokenizer.encode(prompt)]), 20, rng=jax.random.key(0), temperature=0.0)
    command = [sys.executable, "-m", "jaxformer.cli", "sample", f"--pretrained={FIXTURES / 'gpt2'}"]
    out = subprocess.run(
        [*command, f"--prompt={prompt}", "--num_tokens=20", "--temperature=0"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.rstrip("\n") == prompt + tokenizer.decode(np.asarray(want[0]))
    neither = subprocess.run([*command[:-1], "--prompt=x"], capture_output=True, text=True)
    assert neither.returncode != 0 and "pass exactly one of --workdir" in neither.stderr


def test_a_hub_id_downloads_into_the_cache_then_loads_offline(tmp_path):
    """Against a stand-in for the hub on 127.0.0.1 (tests/pretrained/hub_server.py): the first load downloads the
    checkpoint into huggingface_hub's cache, a second one with HF_HUB_OFFLINE=1 reads it from there (a Llama, and
    a Gemma 3 under a real Gemma id)."""
    from tests.pretrained.hub_server import HubServer

    script = f"""
import numpy as np
from jaxformer import pretrained
for name, hub_id in (("llama", "someone/tiny-llama"), ("gemma3", "google/gemma-3-1b-it")):
    ref = np.load(f"{FIXTURES}/{{name}}/reference.npz")
    model = pretrained.from_pretrained(hub_id)
    tokens = pretrained.load_tokenizer(hub_id).encode(str(ref["text"]))
    delta = float(np.abs(np.asarray(model(ref["input_ids"])) - ref["logits"]).max())
    print(delta, list(tokens) == list(ref["text_ids_plain"]))
"""
    repos = {"someone/tiny-llama": str(FIXTURES / "llama"), "google/gemma-3-1b-it": str(FIXTURES / "gemma3")}
    with HubServer(repos) as hub:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path), "HF_HUB_DISABLE_XET": "1"}
        online = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert online.returncode == 0, online.stderr[-3000:]
        for line in online.stdout.splitlines():
            delta, same_ids = line.split()
            assert float(delta) < 1e-4 and same_ids == "True"
        assert len(online.stdout.splitlines()) == 2
        downloaded = {path for method, path in hub.requests if method == "GET" and "/resolve/" in path}
        assert any(p.endswith(".safetensors") for p in downloaded) and not any("reference" in p for p in downloaded)
        hub.requests.clear()
        offline = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env={**env, "HF_HUB_OFFLINE": "1"}
        )
        assert offline.returncode == 0, offline.stderr[-3000:]
        assert offline.stdout.split() == online.stdout.split() and hub.requests == []


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match=r"`dtype` must be a floating dtype .* got int32"):
        pretrained.from_pretrained(FIXTURES / "gpt2", dtype=jnp.int32)
    with pytest.raises(TypeError, match=r"`mesh` must be a jax\.sharding\.Mesh"):
        pretrained.from_pretrained(FIXTURES / "gpt2", mesh="fsdp")
    with pytest.raises(TypeError, match="`cfg` must be a ModelConfig; got dict"):
        pretrained.load_params(FIXTURES / "gpt2", {})
    model = pretrained.from_pretrained(FIXTURES / "gpt2")
    with pytest.raises(ValueError, match="`max_shard_bytes` must be a positive int; got 0"):
        pretrained.save_pretrained(model, "unused", max_shard_bytes=0)
    with pytest.raises(TypeError, match="`max_shard_bytes` must be a positive int; got '1GB'"):
        pretrained.save_pretrained(model, "unused", max_shard_bytes="1GB")
