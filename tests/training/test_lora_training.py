"""LoRA training (`config.lora`): only the adapters train, over frozen base weights (init_from's, or random ones); a
checkpoint holds the adapters and their optimizer state and resumes exactly; the run writes its adapter in peft's
layout (and the merged model), which `from_pretrained(base, adapter=...)` and `jaxformer sample --adapter` read;
8 devices train as one; bad settings are named before any data is read."""

import functools
import json
import pathlib
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from safetensors.numpy import load_file

from jaxformer import lora, pretrained, sharding
from jaxformer.configs import load_config
from jaxformer.training import decay_mask
from jaxformer.training.loop import check_resume_config, train_and_evaluate
from jaxformer.training.memory import memory_report
from jaxformer.training.run import build_run
from jaxformer.training.runner import StepRunner
from jaxformer.training.state import LoRATrainState, create_train_state, with_base
from jaxformer.training.tasks.lm import sample_text
from jaxformer.training.trained import load_trained

HERE = pathlib.Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures" / "pretrained"
LLAMA, GPT2 = FIXTURES / "llama", FIXTURES / "gpt2"
is_variable = lambda x: isinstance(x, nnx.Variable)


def lora_config(corpus, base=LLAMA, **lora_settings):
    """A LoRA run of 6 steps over the fixture `base` (a constant learning rate, so that a run stopped after 3 steps
    and resumed to 6 trains as one of 6), adapter dropout on, a checkpoint every 3 steps."""
    config = load_config("gpt2_finetune_shakespeare")
    config.init_from = str(base)
    config.data.update(source="text_file", path=str(corpus), tokenizer=f"hf:{base}", seq_len=16)
    config.model.dtype = "float32"
    config.update(num_steps=6, log_every=1, eval_every=6, checkpoint_every=3, warmup_steps=0, batch_size=4)
    config.update(schedule="constant", learning_rate=1e-2)
    config.sample.num_tokens = 4
    config.lora.update(rank=4, alpha=8.0, dropout=0.1, **lora_settings)
    return config


def random_base_config(corpus):
    """LoRA over a random tiny GPT (no init_from), its layers scanned: the adapters are stacked like the weights."""
    config = load_config("shakespeare_char_cpu")
    config.data.update(source="text_file", path=str(corpus), seq_len=16)
    config.model.update(num_layers=2, num_heads=2, d_model=32, d_ff=64, dropout_rate=0.0, scan_layers=True)
    config.update(batch_size=4, warmup_steps=0, learning_rate=1e-2)
    config.lora.update(rank=4, alpha=8.0)
    return config


# Once per session (xdist tears module fixtures down whenever a worker's queue runs dry).
@functools.cache
def reference_run(corpus: str) -> pathlib.Path:
    """The workdir of an uninterrupted 6-step LoRA run over the Llama fixture, merged model exported."""
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="jaxformer-lora-")) / "run"
    train_and_evaluate(lora_config(corpus, export_merged=True), str(workdir))
    return workdir


@pytest.fixture
def reference(corpus):
    return reference_run(str(corpus))


