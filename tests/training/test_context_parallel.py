"""Context parallelism: the `context` mesh axis splits sequences, and self-attention runs as ring attention.

The end-to-end check trains a tiny rotary GPT (a sliding-window layer and a global one, grouped-query heads,
packed rows with segment ids, or plain rows with the model's default positions and soft-capped logits) on 8 fake
CPU devices in one subprocess (context_parallel_run.py) and compares each mesh's losses, gradient norms and eval
loss with one device's, in both sequence layouts.
"""

import functools
import json
import math
import pathlib
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxformer import nn, ops, sharding
from jaxformer.configs import load_config
from jaxformer.nn.constraints import activation_sharding
from jaxformer.training import defaults
from jaxformer.training.memory import memory_report
from jaxformer.training.runner import StepRunner
from tests.training.cli_runs import train_metrics

HERE = pathlib.Path(__file__).resolve().parent
# mesh[:options] (context_parallel_run.py): zigzag unless "contiguous"; "plain" rows use the default positions.
# Default: zigzag with packed rows, zigzag with the default positions, a soft-cap and sinks (one subprocess, 4
# programs);
# the contiguous layout trains end to end with -m slow (and its positions and masks are checked in tests/ops).
CONTEXT_RUNS = ("data=2,context=4", "context=8:plain:softcap:sinks")
SLOW_CONTEXT_RUNS = (
    "context=8:contiguous",
    "data=2,context=4:contiguous:plain",
    "data=2,tensor=2,context=2",
    "context=4:plain:softcap",
    "context=8:alibi",  # packed rows: ALiBi on the per-document positions
    "data=2,context=4:contiguous:plain:alibi",
    "data=2,context=4:moe",  # a mixture of experts: each device routes its slice of its rows' tokens
    "expert=2,context=4:moe",
)


@functools.cache
def context_runs(corpus: str, meshes: tuple[str, ...]) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / "context_parallel_run.py"), corpus, *meshes],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def reference_of(run: str) -> str:
    """The one-device run with the same rows and model: mesh data=1, the layout option dropped."""
    options = [o for o in run.split(":")[1:] if o != "contiguous"]
    return ":".join(["data=1", *options])


def with_references(runs: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*map(reference_of, runs), *runs]))


