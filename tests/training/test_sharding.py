"""Sharding: the mesh from config, the logical-axis rules, and equal training on every mesh (8 fake CPU devices)."""

import functools
import json
import pathlib
import subprocess
import sys
import types

import pytest
from jax.sharding import PartitionSpec as P

from jaxformer import sharding
from tests.training.cli_runs import train_metrics

HERE = pathlib.Path(__file__).resolve().parent
MESHES = ("1,1,1", "8,1,1", "1,8,1", "2,2,2")  # data, fsdp, tensor (parallel="jit")
# A tiny GPT with a mixture of 4 experts (top-2, one dense layer, balance and z losses on, dropout off) on one
# device and on 8 with the experts split 4 and 2 ways: data, fsdp, tensor, expert.
MOE_MESHES = ("1,1,1,1:moe", "2,1,1,4:moe", "1,2,2,2:moe")
# pmap / shard_map draw the same dropout stream on every device, so they are compared with dropout off.
PER_DEVICE = ("8,1,1:pmap", "8,1,1:shard_map")


# Checkpoints restored onto other meshes (the source's run saved after 3 of its 6 steps): fsdp 8 -> 1 device and
# data 2 x fsdp 2 x tensor 2; 1 device -> fsdp 8 and data 8. The targets train with the steps compiled for MESHES:
# each restore costs a save and a restore, no compile.
RESTORES = ("1,8,1->1,1,1", "1,8,1->2,2,2", "1,1,1->1,8,1", "1,1,1->8,1,1")


@pytest.fixture
def runs(corpus):
    """Six training steps of a tiny GPT (dropout on) on each mesh, and of the MoE one on its meshes, and the
    checkpoint restores, in one subprocess with 8 CPU devices."""
    return multidevice_runs(str(corpus), MESHES + MOE_MESHES + RESTORES)


@pytest.fixture
def per_device_runs(corpus):
    """The same without dropout on one device and under pmap and shard_map on 8."""
    return multidevice_runs(str(corpus), ("1,1,1:nodropout", *PER_DEVICE))


# Once per session: `make test` sends a whole file to one worker (--dist loadfile), and a module fixture would not do,
# as xdist tears those down whenever a worker's queue runs dry.
@functools.cache
def multidevice_runs(corpus: str, meshes: tuple[str, ...]) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / "multidevice_run.py"), str(corpus), *meshes],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mesh", MESHES[1:])
def test_every_mesh_trains_to_the_same_losses_as_one_device(runs, mesh):
    assert runs[mesh]["devices"] == 8 and runs["1,1,1"]["devices"] == 1
    reference = runs["1,1,1"]["losses"]
    assert len(reference) == 6 and reference[-1] < reference[0]
    assert runs[mesh]["losses"] == pytest.approx(reference, rel=1e-5)
    assert runs[mesh]["grad_norms"] == pytest.approx(runs["1,1,1"]["grad_norms"], rel=1e-5)


@pytest.mark.slow  # three more compiled programs on 8 devices (~15 s); pmap's step runs in test_compiles_once.py
@pytest.mark.parametrize("mode", PER_DEVICE)
def test_pmap_and_shard_map_data_parallelism_train_to_the_same_losses(per_device_runs, mode):
    runs = per_device_runs
    assert runs[mode]["devices"] == 8
    reference = runs["1,1,1:nodropout"]
    assert runs[mode]["losses"] == pytest.approx(reference["losses"], rel=1e-5)
    # Gradient clipping and Adam hide a wrongly scaled gradient from the losses; the norm shows it.
    assert runs[mode]["grad_norms"] == pytest.approx(reference["grad_norms"], rel=1e-5)


def test_shard_map_refuses_a_mesh_that_is_not_data_only():
    from jaxformer.training.runner import make_shard_map_train_step

    with pytest.raises(
        ValueError, match=r"parallel='shard_map' is data parallelism only; the mesh also splits \{'fsdp': 2\}"
    ):
        make_shard_map_train_step(None, None, None, None, mesh=fake_mesh(data=4, fsdp=2))


