"""Gemma 1, 2, 3 and 4 (text) checkpoints in and out, against tiny fixtures that `transformers` made
(experiments/make_pretrained_fixtures.py): logits, greedy generation through the ring-buffer caches of the local
layers, save -> load, the config options each family needs, and that the soft-caps and windows bind."""

import dataclasses
import functools
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import pretrained
from jaxformer.decoding import generate
from jaxformer.models import GPT
from jaxformer.ops import RopeScaling
from tests.pretrained.test_pretrained import FIXTURES, assert_round_trip, copy_fixture, edit_config, reference

GEMMAS = ["gemma", "gemma2", "gemma3", "gemma4", "gemma4_kv"]


# Each fixture loaded once per test process; tests that change a model change a copy (`with_config`).
load = functools.cache(lambda name: pretrained.from_pretrained(FIXTURES / name))
# Heavier checks run in the default suite for three of the five (Gemma 2, 3 and 4 cover every option) and for
# all five in `make test-all`.
SLOW = pytest.mark.slow
EVERY_GEMMA = [n if n in ("gemma2", "gemma3", "gemma4") else pytest.param(n, marks=SLOW) for n in GEMMAS]


@pytest.fixture(scope="module", params=GEMMAS)
def loaded(request):
    return request.param, load(request.param)


def logits_of(model, name: str) -> np.ndarray:
    return np.asarray(model(jnp.asarray(reference(name)["input_ids"])))


def test_logits_equal_transformers(loaded):
    name, model = loaded
    np.testing.assert_allclose(logits_of(model, name), reference(name)["logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", EVERY_GEMMA)
def test_greedy_generation_equals_transformers(name):
    """The prompt (5 tokens) and the 25 cached positions are longer than the window (4): the local layers decode
    through ring buffers of 4 entries."""
    model = load(name)
    ref = reference(name)
    tokens = generate(model, jnp.asarray(ref["input_ids"][:, :5]), 20, rng=jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(np.asarray(tokens), ref["greedy"])


def test_save_then_load_is_bit_exact_and_rewrites_the_same_tensors(loaded, tmp_path):
    name, model = loaded
    out = assert_round_trip(model, name, tmp_path)
    assert pretrained.from_pretrained(out).config == model.config


def test_the_config_reads_what_each_gemma_needs():
    gemma = load("gemma").config
    assert gemma.norm_plus_one and gemma.embed_scale and gemma.activation == "geglu" and gemma.num_kv_heads == 1
    assert not gemma.sandwich_norm and gemma.layer_types is None and gemma.attention_scale is None
    gemma2 = load("gemma2").config
    assert gemma2.layer_types == ("local", "global", "local") and gemma2.sliding_window == 4
    assert (gemma2.attention_logit_softcap, gemma2.final_logit_softcap) == (3.0, 4.0)
    assert gemma2.attention_scale == 6**-0.5 and gemma2.sandwich_norm and not gemma2.qk_norm
    gemma3 = load("gemma3").config
    assert gemma3.layer_types == ("local", "local", "local", "global") and gemma3.qk_norm
    assert (gemma3.rope_base, gemma3.rope_scaling) == (1e6, RopeScaling("linear", 8.0))
    assert (gemma3.local_rope_base, gemma3.local_rope_scaling) == (1e4, None)
    assert gemma3.attention_logit_softcap is None and gemma3.final_logit_softcap == 4.0
    gemma4 = load("gemma4").config  # transformers 5's per_layer_config
    assert not gemma4.norm_plus_one and gemma4.v_norm and gemma4.layer_scale and gemma4.attention_scale == 1.0
    assert gemma4.global_head_dim == 16 and gemma4.global_num_kv_heads is None and not gemma4.global_value_is_key
    assert (gemma4.num_kv_shared_layers, gemma4.kv_shared_d_ff, gemma4.per_layer_input_dim) == (2, 64, 4)
    assert gemma4.kv_sources == (None, None, None, None, 3, 2)
    assert gemma4.rope_scaling == RopeScaling("proportional", 1.0, fraction=0.25) and gemma4.local_rope_base == 1e4
    gemma4_kv = load("gemma4_kv").config  # the hub's global_head_dim keys
    assert gemma4_kv.global_value_is_key and (gemma4_kv.global_head_dim, gemma4_kv.global_num_kv_heads) == (16, 1)
    assert gemma4_kv.per_layer_input_dim == 0 and gemma4_kv.num_kv_shared_layers == 0


def with_config(model: GPT, **changes) -> GPT:
    """`model`'s parameters in a GPT built from its config with `changes`."""
    cfg = dataclasses.replace(model.config, **changes)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))
    other = nnx.merge(graphdef, nnx.state(model))
    other.eval()
    return other


