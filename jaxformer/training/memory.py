"""How much memory a run needs per device, from shapes alone: `jaxformer memory --config ... [--devices N]`; and
what an architecture's KV cache holds: `jaxformer memory --model gemma3-1b --cache_len 32768` (`kv_cache_report`).

Parameters and optimizer state are counted exactly: every array of the abstract TrainState (`nnx.eval_shape`,
`jax.eval_shape` of the optimizer's init, nothing allocated) divided by the number of devices its sharding under
`LOGICAL_AXIS_RULES` splits it over. Activations are an estimate: what the backward pass keeps per layer,
following Korthikanti et al. 2022 ("Reducing activation recomputation", eq. 2 with tensor parallelism t):

    per layer  T * b * D * (10 + 24 / t + 5 * N * T / (D * t))   bytes at 16 bits; x2 at 32 bits
    plus the logits and their gradient, 2 * b * T * V / t * 4 bytes (float32),

with b the per-device batch (B / (data * fsdp * expert)), T the sequence length, D the width, N the heads. The
term 5 N T / D is attention's T x T scores, probabilities and dropout mask: it counts only for kernels that keep
them (`model.attention_impl` "xla" or "jax_nn", and "auto", which is that on short CPU sequences: an upper bound
where "auto" picks a flash kernel). Blockwise, cuDNN and Pallas kernels keep none, and neither does ring attention:
with context parallelism (`mesh.context` = c > 1) each device holds T / c of every sequence (T above is that share)
and its scores only in `[T / c, block]` tiles. With
`model.remat` a layer keeps less (units of T * b * D bytes at 16 bits, a = N T / D):

    full            2                 the block's input only
    dots_no_batch   2 + 18 / t        + the outputs of q, k, v (6), the attention output projection (2), the FFN's
                                        two matmuls (8 + 2)
    dots            2 + 20 / t + 2a/t + attention's scores and its probabilities-times-values

plus, once, one layer's full set while its backward pass recomputes it. XLA's real peak also holds temporaries
and may rematerialise on its own (or, for a plain loop of layers on XLA:CPU, ignore the policy: BENCHMARKS.md), so
treat it as a sizing guide, not a guarantee.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxformer import hub, sharding
from jaxformer.decoding import kv_cache_bytes
from jaxformer.models import GPT, VARIANTS, ModelConfig
from jaxformer.nn.params import logical_axes
from jaxformer.pretrained import hf_config, io
from jaxformer.training import defaults
from jaxformer.training.run import build_run
from jaxformer.training.state import split_model

# Attention kernels that keep the T x T scores for the backward pass ("auto": XLA's on short CPU sequences).
SCORE_KEEPING_KERNELS = ("auto", "xla", "jax_nn")


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """The sizes of the mesh axes, without devices (a mesh for sizing runs on machines you do not have)."""

    shape: dict


def _sharded_bytes(tree, specs, mesh: MeshShape) -> tuple[int, int]:
    """(total bytes, bytes per device) of the arrays in `tree` laid out by the PartitionSpecs in `specs`."""
    total = per_device = 0
    for leaf, spec in zip(jax.tree.leaves(tree), jax.tree.leaves(specs, is_leaf=_is_spec), strict=True):
        nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize if hasattr(leaf, "shape") else 0
        ways = 1
        for entry in spec:
            for axis in (entry,) if isinstance(entry, str) else entry or ():
                ways *= mesh.shape[axis]
        total += nbytes
        per_device += nbytes // ways
    return total, per_device


def _is_spec(x) -> bool:
    return isinstance(x, jax.sharding.PartitionSpec)


def memory_report(config: ml_collections.ConfigDict, num_devices: int | None = None) -> dict:
    """Per-device bytes of parameters, optimizer state and (estimated) activations for `config` on
    `num_devices` devices (default: the devices jax sees), with `config.mesh` resolved against that count."""
    num_devices = num_devices or jax.device_count()
    config = defaults.complete(config)
    shape = sharding.mesh_shape(dict(config.mesh.to_dict()), num_devices)  # checked before the data is read
    mesh = MeshShape(dict(zip(sharding.MESH_AXES, shape, strict=True)))
    sharding.check_batch_size(config.batch_size, mesh)
    run = build_run(config)
    task, cfg, optimizer = run.task, run.model_config, run.optimizer
    abstract = nnx.eval_shape(run.make_model)
    params = nnx.state(abstract, nnx.Param)  # every parameter: a LoRA model's frozen base and adapters too
    param_specs = sharding.param_specs(params, mesh)
    param_total, param_device = _sharded_bytes(params, param_specs, mesh)
    # A mixture's stacked experts (logical axis "expert"), split over the expert mesh axis: most of its weights.
    is_expert = lambda variable: "expert" in (logical_axes(variable) or ())
    experts = nnx.filter_state(params, lambda path, variable: is_expert(variable))
    expert_total, expert_device = _sharded_bytes(experts, sharding.param_specs(experts, mesh), mesh)
    # What trains (state.split_model): every parameter, or a LoRA run's adapters; they alone have optimizer state,
    # gradients and updates.
    _, trained, _, _ = split_model(abstract)
    trained_specs = sharding.param_specs(trained, mesh)
    _, trained_device = _sharded_bytes(trained, trained_specs, mesh)

    # The specs in the parameters' own structure (each Variable holding its spec), as tree_map_params needs.
    leaf_specs = jax.tree.map(
        lambda spec, variable: jax.tree.map(lambda _: spec, variable), trained_specs, trained, is_leaf=_is_spec
    )
    opt_state = jax.eval_shape(optimizer.init, trained)
    opt_specs = optax.tree_map_params(
        optimizer,
        lambda _, spec: spec,
        opt_state,
        leaf_specs,
        transform_non_params=lambda _: jax.sharding.PartitionSpec(),
        is_leaf=_is_spec,
    )
    opt_total, opt_device = _sharded_bytes(opt_state, opt_specs, mesh)

    T, layers, V = task.activation_shape(cfg)
    T = T / mesh.shape.get(sharding.CONTEXT_AXIS, 1)  # context parallelism: each device's share of the sequence
    b = config.batch_size // math.prod(mesh.shape[a] for a in sharding.BATCH_AXES) * task.sequences_per_example
    t = mesh.shape["tensor"]
    width_bytes = np.dtype(cfg.dtype).itemsize / 2  # the formula counts 16-bit activations
    unit = T * b * cfg.d_model * width_bytes
    ring = mesh.shape.get(sharding.CONTEXT_AXIS, 1) > 1
    scores_kept = not ring and cfg.attention_impl in SCORE_KEEPING_KERNELS
    a = cfg.num_heads * T / cfg.d_model if scores_kept else 0.0
    kept, recomputed = _kept_per_layer(cfg.remat, a, t)
    logits = 2 * b * T * V / t * 4
    activations = int((layers * kept + recomputed) * unit + logits)
    without_scores = _kept_per_layer(cfg.remat, 0.0, t)
    score_bytes = activations - int((layers * without_scores[0] + without_scores[1]) * unit + logits)
    return {
        "devices": num_devices,
        "mesh": mesh.shape,
        "parameters": int(sum(math.prod(p.shape) for p in jax.tree.leaves(params))),
        "trained_parameters": int(sum(math.prod(p.shape) for p in jax.tree.leaves(trained))),
        "param_bytes": param_total,
        "param_bytes_per_device": param_device,
        "expert_param_bytes": expert_total,
        "expert_param_bytes_per_device": expert_device,
        "optimizer_bytes": opt_total,
        "optimizer_bytes_per_device": opt_device,
        "remat": cfg.remat,
        "activation_bytes_per_device": activations,
        "attention_score_bytes_per_device": score_bytes,  # part of the activations (0: a kernel that keeps none)
        "attention": "ring" if ring else cfg.attention_impl,
        "trained_bytes_per_device": trained_device,
        # + the gradients and updates of what trains
        "total_bytes_per_device": param_device + opt_device + 2 * trained_device + activations,
    }


# What `with_architecture` keeps of a run's model settings: how it computes, not what.
EXECUTION_SETTINGS = ("dtype", "param_dtype", "scan_layers", "remat", "attention_impl")


def with_architecture(config: ml_collections.ConfigDict, model: str) -> ml_collections.ConfigDict:
    """A copy of the run `config` with the architecture `model` (`jaxformer memory --config ... --model ...`): a
    ModelConfig variant name (its vocabulary and context, at least what the data needs; the run's execution
    settings, `EXECUTION_SETTINGS`, kept), or a checkpoint directory / hub id (`config.init_from`: its config.json).
    For sizing a run of a published shape on the run's data and mesh, e.g. Llama 3.2 1B at 131,072 tokens."""
    config = ml_collections.ConfigDict(config.to_dict())
    if model not in VARIANTS:
        config.init_from = model
        return config
    shape = ModelConfig.variant(model)
    settings = {k: v for k, v in config.model.to_dict().items() if k in EXECUTION_SETTINGS}
    seq_len = config.data.get("seq_len", 0) if "data" in config else 0
    config.model = ml_collections.ConfigDict(
        dict(settings, variant=model, vocab_size=shape.vocab_size, max_len=max(shape.max_len, seq_len))
    )
    return config


