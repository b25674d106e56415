"""What the training loop needs from a task: data, a model shaped by that data, a loss, evaluation, samples.

`train_and_evaluate` is one loop for every task; a Task supplies the parts that differ between a language model,
a masked LM, an encoder-decoder and an image classifier. Tasks read the data when they are constructed.

Batch keys: `inputs` and `targets` (token ids the model reads and must predict; seq2seq: `src`, `tgt_in`,
`tgt_out`; images: `images`, `labels`), `weights` (optional, shaped like the targets: 0 / False = not counted,
e.g. padding or the tokens an MLM does not predict), and `<input>_valid` for the padding mask of an input that
the model itself reads (`inputs_valid`, `src_valid`, `tgt_valid`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable

import grain
import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxformer import ops
from jaxformer.models import ModelConfig
from jaxformer.training.metrics import perplexity
from jaxformer.training.state import TrainState


class Task(abc.ABC):
    """One kind of training problem. Subclasses set `model_class` and implement the abstract methods.

    Attributes set by subclasses: `tokens_per_batch` (model input tokens per training batch, for the tokens/s
    metric); `train_metrics` (keys of the loss's metrics that the training log also reports, averaged over the
    steps since the last line, as `train_<key>`; default none); `sequences_per_example` (rows an example puts
    through the model: 2 for DPO's chosen and rejected; for `jaxformer memory`).
    """

    model_class: type[nnx.Module]
    tokens_per_batch: int
    train_metrics: tuple[str, ...] = ()
    sequences_per_example: int = 1

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    @abc.abstractmethod
    def model_fields(self) -> dict:
        """ModelConfig fields that the data fixes (vocab_size, max_len, image_size, ...), over the config's."""

    @abc.abstractmethod
    def train_data(self, rows: slice | None = None) -> grain.MapDataset:
        """The training batches (`data.pipeline`): element s is the batch of step s, deterministic given the
        config's seed, holding rows `rows` of the global batch of `config.batch_size` (this process's share;
        default every row)."""

    @abc.abstractmethod
    def loss(self, model: nnx.Module, batch: dict) -> tuple[jax.Array, dict]:
        """(scalar loss, metrics with `nll`, `accuracy`, `tokens`) of `model` on `batch`; traced inside jit."""

    def activation_shape(self, model_cfg: ModelConfig) -> tuple[int, int, int]:
        """(T, L, V) for `jaxformer memory`'s activation estimate: tokens per example through the model, layers
        that keep activations for the backward pass, and logits per token (0: none worth counting)."""
        return model_cfg.max_len, model_cfg.num_layers, model_cfg.vocab_size

    @abc.abstractmethod
    def evaluate(self, eval_step: Callable[[TrainState, dict], dict], state: TrainState, model: nnx.Module) -> dict:
        """Validation metrics, each key starting with `val_` (at least `val_loss`). `model` is the eval-mode model
        of `state`, for metrics that need decoding rather than the loss."""

    @abc.abstractmethod
    def samples(self, model: nnx.Module) -> str:
        """Text for `samples.txt` at the end of training: what the trained model produces."""

    def prepare(self, workdir: str, starting_model: Callable[[], nnx.Module] | None) -> None:
        """Called by the training loop once before the first step. `starting_model()` gives the model as training
        starts, in eval mode, on a fresh run; None on a resume (read back what the fresh run wrote to `workdir`).
        Default: nothing."""
        return None

    def save_assets(self, workdir: str) -> None:
        """Writes what is needed besides the checkpoint to use the model (e.g. `tokenizer.json`); default none."""
        return None


def classification_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array | None = None, *, label_smoothing: float = 0.0
) -> tuple[jax.Array, dict]:
    """Softmax cross-entropy of `logits [..., V]` against int `targets [...]`, with the metrics every task reports.

    weights: `[...]` (0 = ignore, e.g. padding); None counts every target. Returns (loss, metrics): `nll` (the
    unsmoothed mean negative log-likelihood), `accuracy` (argmax == target) and `tokens` (the targets counted).
    """
    loss, tokens = ops.cross_entropy(logits, targets, weights=weights, label_smoothing=label_smoothing)
    nll = loss if not label_smoothing else ops.cross_entropy(logits, targets, weights=weights)[0]
    w = jnp.ones(targets.shape, jnp.float32) if weights is None else weights.astype(jnp.float32)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    accuracy = jnp.sum(correct * w) / jnp.maximum(tokens, 1.0)
    return loss, {"nll": nll, "accuracy": accuracy, "tokens": tokens}


def add_router_losses(model: nnx.Module, loss: jax.Array, metrics: dict) -> tuple[jax.Array, dict]:
    """(loss + the mixture of experts' auxiliary loss, metrics with its `moe_*` entries) after `model`'s forward
    pass (`GPT.router_losses`); unchanged for a model without experts. `nll` stays the data's loss alone."""
    router_losses = getattr(model, "router_losses", None)
    if router_losses is None:
        return loss, metrics
    aux, router_metrics = router_losses()
    return loss + aux, {**metrics, **router_metrics}


def evaluate_batches(eval_step, state: TrainState, batches, *, with_perplexity: bool = False) -> dict:
    """`val_loss` (mean unsmoothed NLL) and `val_accuracy` over every counted target of `batches`, each batch
    weighted by its `tokens`; plus `val_perplexity` = exp(val_loss) for token-level tasks."""
    # Dispatch every batch first and fetch once: a fetch per batch would wait for each step before the next.
    outputs = [eval_step(state, batch) for batch in batches]
    rows = [(metrics, float(metrics["tokens"])) for metrics in jax.device_get(outputs)]
    result = {"val_loss": weighted_mean(rows, "nll"), "val_accuracy": weighted_mean(rows, "accuracy")}
    if with_perplexity:
        result["val_perplexity"] = perplexity(result["val_loss"])
    return result


def weighted_mean(rows: list[tuple[dict, float]], key: str) -> float:
    """sum(metrics[key] * weight) / sum(weight) over (metrics, weight) rows."""
    total = sum(float(m[key]) * w for m, w in rows)
    count = sum(w for _, w in rows)
    return total / max(count, 1.0)
