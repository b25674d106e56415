"""Sharding: the mesh from config, the logical-axis rules, and equal training on every mesh (8 fake CPU devices)."""

import json
import pathlib
import subprocess
import sys
import types

import pytest
from jax.sharding import PartitionSpec as P

from jaxformer.training import sharding

HERE = pathlib.Path(__file__).resolve().parent
MESHES = ("1,1,1", "8,1,1", "1,8,1", "2,2,2")  # data, fsdp, tensor


@pytest.fixture(scope="module")
def runs(corpus):
    """Ten training steps of a tiny GPT (dropout on) on each mesh, in one subprocess with 8 CPU devices."""
    out = subprocess.run(
        [sys.executable, str(HERE / "multidevice_run.py"), str(corpus), *MESHES],
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
    assert len(reference) == 10 and reference[-1] < reference[0]
    assert runs[mesh]["losses"] == pytest.approx(reference, rel=1e-5)


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


def fake_mesh(data=1, fsdp=1, tensor=1):
    return types.SimpleNamespace(shape={"data": data, "fsdp": fsdp, "tensor": tensor})


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
        ({"tensor": 0}, r"config.mesh.tensor must be a positive int or -1"),
    ],
)
def test_bad_mesh_configs_are_named(sizes, message):
    with pytest.raises(ValueError, match=message):
        sharding.mesh_shape(sizes, 8)


def test_mesh_shape_fills_the_rest():
    assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)
    assert sharding.mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)


def test_batch_not_divisible_by_the_data_axes_is_an_error():
    with pytest.raises(ValueError, match=r"config.batch_size=12 is not divisible by the data x fsdp mesh axes \(8"):
        sharding.check_batch_size(12, fake_mesh(data=2, fsdp=4))
    sharding.check_batch_size(12, fake_mesh(data=2, tensor=4))  # tensor does not split the batch


def test_the_loop_rejects_a_mesh_larger_than_the_machine_before_compiling(tmp_path, corpus):
    from jaxformer.training.defaults import load_config
    from jaxformer.training.loop import train_and_evaluate

    config = load_config(HERE.parents[1] / "experiments" / "configs" / "shakespeare_char_cpu.py")
    config.data.update(source="text_file", path=str(corpus))
    config.mesh.data = 2  # this process sees one CPU device
    with pytest.raises(ValueError, match=r"config.mesh \{'data': 2, 'fsdp': 1, 'tensor': 1\} uses 2 devices but 1"):
        train_and_evaluate(config, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def cross_mesh(corpus, directory, source, *targets):
    out = subprocess.run(
        [
            sys.executable,
            str(HERE / "multidevice_run.py"),
            "--cross-mesh",
            str(corpus),
            str(directory),
            source,
            *targets,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(("source", "targets"), [("1,8,1", ("1,1,1", "1,4,2", "8,1,1")), ("1,1,1", ("1,8,1",))])
def test_a_checkpoint_restores_onto_another_mesh_and_trains_on_identically(tmp_path, corpus, source, targets):
    """fsdp 8 -> 1 device, fsdp 4 x tensor 2 and data 8; 1 device -> fsdp 8: restored against the new mesh's
    shardings, the parameters are bit-identical and the next 5 losses match the run that never stopped."""
    result = cross_mesh(corpus, tmp_path / "checkpoints", source, *targets)
    for target in targets:
        assert result[target]["identical_params"], target
        assert result[target]["target_shardings"], target
        assert result[target]["losses"] == pytest.approx(result[source], rel=1e-5), target