def kv_cache_report(model: str, cache_len: int, *, batch_size: int = 1, dtype="bfloat16") -> dict:
    """The KV cache of `model` (a `ModelConfig` variant name, or a Hugging Face checkpoint directory / hub id: its
    config.json) for `batch_size` sequences of `cache_len` tokens in `dtype`: `decoding.kv_cache_bytes` plus the
    architecture's name and its layers' kinds. Local layers hold ring buffers of `sliding_window` entries."""
    if model in VARIANTS:
        cfg = ModelConfig.variant(model)
    else:
        cfg = hf_config.to_model_config(io.read_config(hub.resolve(model)))
    cfg = cfg.replace(dtype=dtype, param_dtype=dtype)
    report = kv_cache_bytes(lambda: GPT(cfg, rngs=nnx.Rngs(0)), batch_size, cache_len, dtype)
    kinds = cfg.layer_types or ("local" if cfg.sliding_window else "global",) * cfg.num_layers
    return {
        **report,
        "model": model,
        "cache_len": cache_len,
        "batch_size": batch_size,
        "dtype": str(cfg.dtype),
        "kinds": kinds,
        "sliding_window": cfg.sliding_window,
        "shared_layers": cfg.num_kv_shared_layers,
    }


def format_kv_report(report: dict) -> str:
    """The KV-cache report as lines of MiB."""
    mib = lambda n: f"{n / 2**20:,.1f} MiB"
    kinds = report["kinds"]
    local, shared = kinds.count("local"), report["shared_layers"]
    return "\n".join(
        [
            f"{report['model']}: KV cache for {report['batch_size']} sequence(s) of {report['cache_len']:,} tokens "
            f"in {report['dtype']}",
            f"  {len(kinds)} layers: {kinds.count('global')} global, {local} local (window "
            f"{report['sliding_window']})" + (f", {shared} sharing an earlier layer's cache" if shared else ""),
            f"  as allocated     {mib(report['bytes']):>14}   (local layers: ring buffers of the window)",
            f"  with full caches {mib(report['full_bytes']):>14}   (every layer {report['cache_len']:,} entries)",
            f"  ratio            {report['bytes'] / report['full_bytes']:>14.3f}",
        ]
    )