@pytest.mark.parametrize(
    ("name", "changes"),
    [
        ("gemma2", dict(attention_logit_softcap=None)),
        ("gemma2", dict(final_logit_softcap=None)),
        ("gemma2", dict(layer_types=None, sliding_window=None)),
        ("gemma2", dict(attention_scale=None)),
        ("gemma3", dict(local_rope_base=None)),
        ("gemma3", dict(rope_scaling=None)),
        ("gemma4", dict(rope_scaling=None)),
        ("gemma4", dict(local_rope_base=None)),
    ],
)
def test_each_option_the_fixtures_exercise_binds(name, changes):
    """Without the option the logits move by more than 1e-2, so the equality above holds because it is applied."""
    model = load(name)
    delta = np.abs(logits_of(with_config(model, **changes), name) - reference(name)["logits"]).max()
    assert delta > 1e-2, (changes, delta)


@pytest.mark.parametrize("name", ["gemma2", *(pytest.param(n, marks=SLOW) for n in ("gemma3", "gemma4", "gemma4_kv"))])
def test_the_final_soft_cap_bounds_the_logits(name):
    model = load(name)
    cap = model.config.final_logit_softcap
    logits = logits_of(model, name)
    assert np.abs(logits).max() < cap
    raw = logits_of(with_config(model, final_logit_softcap=None), name)
    np.testing.assert_allclose(logits, cap * np.tanh(raw / cap), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gemma4", "gemma4_kv"])
def test_gemma4_layer_scalars_bind(name):
    """Layer scalars are stored in the checkpoint (not 1): with every one set to 1 the logits move."""
    model = pretrained.from_pretrained(FIXTURES / name)
    scales = [float(block.layer_scale[...][0]) for block in model.blocks.layers]
    assert all(abs(s - 1.0) > 1e-3 for s in scales)
    for block in model.blocks.layers:
        block.layer_scale[...] = jnp.ones((1,))
    assert np.abs(logits_of(model, name) - reference(name)["logits"]).max() > 1e-2


def test_gemma4_kv_shared_layers_keep_no_cache_and_project_nothing():
    model = pretrained.from_pretrained(FIXTURES / "gemma4")
    attentions = [block.self_attention for block in model.blocks.layers]
    assert [a.shared_kv for a in attentions] == [False] * 4 + [True] * 2
    assert all(a.w_k is None and a.w_v is None for a in attentions[4:])
    model.init_cache(1, 32)
    assert [a.cached_key is None for a in attentions] == [False] * 4 + [True] * 2
    assert [a.cached_key.shape[1] for a in attentions[:4]] == [4, 4, 32, 4]  # local rings, one global cache
    assert model.blocks.layers[5].ffn.w_gate.shape == (24, 64)  # the double-wide MLP of shared layers
    kv = load("gemma4_kv").blocks.layers
    assert kv[1].self_attention.w_v is None and kv[1].self_attention.w_k.shape == (24, 1, 16)  # values are keys
    assert kv[0].self_attention.w_v is not None


def test_gemma4_mixture_of_experts_is_refused(tmp_path):
    d = copy_fixture("gemma4_kv", tmp_path)
    edit_config(d, enable_moe_block=True, num_experts=4, top_k_experts=2, moe_intermediate_size=8)
    with pytest.raises(ValueError, match=r"enable_moe_block=True is not supported for gemma4_text"):
        pretrained.from_pretrained(d)


def test_local_layers_cache_only_their_window():
    model = pretrained.from_pretrained(FIXTURES / "gemma3")
    model.init_cache(2, 64)
    lengths = [block.self_attention.cached_key.shape[1] for block in model.blocks.layers]
    assert lengths == [4, 4, 4, 64]  # local, local, local, global
    assert [block.self_attention.is_ring_cache for block in model.blocks.layers] == [True, True, True, False]


def test_the_tokenizer_falls_back_to_bytes_as_transformers():
    ref = reference("gemma")
    text = str(ref["text"])
    assert "é" in text and "🙂" in text  # characters the tiny vocabulary lacks: byte fallback
    tokenizer = pretrained.load_tokenizer(FIXTURES / "gemma")
    ids = tokenizer.encode(text)
    np.testing.assert_array_equal(ids, ref["text_ids_plain"])
    assert tokenizer.decode(ids) == text


def test_hub_format_gemma3_config_reads_as_the_transformers_5_one(tmp_path):
    """Gemma 3 files on the hub predate `rope_parameters` per layer type and `layer_types`: rope_theta,
    rope_scaling (global), rope_local_base_freq and sliding_window_pattern say the same."""
    d = copy_fixture("gemma3", tmp_path)
    config = json.loads((d / "config.json").read_text())
    for key in ("rope_parameters", "layer_types", "_sliding_window_pattern"):
        del config[key]
    config.update(
        rope_theta=1e6,
        rope_scaling={"rope_type": "linear", "factor": 8.0},
        rope_local_base_freq=1e4,
        sliding_window_pattern=4,
        cache_implementation="hybrid",
    )
    (d / "config.json").write_text(json.dumps(config))
    assert pretrained.from_pretrained(d).config == load("gemma3").config


def test_gemma1_legacy_activation_name_reads_as_the_tanh_gelu(tmp_path):
    d = copy_fixture("gemma", tmp_path)
    edit_config(d, hidden_act="gelu", hidden_activation=None)
    assert pretrained.from_pretrained(d).config == load("gemma").config
    edit_config(d, hidden_activation="relu")
    with pytest.raises(ValueError, match=r"hidden_activation='relu' is not supported for gemma models"):
        pretrained.from_pretrained(d)


def test_what_transformers_would_compute_differently_is_refused(tmp_path):
    d = copy_fixture("gemma2", tmp_path)
    edit_config(d, use_bidirectional_attention=True)
    with pytest.raises(ValueError, match=r"use_bidirectional_attention=True is not supported"):
        pretrained.from_pretrained(d)
    edit_config(d, use_bidirectional_attention=None, layer_types=["sliding_attention", "chunked_attention", "x"])
    with pytest.raises(ValueError, match=r"layer_types \['chunked_attention', 'x'\] are not supported"):
        pretrained.from_pretrained(d)
    model = load("gemma3")
    with pytest.raises(ValueError, match="Gemma 3 with an attention soft-cap"):
        pretrained.save_pretrained(with_config(model, attention_logit_softcap=5.0), tmp_path / "capped")


@pytest.mark.slow
@pytest.mark.parametrize("name", GEMMAS)
def test_transformers_loads_what_jaxformer_saves(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    out = pretrained.save_pretrained(load(name), tmp_path / name)
    model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ref = reference(name)
    with torch.no_grad():
        logits = model(torch.as_tensor(ref["input_ids"]).long()).logits.numpy()
    np.testing.assert_allclose(logits, ref["logits"], atol=1e-4, rtol=0)
    assert type(model).__name__ == json.loads(pathlib.Path(out, "config.json").read_text())["architectures"][0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma2", "gemma3", "gemma4", "gemma4_kv"])
def test_bfloat16_is_as_close_to_float32_as_transformers_bfloat16(name):
    """In bfloat16 (norms, 1 + w and the soft-caps in float32, the embedding factor rounded as Gemma rounds it)
    jaxformer's logits stay as close to the float32 reference as transformers' own bfloat16 run. These tiny
    fixtures have large weights, so both drift far (transformers 1.65 on gemma4, jaxformer 2.04, measured)."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    ref = reference(name)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(FIXTURES / name, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        their_logits = theirs(torch.as_tensor(ref["input_ids"]).long()).logits.float().numpy()
    ours = pretrained.from_pretrained(FIXTURES / name, dtype=jnp.bfloat16)
    assert {x.dtype for x in jax.tree.leaves(nnx.state(ours, nnx.Param))} == {jnp.dtype(jnp.bfloat16)}
    their_error = np.abs(their_logits - ref["logits"]).max()
    our_error = np.abs(logits_of(ours, name) - ref["logits"]).max()
    assert our_error < 1.5 * their_error + 0.05, (our_error, their_error)


@pytest.mark.slow  # the same wiring as GPT-2's test in the default run (test_pretrained.py)
def test_jaxformer_sample_generates_from_a_gemma_checkpoint():
    """`jaxformer sample --pretrained` on the Gemma 3 fixture prints the prompt and the greedy continuation that
    `generate` gives (the local layers decode through ring buffers: the prompt alone is longer than the window)."""
    prompt = "To be, or not to be"
    tokenizer = pretrained.load_tokenizer(FIXTURES / "gemma3")
    model = pretrained.from_pretrained(FIXTURES / "gemma3")
    ids = [*tokenizer.prefix_ids, *tokenizer.encode(prompt)]
    assert tokenizer.prefix_ids == (2,)  # <bos>, as transformers' tokenizer(prompt) starts
    assert len(ids) > model.config.sliding_window
    want = generate(model, jnp.asarray([ids]), 8, rng=jax.random.key(0), temperature=0.0)
    command = [sys.executable, "-m", "jaxformer.cli", "sample", f"--pretrained={FIXTURES / 'gemma3'}"]
    out = subprocess.run(
        [*command, f"--prompt={prompt}", "--num_tokens=8", "--temperature=0"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.rstrip("\n") == prompt + tokenizer.decode(np.asarray(want[0]))


@pytest.mark.slow  # ring caches are reordered as any other cache; greedy through them is in the default run
def test_beam_search_through_ring_buffers_scores_the_model_log_probs():
    """Beam search over Gemma 3's caches (local rings of 4, reordered with the beams): width 1 is transformers'
    greedy, and each of 3 beams scores its teacher-forced log-probability (no eos: all 8 tokens count)."""
    from jaxformer.decoding import beam_search, length_normalizer

    model = pretrained.from_pretrained(FIXTURES / "gemma3")
    ref = reference("gemma3")
    prompt = jnp.asarray(ref["input_ids"][:, :5])
    greedy, _ = beam_search(model, prompt, beam_size=1, max_len=8)
    np.testing.assert_array_equal(np.asarray(greedy[:, 0]), ref["greedy"][:, :8])
    beams, scores = beam_search(model, prompt, beam_size=3, max_len=8, length_penalty=0.6)
    full = jnp.concatenate([jnp.repeat(prompt, 3, axis=0), beams.reshape(6, 8)], axis=1)
    log_probs = jax.nn.log_softmax(model(full)[:, 4:-1], axis=-1)
    picked = jnp.take_along_axis(log_probs, full[:, 5:, None], axis=-1)[..., 0].sum(axis=1)
    want = np.asarray(picked).reshape(2, 3) / float(length_normalizer(8, 0.6))
    np.testing.assert_allclose(np.asarray(scores), want, rtol=1e-4, atol=1e-4)