def _assert_same_training(runs, run):
    got, reference = runs[run], runs[reference_of(run)]
    assert got["devices"] == math.prod(int(p.split("=")[1]) for p in run.split(":")[0].split(","))
    assert reference["devices"] == 1
    assert len(reference["losses"]) == 6 and reference["losses"][-1] < reference["losses"][0]
    if "plain" not in run:
        assert reference["max_segments"] > 1  # the rows are packed: segment ids reach ring attention
    assert got["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    assert got["grad_norms"] == pytest.approx(reference["grad_norms"], rel=1e-5)
    assert got["eval_loss"] == pytest.approx(reference["eval_loss"], rel=1e-5)
    assert got["balance_losses"] == pytest.approx(reference["balance_losses"], rel=1e-5)
    if "moe" in run:
        assert min(reference["balance_losses"]) > 0
    assert got["ring"] and not reference["ring"]  # ring attention's ppermute is in the step
    assert got["batch_spec"] == [["data", "fsdp", "expert"], "context"]  # tokens split on T
    # Device 0 holds chunk 0 of each sequence, and with zigzag also the last chunk (of 2c).
    inputs, c = got["inputs"], dict(p.split("=") for p in run.split(":")[0].split(",")).get("context")
    c = int(c)
    chunk = len(inputs) // (2 * c)
    if got["layout"] == "zigzag":
        assert got["device0_inputs"] == inputs[:chunk] + inputs[-chunk:]
    else:
        assert got["device0_inputs"] == inputs[: 2 * chunk]


@pytest.mark.parametrize("run", CONTEXT_RUNS)
def test_context_parallel_meshes_train_to_the_same_losses_as_one_device(corpus, run):
    runs = context_runs(str(corpus), with_references(CONTEXT_RUNS))
    assert runs[run]["layout"] == ("contiguous" if "contiguous" in run else "zigzag")  # zigzag by default
    _assert_same_training(runs, run)


@pytest.mark.slow
@pytest.mark.parametrize("run", SLOW_CONTEXT_RUNS)
def test_more_context_parallel_meshes_train_to_the_same_losses(corpus, run):
    # data=2,tensor=2,context=2: heads split over tensor (4 query heads over 2 key/value heads, 2 ways) inside the
    # ring's shard_map.
    _assert_same_training(context_runs(str(corpus), with_references(SLOW_CONTEXT_RUNS)), run)


@pytest.mark.slow  # two CLI runs (~30 s); the default run compares the same steps through the runner
def test_jaxformer_train_with_a_context_axis_logs_the_metrics_of_one_device(tmp_path, corpus):
    """`jaxformer train --config.mesh.context=4` on 8 CPU devices (data 2 x context 4, zigzag): the loop's checks,
    evaluation, checkpoints and sampling run with the sequence split, and every metrics row equals one device's."""
    meshes = {"one": ["--config.mesh.data=1"], "context": ["--config.mesh.data=2", "--config.mesh.context=4"]}
    rows = {}
    for name, mesh in meshes.items():
        rows[name] = train_metrics(tmp_path / name, corpus, mesh, devices=1 if name == "one" else 8, seq_len=32)
        assert (tmp_path / name / "samples.txt").exists()
    assert [r["step"] for r in rows["one"]] == [4, 8] and "val_loss" in rows["one"][-1]
    for want, got in zip(rows["one"], rows["context"], strict=True):
        assert got == pytest.approx(want, rel=1e-5)


# -- the mesh and the rules ----------------------------------------------------------------------------------------


def abstract_mesh(**sizes) -> AbstractMesh:
    shape = sharding.mesh_shape(sizes, int(np.prod(list(sizes.values()))))
    return AbstractMesh(shape, sharding.MESH_AXES)


def test_the_context_axis_is_a_mesh_axis_of_size_one_by_default():
    assert sharding.MESH_AXES[-1] == "context" and "context" not in sharding.BATCH_AXES
    assert defaults.default_config().mesh.context == 1
    assert sharding.mesh_shape({"data": -1, "context": 4}, 8) == (2, 1, 1, 1, 4)
    assert sharding.make_mesh(1, devices=jax.devices()[:1]).shape["context"] == 1
    with pytest.raises(ValueError, match=r"x context 8, or set one axis"):
        sharding.mesh_shape({"data": 2, "context": 2}, 8)
    with pytest.raises(ValueError, match=r"`config.mesh.context` must be a positive int or -1"):
        sharding.mesh_shape({"context": 0}, 8)


def test_activations_and_token_batches_are_split_on_the_sequence_not_the_batch():
    mesh = abstract_mesh(data=2, context=4)
    assert sharding.logical_to_spec(("batch", "length", "embed"), (8, 32, 16), mesh) == P("data", "context", None)
    # A length the context axis does not divide is replicated (e.g. an eval batch of another length).
    assert sharding.logical_to_spec(("batch", "length", "embed"), (8, 30, 16), mesh) == P("data", None, None)
    assert sharding.batch_sharding(mesh, (8, 32)).spec == P(sharding.BATCH_AXES, "context")
    for shape in [(8,), (8, 30), (8, 28, 28, 1)]:  # labels, a length it does not divide, images
        assert sharding.batch_sharding(mesh, shape).spec == P(sharding.BATCH_AXES)
    assert sharding.batch_sharding(mesh).spec == P(sharding.BATCH_AXES)
    # The batch is not split over context.
    sharding.check_batch_size(2, mesh)
    # Without context parallelism token arrays are split on the batch only, as before.
    assert sharding.batch_sharding(abstract_mesh(data=8), (8, 32)).spec == P(sharding.BATCH_AXES)


def test_per_device_modes_refuse_a_context_axis():
    mesh = types.SimpleNamespace(shape={"data": 2, "context": 4})
    for parallel in ("pmap", "shard_map"):
        with pytest.raises(ValueError, match=r"config.mesh.context=4 .* needs parallel='jit'"):
            StepRunner(parallel, None, None, None, None, mesh=mesh)


# -- the attention layer ----------------------------------------------------------------------------------------------


def _context_hints(mesh):
    """Activation hints that split "length" over the (size-1) context axis of `mesh`: the ring path on one device."""
    return activation_sharding(
        lambda axes, shape: NamedSharding(mesh, P(*("context" if a == "length" else None for a in axes)))
    )


@pytest.mark.parametrize("positional", ["rope", "alibi"])
def test_attention_under_context_hints_runs_ring_attention_with_the_layers_masks(monkeypatch, positional):
    calls = []
    ring_attention = ops.ring_attention
    monkeypatch.setattr(ops, "ring_attention", lambda *a, **kw: calls.append(kw) or ring_attention(*a, **kw))
    mesh = sharding.make_mesh(1, devices=jax.devices()[:1])
    layer = nn.MultiHeadAttention(
        32, 4, num_kv_heads=2, positional=positional, sliding_window=5, scale=0.3, rngs=nnx.Rngs(0)
    )
    x = jax.random.normal(jax.random.key(1), (2, 12, 32))
    ids = jnp.asarray(np.repeat([[1, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]], 2, axis=0), jnp.int32)
    # per-document positions, 2 apart (ALiBi measures these, not the global ones)
    positions = 2 * jnp.asarray(np.repeat([[0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]], 2, axis=0), jnp.int32)
    expected = layer(x, is_causal=True, segment_ids=ids, positions=positions)

    def ring(x):
        with _context_hints(mesh):
            return layer(x, is_causal=True, segment_ids=ids, positions=positions)

    with sharding.use_mesh(mesh):
        out = jax.jit(ring)(x)
    ring_args = dict(axis_name="context", causal=True, window=5, scale=0.3, logit_softcap=None, layout="contiguous")
    if positional == "alibi":
        ring_args.update(alibi_slopes=calls[0]["alibi_slopes"], positions=calls[0]["positions"])
        np.testing.assert_array_equal(calls[0]["alibi_slopes"], ops.alibi_slopes(4))
    assert calls == [dict(**ring_args, segment_ids=calls[0]["segment_ids"])]
    np.testing.assert_allclose(out, expected, atol=2e-6)


def test_a_mixture_of_experts_routes_each_devices_slice_of_the_sequence(monkeypatch):
    """Under context parallelism the MoE layer's shard_map splits the flattened [B T] tokens over the batch axes and
    then the sequence's axis (here: only "context"), so no device routes another's tokens; the output is the
    layer's own."""
    specs = []
    shard_map = jax.shard_map
    monkeypatch.setattr(jax, "shard_map", lambda f, **kw: specs.append(kw["in_specs"]) or shard_map(f, **kw))
    mesh = sharding.make_mesh(1, devices=jax.devices()[:1])
    layer = nn.MoEFeedForward(16, 32, num_experts=4, experts_per_token=2, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (2, 8, 16))
    expected = layer(x)

    @nnx.jit  # (the layer records its routing statistics: a traced module, not a closure)
    def routed(layer, x):
        with _context_hints(mesh):
            return layer(x)

    with sharding.use_mesh(mesh):
        out = routed(layer, x)
    assert specs and specs[0][0] == P(("context",))
    np.testing.assert_allclose(out, expected, atol=2e-6)


@pytest.mark.parametrize(
    ("options", "call", "message"),
    [
        (dict(dropout_rate=0.1), {}, r"dropout_rate=0.1 \(attention dropout\)"),
        ({}, dict(mask=jnp.ones((2, 1, 8, 8), bool)), r"an array `mask`"),
        ({}, dict(decode=True), r"decode=True \(a KV cache\)"),
    ],
)
def test_what_ring_attention_cannot_do_is_refused_by_name(options, call, message):
    mesh = sharding.make_mesh(1, devices=jax.devices()[:1])
    layer = nn.MultiHeadAttention(32, 4, rngs=nnx.Rngs(0), **options)
    if call.get("decode"):
        layer.init_cache(2, 8)
    x = jnp.ones((2, 8, 32))
    with sharding.use_mesh(mesh), _context_hints(mesh):
        with pytest.raises(ValueError, match=r"Context parallelism .* does not support " + message):
            layer(x, is_causal=True, **call)


# -- memory -------------------------------------------------------------------------------------------------------


def test_context_parallelism_divides_the_activation_estimate(corpus):
    def report(num_devices, attention_impl="auto", **mesh):
        config = load_config("shakespeare_char_cpu")
        config.data.update(source="text_file", path=str(corpus))
        config.update(batch_size=8)
        config.mesh.update(data=1, **mesh)
        config.model.attention_impl = attention_impl
        return memory_report(config, num_devices=num_devices)

    one, split, blockwise = report(1), report(8, context=8), report(1, attention_impl="blockwise")
    assert split["mesh"]["context"] == 8
    assert split["param_bytes_per_device"] == one["param_bytes_per_device"]  # parameters are not split over context
    # One device with attention_impl "auto" counts the T x T scores; ring attention keeps none, and T / 8 tokens.
    assert one["attention"] == "auto" and one["attention_score_bytes_per_device"] > 0
    assert split["attention"] == "ring" and split["attention_score_bytes_per_device"] == 0
    linear = one["activation_bytes_per_device"] - one["attention_score_bytes_per_device"]
    assert split["activation_bytes_per_device"] == pytest.approx(linear / 8, rel=1e-6)
    # A blockwise kernel on one device keeps no scores either.
    assert blockwise["attention_score_bytes_per_device"] == 0
    assert blockwise["activation_bytes_per_device"] == linear


# -- the training config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "model", "message"),
    [
        (dict(task="mlm"), {}, r"config.mesh.context=4 is for task='lm'"),
        (dict(parallel="pmap"), {}, r"config.mesh.context=4 needs parallel='jit'"),
        (dict(seq_len=36), {}, r"seq_len=36 is not divisible by 8: config.mesh.context=4 cuts every sequence into 8"),
        (
            dict(seq_len=30, sequence_layout="contiguous"),
            {},
            r"seq_len=30 is not divisible by 4: .* \(config.sequence_layout='contiguous'\)",
        ),
        (dict(sequence_layout="ring"), {}, r"config.sequence_layout='ring'; choose one of \('contiguous', 'zigzag'\)"),
        ({}, dict(attention_dropout_rate=0.1), r"does not support model.attention_dropout_rate > 0 yet"),
    ],
)
def test_the_loop_refuses_what_context_parallelism_cannot_train_by_name(change, model, message):
    from jaxformer.models import ModelConfig
    from jaxformer.training.loop import check_context_config

    config = defaults.default_config()
    config.data.seq_len = change.pop("seq_len", 32)
    config.update(change)
    model_config = ModelConfig.variant("gpt2-tiny").replace(**{"positional": "rope", **model})
    mesh = abstract_mesh(data=2, context=4)
    with pytest.raises(ValueError, match=message):
        check_context_config(config, mesh, model_config)
    # fine: lm, jit, 64 / (2 x 4)
    check_context_config(defaults.default_config(), mesh, ModelConfig.variant("gpt2-tiny"))
    check_context_config(config, abstract_mesh(data=8), model_config)  # no context axis: nothing to check