def _kept_per_layer(remat: str, a: float, t: int) -> tuple[float, float]:
    """(what each layer keeps for the backward pass, what one layer's recomputation adds), in T * b * D bytes
    at 16 bits; a = N T / D, t = tensor-parallel ways."""
    everything = 10 + 24 / t + 5 * a / t  # Korthikanti et al., eq. 2
    kept = {
        "none": everything,
        "full": 2.0,
        "dots_no_batch": 2 + 18 / t,
        "dots": 2 + 20 / t + 2 * a / t,
    }[remat]
    return kept, 0.0 if remat == "none" else everything


def format_report(report: dict) -> str:
    """The report as a small table of per-device GiB / MiB."""

    def size(n):
        return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"

    mesh = " x ".join(f"{a}={s}" for a, s in report["mesh"].items())
    return "\n".join(
        [
            f"{report['parameters']:,} parameters on {report['devices']} devices ({mesh}); per device:",
            f"  parameters        {size(report['param_bytes_per_device']):>12}   (of {size(report['param_bytes'])})",
            *(
                [
                    f"    of which experts {size(report['expert_param_bytes_per_device']):>10}   "
                    f"(of {size(report['expert_param_bytes'])}, split over expert={report['mesh']['expert']})"
                ]
                if report["expert_param_bytes"]
                else []
            ),
            f"  optimizer state   {size(report['optimizer_bytes_per_device']):>12}   "
            f"(of {size(report['optimizer_bytes'])})",
            f"  gradients+updates {size(2 * report['trained_bytes_per_device']):>12}   (transient, as the trained "
            f"parameters: {report['trained_parameters']:,})",
            f"  activations       {size(report['activation_bytes_per_device']):>12}   "
            f"(estimate, backward pass, remat={report['remat']})",
            f"    of which scores {size(report['attention_score_bytes_per_device']):>12}   "
            + (
                f"(attention's T x T scores: attention_impl={report['attention']!r} keeps them)"
                if report["attention_score_bytes_per_device"]
                else f"(attention={report['attention']!r} keeps no T x T scores)"
            ),
            f"  total             {size(report['total_bytes_per_device']):>12}",
        ]
    )
