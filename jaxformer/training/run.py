"""One run's parts, built from its config in one place: `build_run(config) -> Run`.

    run = build_run(config)                  # the task (its data loaded), the architecture, schedule, optimizer
    model = run.make_model()                 # run.model_class(run.model_config), seeded by config.seed
    params = run.initial_params(mesh)        # config.init_from's weights laid out on `mesh`, or None

Every reader of a run config goes through here: the training loop, `jaxformer memory`, `jaxformer sample`
(`trained.load_trained`, which rebuilds a run from its checkpoint without the data: `data_fields`), the benchmarks
and the notebooks. So the config is completed with its defaults once (`defaults.complete`), and `config.init_from`
has one reader: the architecture (`model_config`: the checkpoint's config.json with the run's execution fields)
and the initial weights (`initial_params`) both come from it here.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxformer import hub, pretrained
from jaxformer.models import ModelConfig
from jaxformer.pretrained import hf_config, io
from jaxformer.training import defaults, optimizers
from jaxformer.training.schedules import Schedule
from jaxformer.training.tasks import Task, make_task, task_class


@dataclasses.dataclass(frozen=True)
class Run:
    """config: the run's config, completed with its defaults. task: the Task, its data loaded (None when the run was
    built from `data_fields`). model_class / model_config: the model it trains. schedule / optimizer: from
    `optimizers.from_config`."""

    config: ml_collections.ConfigDict
    task: Task | None
    model_class: type[nnx.Module]
    model_config: ModelConfig
    schedule: Schedule
    optimizer: optax.GradientTransformation

    def make_model(self) -> nnx.Module:
        """A new model of the run's architecture, initialised from `config.seed` (under `nnx.eval_shape` or a
        jitted constructor: `runner.init_state` builds it straight into its shardings)."""
        return self.model_class(self.model_config, rngs=nnx.Rngs(self.config.seed))

    def initial_params(self, mesh: Mesh | None = None) -> nnx.State | None:
        """The `nnx.Param` state of `config.init_from` (a Hugging Face checkpoint) for `model_config`, laid out on
        `mesh` by the rules table; None when the run starts from random weights."""
        if not self.config.init_from:
            return None
        return pretrained.load_params(self.config.init_from, self.model_config, mesh=mesh)


def build_run(config: ml_collections.ConfigDict, *, data_fields: dict | None = None) -> Run:
    """The Run `config` describes.

    data_fields: the model fields the data fixes (e.g. `{"vocab_size": 65, "max_len": 64}`); given, no task is
      built and no data is read (a run rebuilt from its checkpoint, a benchmark on random tokens). Default: the
      task `config.task` names is built (reading its data) and gives them (`Task.model_fields`).
    """
    if data_fields is not None and not isinstance(data_fields, dict):
        raise TypeError(f"`data_fields` must be a dict of model fields or None; got {type(data_fields).__name__}.")
    config = defaults.complete(config)
    task = make_task(config) if data_fields is None else None
    model_class = task_class(config.task).model_class
    model_cfg = model_config(config, task.model_fields() if task is not None else data_fields)
    schedule, optimizer = optimizers.from_config(config, d_model=model_cfg.d_model)
    return Run(config, task, model_class, model_cfg, schedule, optimizer)


def model_config(config: ml_collections.ConfigDict, fields: dict) -> ModelConfig:
    """The architecture a run trains: the checkpoint's with `config.init_from`, else `config.model` over the
    data's `fields`."""
    if config.init_from:
        return pretrained_model_config(config, fields)
    return variant_model_config(config, fields)


def variant_model_config(config: ml_collections.ConfigDict, fields: dict) -> ModelConfig:
    """`config.model` (a variant name plus overrides) over the data's `fields`. An explicit override wins (e.g. a
    vocabulary padded to a multiple of 64, a longer context for sampling) as long as the data still fits."""
    overrides = dict(config.model.to_dict())
    variant = overrides.pop("variant")
    cfg = ModelConfig.variant(variant, **{**fields, **overrides})
    check_data_fits(cfg, fields, where="config.model.", advice="remove the override or raise it")
    return cfg


def check_data_fits(cfg: ModelConfig, fields: dict, *, where: str, advice: str) -> None:
    """The model must hold the data: vocab_size and max_len at least what the data's `fields` need."""
    for name in ("vocab_size", "max_len"):
        if name in fields and getattr(cfg, name) < fields[name]:
            raise ValueError(
                f"{where}{name}={getattr(cfg, name)} is smaller than the data needs ({fields[name]}); {advice}."
            )


# What a run may change about a pretrained architecture: how it computes and trains, not what it computes.
EXECUTION_FIELDS = (
    "dtype",
    "scan_layers",
    "remat",
    "attention_impl",
    "dropout_rate",
    "attention_dropout_rate",
    "ffn_dropout_rate",
)


def pretrained_model_config(config: ml_collections.ConfigDict, fields: dict) -> ModelConfig:
    """The architecture of the checkpoint `config.init_from` (its config.json), with the execution fields of
    `config.model` (float32 parameters for training). Any other `config.model` field that differs from the
    checkpoint's is an error naming both values; so is data that does not fit it (vocabulary, context)."""
    cfg = hf_config.to_model_config(io.read_config(hub.resolve(config.init_from)))
    overrides = dict(config.model.to_dict())
    overrides.pop("variant", None)
    changes = {k: v for k, v in overrides.items() if k in EXECUTION_FIELDS}
    cfg = cfg.replace(**changes)
    for name, value in overrides.items():
        if name not in EXECUTION_FIELDS and getattr(cfg, name) != getattr(cfg.replace(**{name: value}), name):
            raise ValueError(
                f"config.model.{name}={value!r} contradicts the checkpoint {config.init_from!r}, whose {name} is "
                f"{getattr(cfg, name)!r}; remove the override (with init_from the architecture is the checkpoint's)."
            )
    if cfg.scan_layers:
        raise ValueError("config.init_from needs config.model.scan_layers=False (checkpoints store each layer).")
    advice = "use its tokenizer (config.data.tokenizer='hf:...') and a seq_len that fits"
    check_data_fits(cfg, fields, where=f"the checkpoint {config.init_from!r}: ", advice=advice)
    return cfg