def losses(workdir) -> list[float]:
    return [json.loads(line)["train_loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_only_the_adapters_have_gradients_and_optimizer_state(corpus):
    run = build_run(lora_config(corpus))
    model = nnx.eval_shape(run.make_model)  # shapes are all this test needs
    _, state = jax.eval_shape(lambda: create_train_state(run.make_model(), run.optimizer))
    assert isinstance(state, LoRATrainState)
    trained = jax.tree.leaves(state.params, is_leaf=is_variable)
    frozen = jax.tree.leaves(state.frozen, is_leaf=is_variable)
    assert {type(v) for v in trained} == {nnx.LoRAParam} and {type(v) for v in frozen} == {nnx.Param}
    assert sum(v.size for v in trained) == lora.count(model) == 3072  # 7 weights x 2 layers, rank 4
    base = pretrained.load_params(LLAMA, run.model_config)
    assert jax.tree.structure(base) == jax.tree.structure(state.frozen)  # what `with_base` puts there
    assert sum(v.size for v in frozen) == sum(v.size for v in jax.tree.leaves(base)) == 15096
    # Adam's two moments of each adapter and nothing else (no masked zeros for the base), all of them decayed.
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
    assert sorted(x.shape for x in moments) == sorted([v.shape for v in trained] * 2)
    assert all(jax.tree.leaves(decay_mask(state.params)))
    # lora.base_dtype: the base in bfloat16; the adapters and their optimizer state stay float32.
    run = build_run(lora_config(corpus, base_dtype="bfloat16"))
    _, state = jax.eval_shape(lambda: create_train_state(run.make_model(), run.optimizer))
    assert {x.dtype for x in jax.tree.leaves(state.frozen)} == {jnp.dtype(jnp.bfloat16)}
    floats = {x.dtype for x in jax.tree.leaves((state.params, state.opt_state)) if x.dtype != jnp.int32}
    assert floats == {jnp.dtype(jnp.float32)}
    assert {x.dtype for x in jax.tree.leaves(run.initial_params())} == {jnp.dtype(jnp.bfloat16)}
    report = memory_report(lora_config(corpus), 1)
    assert report["trained_parameters"] == 3072 and report["parameters"] == 3072 + 15096


@pytest.mark.parametrize(
    "base",
    # slow: the Llama fixture's frozen base comes back unchanged from the steps of the 8-device test below too, and
    # the layout of a bfloat16 base is checked above.
    ["random_scanned", *(pytest.param(base, marks=pytest.mark.slow) for base in ("llama", "llama_bf16"))],
)
def test_the_base_stays_bit_identical_while_the_adapters_learn(corpus, base):
    """Five steps on one batch through the loop's runner: the loss falls, the adapters move, and the frozen base
    (the fixture's weights, also kept in bfloat16, or a scanned random GPT's) comes back bit for bit."""
    configs = {
        "llama": lambda: lora_config(corpus),
        "llama_bf16": lambda: lora_config(corpus, base_dtype="bfloat16"),
        "random_scanned": lambda: random_base_config(corpus),
    }
    run = build_run(configs[base]())
    mesh = sharding.mesh_from_config(run.config.mesh)
    runner = StepRunner("jit", run.make_model, run.optimizer, run.schedule, run.task.loss, mesh=mesh)
    state = runner.initial_state
    if run.config.init_from:
        state = jax.device_put(with_base(state, run.initial_params(runner.state_mesh)), runner.state_shardings)
    before = [np.asarray(x) for x in jax.tree.leaves(state.frozen)]
    adapters = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    batch = run.task.train_data()[0]
    seen = []
    for _ in range(5):
        state, metrics = runner.train_step(state, batch)
        seen.append(float(metrics["loss"]))
    assert seen[-1] < seen[0] - 0.1, seen
    for a, b in zip(before, jax.tree.leaves(state.frozen), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    moved = [not np.array_equal(a, np.asarray(b)) for a, b in zip(adapters, jax.tree.leaves(state.params), strict=True)]
    assert all(moved)


def test_the_written_adapter_loads_with_its_base_and_gives_the_trained_logits(reference):
    """`workdir/adapter` (peft's layout) on the base checkpoint is the trained model, as `jaxformer sample
    --workdir` rebuilds it (the base read again, the adapters from the checkpoint); `workdir/merged` too."""
    trained, tokenizer, config = load_trained(str(reference))
    assert config.lora.rank == 4
    adapter_config = json.loads((reference / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(LLAMA) and adapter_config["r"] == 4
    tokens = jnp.asarray([tokenizer.encode("to be or not to be that is")], jnp.int32)
    want = trained(tokens)
    loaded = pretrained.from_pretrained(LLAMA, adapter=reference / "adapter")
    np.testing.assert_allclose(loaded(tokens), want, rtol=1e-6, atol=1e-6)
    base = pretrained.from_pretrained(LLAMA)
    assert float(jnp.max(jnp.abs(base(tokens) - want))) > 1e-3  # the adapters changed the model
    # The frozen base is the checkpoint's, bit for bit.
    base_params = jax.tree.leaves(nnx.state(base, nnx.Param))
    trained_base = jax.tree.leaves(nnx.state(trained, nnx.All(nnx.Param, nnx.Not(nnx.LoRAParam))))
    assert len(base_params) == len(trained_base)
    for a, b in zip(base_params, trained_base, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    merged = pretrained.from_pretrained(reference / "merged")
    assert not lora.count(merged) and (reference / "merged" / "tokenizer.json").exists()
    np.testing.assert_allclose(merged(tokens), want, rtol=1e-5, atol=1e-5)


def test_a_resumed_lora_run_trains_exactly_as_an_uninterrupted_one(tmp_path, corpus, reference):
    """3 steps, stop, resume to 6: the same losses (adapter dropout included) and the same adapter weights. The
    checkpoints hold the adapters and their optimizer state, not the frozen base."""
    workdir = tmp_path / "run"
    config = lora_config(corpus)
    config.num_steps = 3
    train_and_evaluate(config, str(workdir))
    metadata = json.loads((workdir / "checkpoints" / "3" / "state" / "_METADATA").read_text())["tree_metadata"]
    params = [key for key in metadata if key.startswith("('params'")]
    assert params and all("'lora'" in key for key in params) and not any("frozen" in key for key in metadata)
    train_and_evaluate(lora_config(corpus), str(workdir))
    assert losses(workdir) == losses(reference)
    got, want = (load_file(w / "adapter" / "adapter_model.safetensors") for w in (workdir, reference))
    assert sorted(got) == sorted(want) and len(got) == 28
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_change_of_lora_settings_is_an_architecture_change(corpus):
    saved = lora_config(corpus).to_dict()
    for key, value, shown in [("rank", 8, "lora.rank: saved 4, requested 8"), ("targets", "w_q", "lora.targets")]:
        config = lora_config(corpus)
        config.lora[key] = value
        with pytest.raises(ValueError, match=rf"another architecture.*{shown}"):
            check_resume_config(saved, config, step=3)
    full = lora_config(corpus)
    full.lora.update(rank=0, alpha=16.0, dropout=0.0)
    with pytest.raises(ValueError, match=r"lora.rank: saved 4, requested 0"):
        check_resume_config(saved, full, step=3)
    config = lora_config(corpus)
    config.lora.update(dropout=0.2, export_merged=True)  # how it trains and what it writes, not what it trains
    check_resume_config(saved, config, step=3)


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"rank": -1}, ValueError, r"`config.lora.rank` must be an int >= 0 \(0 = no LoRA\); got -1"),
        ({"rank": 2.5}, ValueError, r"`config.lora.rank` must be an int >= 0"),
        ({"rank": "8"}, TypeError, r"`config.lora.rank` must be an int >= 0"),
        ({"alpha": 0.0}, ValueError, r"`config.lora.alpha` must be a finite number > 0; got 0.0"),
        ({"targets": "w_x"}, ValueError, r"config.lora.targets='w_x': \['w_x'\] are no weight names"),
        ({"targets": "w_q,,w_v"}, ValueError, r"config.lora.targets='w_q,,w_v': \[''\] are no weight names"),
        ({"targets": ["w_q"]}, TypeError, r"config.lora.targets must be a string"),
        ({"dropout": 1.0}, ValueError, r"`config.lora.dropout` must be a finite number in \[0, 1\)"),
        ({"use_rslora": "yes"}, TypeError, r"`config.lora.use_rslora` must be True or False"),
        ({"base_dtype": "int8"}, ValueError, r"config.lora.base_dtype='int8'; choose one of"),
        ({"rank": 0, "targets": "w_q"}, ValueError, r"config.lora.targets='w_q' set without LoRA"),
        ({"init_from": "", "export_merged": True}, ValueError, r"export_merged=True needs config.init_from"),
    ],
)
def test_bad_lora_settings_are_named_before_the_data_is_read(tmp_path, settings, error, message):
    config = lora_config(tmp_path / "no such file.txt").to_dict()  # reading the data would fail
    settings = dict(settings)
    config["init_from"] = settings.pop("init_from", config["init_from"])
    config["lora"].update(settings)
    with pytest.raises(error, match=message):
        build_run(config)
    with pytest.raises(error, match=message):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("base", "targets", "message"),
    [
        (LLAMA, "w_in", r"config.lora.targets='w_in': No weight of this model matches targets=\('w_in',\)"),
        (GPT2, "w_q,w_v", r"have no module of their own in peft's layout .* target all three of w_q, w_k, w_v"),
    ],
)
def test_targets_the_checkpoint_cannot_take_are_refused_before_training(corpus, base, targets, message):
    with pytest.raises(ValueError, match=message):
        build_run(lora_config(corpus, base=base, targets=targets))


# slow: a subprocess that loads and compiles again (~5 s); from_pretrained(adapter=) itself runs by default above,
# and the command's wiring without an adapter in tests/pretrained/test_pretrained.py
@pytest.mark.slow
def test_jaxformer_sample_generates_with_an_adapter(reference):
    prompt = "to be or"
    model = pretrained.from_pretrained(LLAMA, adapter=reference / "adapter")
    tokenizer = pretrained.load_tokenizer(LLAMA)
    want = sample_text(model, tokenizer, prompt, 8, seed=0, temperature=0.0)
    command = [sys.executable, "-m", "jaxformer.cli", "sample", f"--pretrained={LLAMA}"]
    out = subprocess.run(
        [*command, f"--adapter={reference / 'adapter'}", f"--prompt={prompt}", "--num_tokens=8", "--temperature=0"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.rstrip("\n") == want.rstrip("\n")
    without = [sys.executable, "-m", "jaxformer.cli", "sample", f"--workdir={reference}", f"--adapter={LLAMA}"]
    refused = subprocess.run(without, capture_output=True, text=True)
    assert refused.returncode != 0 and "--adapter needs --pretrained" in refused.stderr


@functools.cache
def multidevice_runs(corpus: str, meshes: tuple[str, ...]) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / "lora_multidevice_run.py"), corpus, *meshes],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_lora_on_8_devices_trains_as_on_one_with_adapters_sharded_like_their_weights(corpus):
    """data=2 x fsdp=2 x tensor=2 (adapter dropout on): the losses and gradient norms of 4 steps match one
    device's; A of the query projection [embed, r] is split over fsdp like the weight's input axis, B [r, heads,
    head_dim] over tensor like its heads, and Adam's moments follow."""
    runs = multidevice_runs(str(corpus), ("1,1,1", "2,2,2"))
    one, eight = runs["1,1,1"], runs["2,2,2"]
    assert eight["devices"] == 8 and one["devices"] == 1
    assert eight["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert eight["grad_norms"] == pytest.approx(one["grad_norms"], rel=1e-5)
    assert one["base_unchanged"] and eight["base_unchanged"]  # the frozen checkpoint weights, bit for bit
    specs = eight["specs"]
    assert specs["w_q"] == ["fsdp", "tensor", None] and specs["trained"] == ["LoRAParam"]
    assert specs["a"] == ["fsdp", None] and specs["b"] == [None, "tensor", None]
    assert {'["fsdp", null]', '[null, "tensor", null]'} <= set(specs["opt"])


@pytest.mark.slow  # two more compiled programs on 8 devices (~20 s); the jit mesh above runs by default
@pytest.mark.parametrize("mode", ["8,1,1:pmap", "8,1,1:shard_map"])
def test_lora_trains_with_pmap_and_shard_map_as_on_one_device(corpus, mode):
    runs = multidevice_runs(str(corpus), ("1,1,1:nodropout", "8,1,1:pmap", "8,1,1:shard_map"))
    assert runs[mode]["devices"] == 8
    assert runs[mode]["losses"] == pytest.approx(runs["1,1,1:nodropout"]["losses"], rel=1e-5)
    assert runs[mode]["grad_norms"] == pytest.approx(runs["1,1,1:nodropout"]["grad_norms"], rel=1e-5)
    assert runs[mode]["base_unchanged"]


# -- the recipes ---------------------------------------------------------------------------------------------------

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "pretrained"


@pytest.mark.slow  # the whole loop, twice compiled (train and sample): ~17 s
def test_the_tiny_lora_recipe_trains_its_adapters_and_the_loss_falls(tmp_path, corpus):
    """`lora_tiny_cpu` as it ships (its fixture base, rank 4, lr 1e-2), on a small corpus for 60 steps: the loss
    falls, and it writes the adapter and the merged model."""
    config = load_config("lora_tiny_cpu")
    config.init_from = str(FIXTURES / "llama")  # the recipe's path is relative to the repository's root
    config.data.update(source="text_file", path=str(corpus), tokenizer=f"hf:{FIXTURES / 'llama'}")
    config.update(num_steps=60, log_every=10, eval_every=60, checkpoint_every=60)
    config.sample.num_tokens = 4
    train_and_evaluate(config, str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [row["train_loss"] for row in rows if "train_loss" in row]
    assert losses[-1] < losses[0] - 0.3, losses
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "merged" / "model.safetensors").is_file()


def test_the_gemma_lora_recipe_builds_its_run_on_a_gemma_2_checkpoint(corpus):
    """`gemma_lora_shakespeare` on the Gemma 2 fixture (soft-caps, local / global layers): its run has float32
    rank-8 adapters on every linear layer over a bfloat16 base."""
    gemma2 = FIXTURES / "gemma2"
    config = load_config("gemma_lora_shakespeare")
    config.init_from = str(gemma2)
    config.data.update(source="text_file", path=str(corpus), tokenizer=f"hf:{gemma2}", seq_len=16)
    config.update(batch_size=4, warmup_steps=0)
    run = build_run(config)
    assert run.model_config.param_dtype == jnp.bfloat16 and run.model_config.layer_types is not None
    model = run.make_model()
    adapters = list(lora.adapters(model))
    assert {name for *_, name, _ in adapters} == {"w_q", "w_k", "w_v", "w_o", "w_gate", "w_up", "w_out"}
    assert all(a.rank == 8 and a.a.dtype == jnp.float32 for *_, a in adapters)


def test_a_pretrained_model_with_adapters_gives_a_state_placed_on_one_mesh():
    """from_pretrained places the weights; add_adapters puts each adapter beside its weight and create_train_state
    the step counter and optax's counts on the same mesh, so that a jitted step compiles once (its outputs come
    back placed: an input first seen unplaced would make it compile again)."""
    model = pretrained.from_pretrained(FIXTURES / "llama")
    lora.add_adapters(model, rank=4, alpha=8, rngs=nnx.Rngs(0))
    _, state = create_train_state(model, optax.adam(1e-3))
    shardings = [x.sharding for x in jax.tree.leaves(state)]
    assert all(x.committed for x in jax.tree.leaves(state))
    assert len({s.mesh for s in shardings}) == 1 and all(isinstance(s, jax.sharding.NamedSharding) for s in shardings)
