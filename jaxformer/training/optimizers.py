"""Optimizers from optax: AdamW or Adafactor, global-norm clipping, gradient accumulation, a weight-decay mask;
`from_config` makes the (schedule, optimizer) pair a run's config describes (`run.build_run` calls it)."""

from __future__ import annotations

import jax
import ml_collections
import optax

from jaxformer import checks
from jaxformer.training.schedules import Schedule, make_schedule

OPTIMIZERS = ("adamw", "adafactor")

# Weight matrices by parameter name (jaxformer's layers name them so): attention w_q / w_k / w_v / w_o, feed-forward
# w_in / w_out / w_gate / w_up, dense kernels, untied output decoders. Embedding tables are called "embedding".
_MATRIX_PREFIXES = ("w_", "kernel", "head_kernel", "decoder")
_ADAPTERS = "lora"  # the attribute under which a layer keeps its LoRA adapters (nn/lora.py)


def _names(path) -> list[str]:
    keys = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    return [k for k in keys if isinstance(k, str) and k != "value"]


def decay_mask(params, *, decay_embeddings: bool = False):
    """A pytree of bools like `params`: True where weight decay applies.

    Decayed: weight matrices (names starting with `w_`, `kernel`, `decoder`; a LoRA adapter's A and B, which
    `params` holds alone in a LoRA run, as Hugging Face's Trainer decays them), and the embedding tables when
    `decay_embeddings` (nanoGPT decays them; BERT and T5 do not). Never decayed: norm scales, biases, class tokens
    - decaying a LayerNorm scale pulls it towards 0, not towards the identity. Names rather than ndim decide,
    since a scanned model stacks a bias `[F]` into `[L, F]` and attention biases are `[N, H]`.
    """

    def decays(path, _):
        names = _names(path)
        name = names[-1] if names else ""
        adapter = _ADAPTERS in names[:-1]  # a LoRA adapter's A or B (".../lora/w_q/a"): matrices
        return adapter or name.startswith(_MATRIX_PREFIXES) or (decay_embeddings and name == "embedding")

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    schedule: Schedule,
    *,
    name: str = "adamw",
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    decay_embeddings: bool = False,
    clip_norm: float | None = 1.0,
    grad_accum_steps: int = 1,
) -> optax.GradientTransformation:
    """clip_by_global_norm(clip_norm) -> AdamW(schedule, b1, b2, eps, weight_decay on `decay_mask`) (or Adafactor),
    wrapped in `optax.MultiSteps` when `grad_accum_steps > 1` (the update is applied every k micro-batches with
    their mean gradient; the schedule then counts applied updates)."""
    checks.check_choice("optimizer", name, OPTIMIZERS)
    grad_accum_steps = checks.check_positive_int("grad_accum_steps", grad_accum_steps)
    if clip_norm is not None:
        clip_norm = checks.check_positive_real("clip_norm", clip_norm, " (or None: no clipping)")

    def mask(params):
        return decay_mask(params, decay_embeddings=decay_embeddings)

    if name == "adamw":
        core = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=mask)
    else:
        core = optax.adafactor(schedule, weight_decay_rate=weight_decay or None, weight_decay_mask=mask)
    chain = [optax.clip_by_global_norm(clip_norm)] if clip_norm is not None else []
    optimizer = optax.chain(*chain, core)
    return optax.MultiSteps(optimizer, grad_accum_steps) if grad_accum_steps > 1 else optimizer


def from_config(config: ml_collections.ConfigDict, *, d_model: int) -> tuple[Schedule, optax.GradientTransformation]:
    """(schedule, optimizer) that a run's `config` describes (`training/defaults.py`: `schedule`, `learning_rate`,
    `warmup_steps`, `optimizer.*`, ...); `d_model` is the model width, which the inverse-sqrt schedule scales by.

    `schedule` maps the train step (one batch) to the learning rate it trains with. With gradient accumulation
    (k = optimizer.grad_accum_steps) the optimizer updates every k batches and its schedule counts updates, so
    num_steps and warmup_steps (in batches) are divided by k for it, and batch s trains with update s // k's rate.
    """
    k = config.optimizer.grad_accum_steps
    for name in ("num_steps", "warmup_steps"):
        if config[name] % k:
            raise ValueError(
                f"config.{name}={config[name]} must be a multiple of optimizer.grad_accum_steps={k} (the "
                f"optimizer updates once every {k} batches)."
            )
    update_schedule = make_schedule(
        config.schedule,
        learning_rate=config.learning_rate,
        num_steps=config.num_steps // k,
        warmup_steps=config.warmup_steps // k,
        end_learning_rate=config.end_learning_rate,
        d_model=d_model,
        **config.schedule_options.to_dict(),
    )
    opt = config.optimizer
    optimizer = make_optimizer(
        update_schedule,
        name=opt.name,
        b1=opt.b1,
        b2=opt.b2,
        weight_decay=opt.weight_decay,
        decay_embeddings=opt.decay_embeddings,
        clip_norm=opt.clip_norm or None,
        grad_accum_steps=k,
    )
    schedule = update_schedule if k == 1 else (lambda step: update_schedule(step // k))
    return schedule, optimizer
