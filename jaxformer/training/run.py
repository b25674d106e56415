"""One run's parts, built from its config in one place: `build_run(config) -> Run`.

    run = build_run(config)                  # the task (its data loaded), the architecture, schedule, optimizer
    model = run.make_model()                 # run.model_class(run.model_config), seeded by config.seed, with
                                             # LoRA adapters when config.lora.rank > 0
    params = run.initial_params(mesh)        # config.init_from's weights laid out on `mesh`, or None

Every reader of a run config goes through here: the training loop, `jaxformer memory`, `jaxformer sample`
(`trained.load_trained`, which rebuilds a run from its checkpoint without the data: `data_fields`), the benchmarks
and the notebooks. So the config is completed with its defaults once (`defaults.complete`), and `config.init_from`
has one reader: the architecture (`model_config`: the checkpoint's config.json with the run's execution fields)
and the initial weights (`initial_params`) both come from it here. `config.lora` is read here too
(`check_lora_config`, and `make_model`, which adds the adapters): a LoRA run's model holds `nnx.LoRAParam`
adapters, so that only they train (`state.split_model`), over base weights that `initial_params` sets.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh

from jaxformer import checks, hub, lora, pretrained
from jaxformer.models import GPT, ModelConfig
from jaxformer.pretrained import hf_config, io, peft
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
        jitted constructor: `runner.init_state` builds it straight into its shardings); with `config.lora.rank`
        > 0, with LoRA adapters (B = 0, A drawn from the same seed's stream) on the weights `config.lora` names."""
        rngs = nnx.Rngs(self.config.seed)
        model = self.model_class(self.model_config, rngs=rngs)
        settings = self.config.lora
        if settings.rank:
            try:
                lora.add_adapters(
                    model,
                    rank=settings.rank,
                    alpha=settings.alpha,
                    targets=lora_targets(settings.targets),
                    dropout=settings.dropout,
                    use_rslora=settings.use_rslora,
                    rngs=rngs,
                )
            except ValueError as e:  # a target this architecture does not have
                raise ValueError(f"config.lora.targets={settings.targets!r}: {e}") from None
        return model

    @property
    def is_lora(self) -> bool:
        """Whether the run trains LoRA adapters (config.lora.rank > 0) rather than every parameter."""
        return self.config.lora.rank > 0

    def initial_params(self, mesh: Mesh | None = None) -> nnx.State | None:
        """The `nnx.Param` state of `config.init_from` (a Hugging Face checkpoint) for `model_config`, laid out on
        `mesh` by the rules table; None when the run starts from random weights. For a LoRA run these are the
        frozen base weights (`state.with_base` puts them where they belong); the adapters are `make_model`'s."""
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
    check_lora_config(config)
    task = make_task(config) if data_fields is None else None
    model_class = task_class(config.task).model_class
    model_cfg = model_config(config, task.model_fields() if task is not None else data_fields)
    schedule, optimizer = optimizers.from_config(config, d_model=model_cfg.d_model)
    run = Run(config, task, model_class, model_cfg, schedule, optimizer)
    if run.is_lora:  # the adapters' targets, and (from a checkpoint) their export, before anything is compiled
        check_adapter_export(run, nnx.eval_shape(run.make_model))
    return run


def model_config(config: ml_collections.ConfigDict, fields: dict) -> ModelConfig:
    """The architecture a run trains: the checkpoint's with `config.init_from`, else `config.model` over the
    data's `fields`; a LoRA run's `config.lora.base_dtype`, if set, is its `param_dtype` (the adapters stay
    float32)."""
    cfg = pretrained_model_config(config, fields) if config.init_from else variant_model_config(config, fields)
    return cfg.replace(param_dtype=config.lora.base_dtype) if config.lora.base_dtype else cfg


# -- LoRA ----------------------------------------------------------------------------------------------------------

BASE_DTYPES = ("", "float32", "bfloat16", "float16")


def check_lora_config(config: ml_collections.ConfigDict) -> None:
    """`config.lora`'s values (ValueError / TypeError naming the key): rank an int >= 0 (0 = no LoRA), alpha > 0,
    targets "all-linear" or names from `jaxformer.lora.TARGETS` separated by commas, dropout in [0, 1), use_rslora
    and export_merged True / False, base_dtype one of `BASE_DTYPES`. Without LoRA (rank 0) the other keys must keep
    their defaults, so that a forgotten rank is not silently a full fine-tuning; export_merged needs init_from."""
    settings = config.lora
    rank = checks.check_int("config.lora.rank", settings.rank, low=0, expected="an int >= 0 (0 = no LoRA)")
    checks.check_positive_real("config.lora.alpha", settings.alpha)
    lora_targets(settings.targets)
    checks.check_rate("config.lora.dropout", settings.dropout)
    checks.check_flag("config.lora.use_rslora", settings.use_rslora)
    checks.check_flag("config.lora.export_merged", settings.export_merged)
    checks.check_choice("config.lora.base_dtype", settings.base_dtype, BASE_DTYPES)
    if not rank:
        default = defaults.default_config(config.task).lora
        changed = [f"config.lora.{k}={settings[k]!r}" for k in default.keys() if settings[k] != default[k]]
        if changed:
            raise ValueError(
                f"{', '.join(changed)} set without LoRA; set config.lora.rank > 0 (e.g. 8) to train adapters, or "
                "leave config.lora alone for a full fine-tuning."
            )
    if settings.export_merged and not config.init_from:
        raise ValueError(
            "config.lora.export_merged=True needs config.init_from: the merged model is a Hugging Face checkpoint "
            "(the base checkpoint's weights with the adapters folded in)."
        )


def lora_targets(targets: str) -> str | tuple[str, ...]:
    """`config.lora.targets` as `jaxformer.lora.add_adapters` takes it: "all-linear", or the tuple of the weight
    names of a comma-separated list ("w_q,w_v" -> ("w_q", "w_v")), each one of `jaxformer.lora.TARGETS`."""
    if not isinstance(targets, str):
        raise TypeError(f"config.lora.targets must be a string; got {targets!r} ({type(targets).__name__}).")
    if targets == "all-linear":
        return targets
    names = tuple(name.strip() for name in targets.split(","))
    unknown = [name for name in names if name not in lora.TARGETS]
    if unknown or not names:
        raise ValueError(
            f"config.lora.targets={targets!r}: {unknown} are no weight names; use 'all-linear' or names from "
            f"{lora.TARGETS} separated by commas (e.g. 'w_q,w_v')."
        )
    return names


def check_adapter_export(run: Run, model: nnx.Module) -> None:
    """A LoRA run from a checkpoint ends by writing its adapters in peft's layout (`jaxformer.lora.save_adapter`):
    every adapter of `model` (the run's, abstract will do) must be one peft module. GPT-2's q, k and v are one
    module (c_attn), so they are adapted all three or none."""
    if not (run.config.init_from and isinstance(model, GPT)):
        return
    modules = set(peft.linear_modules(hf_config.family_for(run.model_config), run.model_config).values())
    loose = sorted(path for path, *_ in lora.adapters(model) if path not in modules)
    if loose:
        raise ValueError(
            f"config.lora.targets={run.config.lora.targets!r}: the adapters of {loose[:4]} have no module of their "
            f"own in peft's layout for {run.config.init_from!r} (GPT-2's q, k and v are one module, c_attn: target "
            "all three of w_q, w_k, w_v or none)."
        )


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