def test_parameters_are_sharded_as_the_rules_say(runs):
    assert runs["8,1,1"]["specs"]["w_in"] == [None, None]  # pure data parallelism replicates parameters
    fsdp = runs["1,8,1"]["specs"]
    assert fsdp["w_in"] == ["fsdp", None] and fsdp["w_out"] == [None, "fsdp"]  # embed -> fsdp
    full = runs["2,2,2"]["specs"]
    assert full["w_qkv"] == ["fsdp", "tensor", None]  # [embed, heads, head_dim]
    assert full["w_o"] == ["tensor", None, "fsdp"]  # [heads, head_dim, embed]
    assert full["w_in"] == ["fsdp", "tensor"] and full["w_out"] == ["tensor", "fsdp"]  # mlp -> tensor
    assert full["embedding"] == ["tensor", "fsdp"]  # [vocab, embed]
    # Adam's moments are sharded like the parameters they track.
    assert ["fsdp", "tensor"] in runs["2,2,2"]["opt_specs"] and ["tensor", "fsdp"] in runs["2,2,2"]["opt_specs"]


@pytest.mark.parametrize(
    "mesh, spec",
    [
        ("1,1,1", "[{}, {}, {}]"),
        ("8,1,1", '[{"data"}, {}, {}]'),
        ("1,8,1", '[{"fsdp"}, {}, {}]'),
        ("2,2,2", '[{"data", "fsdp"}, {}, {}]'),
    ],
)
def test_the_residual_stream_is_pinned_to_the_batch_sharding(runs, mesh, spec):
    # Every [batch, length, embed] constraint in the compiled step splits the batch over data x fsdp only: embed
    # stays whole although the rules send it to fsdp for parameters (one mesh axis per array, batch first).
    assert runs[mesh]["residual_constraints"] == [spec]


def fake_mesh(data=1, fsdp=1, tensor=1, expert=1):
    return types.SimpleNamespace(shape={"data": data, "fsdp": fsdp, "tensor": tensor, "expert": expert})


def test_logical_axes_map_to_mesh_axes():
    mesh = fake_mesh(2, 2, 2)
    assert sharding.logical_to_spec(("embed", "heads", "head_dim"), (64, 4, 16), mesh) == P("fsdp", "tensor", None)
    # The layer axis of scanned parameters has no name and is replicated.
    assert sharding.logical_to_spec(("embed", "mlp"), (6, 64, 256), mesh) == P(None, "fsdp", "tensor")
    # A size the mesh does not divide is replicated (65 characters), a mesh axis of size 1 is left out.
    assert sharding.logical_to_spec(("vocab", "embed"), (65, 64), mesh) == P(None, "fsdp")
    assert sharding.logical_to_spec(("vocab", "embed"), (64, 64), fake_mesh(8)) == P(None, None)
    # kv_heads (e.g. multi-query, K=1) may be replicated.
    assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (64, 1, 16), mesh) == P("fsdp", None, None)


def test_heads_not_divisible_by_the_tensor_axis_is_an_error():
    with pytest.raises(
        ValueError, match=r"The 'heads' dimension \(6\) is not divisible by the mesh axes \('tensor',\)"
    ):
        sharding.logical_to_spec(("embed", "heads", "head_dim"), (64, 6, 16), fake_mesh(tensor=4))


@pytest.mark.parametrize(
    ("sizes", "message"),
    [
        ({"data": 3}, r"uses 3 devices but 8 are available"),
        ({"data": -1, "fsdp": 3}, r"do not divide the 8 devices"),
        ({"data": -1, "fsdp": -1}, r"At most one config.mesh axis may be -1"),
        ({"model": 2}, r"unknown axes \['model'\]"),
        ({"tensor": 0}, r"`config.mesh.tensor` must be a positive int or -1 \(the rest\); got 0"),
        ({"data": 2.0}, r"`config.mesh.data` must be a positive int or -1 \(the rest\); got 2.0"),
    ],
)
def test_bad_mesh_configs_are_named(sizes, message):
    with pytest.raises(ValueError, match=message):
        sharding.mesh_shape(sizes, 8)


def test_a_mesh_size_that_is_no_number_is_a_type_error():
    with pytest.raises(TypeError, match=r"`config.mesh.fsdp` must be a positive int or -1 \(the rest\); got '2'"):
        sharding.mesh_shape({"fsdp": "2"}, 8)


def test_mesh_shape_fills_the_rest():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2, 1, 1)
    assert sharding.mesh_shape({"fsdp": -1}, 8) == (1, 8, 1, 1, 1)
    assert sharding.mesh_shape({"data": -1, "expert": 4}, 8) == (2, 1, 1, 4, 1)


def test_batch_not_divisible_by_the_data_axes_is_an_error():
    with pytest.raises(
        ValueError, match=r"config.batch_size=12 is not divisible by the data x fsdp x expert mesh axes \(8"
    ):
        sharding.check_batch_size(12, fake_mesh(data=2, fsdp=4))
    sharding.check_batch_size(12, fake_mesh(data=2, tensor=4))  # tensor does not split the batch


@pytest.mark.parametrize("mesh", MOE_MESHES[1:])
def test_expert_parallel_meshes_train_to_the_same_losses_as_one_device(runs, mesh):
    one, run = runs[MOE_MESHES[0]], runs[mesh]
    assert run["devices"] == 8 and one["devices"] == 1 and one["losses"][-1] < one["losses"][0]
    assert run["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert run["grad_norms"] == pytest.approx(one["grad_norms"], rel=1e-5)
    assert len(one["balance_losses"]) == 6 and run["balance_losses"] == pytest.approx(one["balance_losses"], rel=1e-5)
    # The stacked experts [E, D, F] are split over the expert axis (with embed -> fsdp, mlp -> tensor); the
    # router [D, E] is not (its E is a plain axis).
    expert_ways = mesh.split(":")[0].split(",")[3]
    want = {"4": ["expert", None, None], "2": ["expert", "fsdp", "tensor"]}[expert_ways]
    assert run["specs"]["experts_up"] == want
    assert run["specs"]["router"] == [None if expert_ways == "4" else "fsdp", None]


def test_the_loop_rejects_a_mesh_larger_than_the_machine_before_compiling(tmp_path, corpus):
    from jaxformer.configs import load_config
    from jaxformer.training.loop import train_and_evaluate

    config = load_config("shakespeare_char_cpu")
    config.data.update(source="text_file", path=str(corpus))
    config.mesh.data = 2  # this process sees one CPU device
    with pytest.raises(
        ValueError,
        match=r"config.mesh \{'data': 2, 'fsdp': 1, 'tensor': 1, 'expert': 1, 'context': 1\} uses 2 devices but 1",
    ):
        train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("restore", RESTORES)
def test_a_checkpoint_restores_onto_another_mesh_and_trains_on_identically(runs, restore):
    """Restored against the new mesh's shardings, the parameters are bit-identical to those saved, and the next 3
    losses match those of the run that never stopped."""
    source, result = restore.split("->")[0], runs[restore]
    assert result["identical_params"] and result["target_shardings"]
    assert len(result["losses"]) == 3
    assert result["losses"] == pytest.approx(runs[source]["losses"][3:], rel=1e-5)


@pytest.mark.slow  # three CLI runs on 8 devices (~70 s); the same steps are compared directly in the default run
def test_the_loop_trains_identically_with_jit_pmap_and_shard_map(tmp_path, corpus):
    """`jaxformer train --config.parallel=...` end to end on 8 CPU devices (dropout off): equal metrics rows."""
    meshes = {"jit": ["--config.mesh.data=1", "--config.mesh.fsdp=-1"], "pmap": [], "shard_map": []}  # FSDP for jit
    rows = {
        parallel: train_metrics(tmp_path / parallel, corpus, [*mesh, f"--config.parallel={parallel}"])
        for parallel, mesh in meshes.items()
    }
    assert [r["step"] for r in rows["jit"]] == [4, 8] and "val_loss" in rows["jit"][-1]
    for parallel in ("pmap", "shard_map"):
        for want, got in zip(rows["jit"], rows[parallel], strict=True):
            assert got == pytest.approx(want, rel=1e-5), parallel
