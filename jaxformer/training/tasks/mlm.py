"""Masked language modelling (`config.task = "mlm"`): BERT learns to restore corrupted tokens of a text corpus.

Data as for "lm" (a prepared corpus, a tfds text dataset or a text file). Each training batch is B random windows
of `seq_len` tokens corrupted by `mask_for_mlm` (`config.data.mask_rate` of the tokens chosen, 80% [MASK] / 10%
random / 10% kept); [MASK] is one extra id after the tokenizer's vocabulary. Row r of step s is corrupted with a
key drawn from (seed, s, r), as the windows are from (seed, s), so a resumed run sees identical batches.
Validation tiles the validation text once with a fixed corruption; the loss counts the chosen tokens only.

Batches: `inputs` (corrupted ids), `targets` (the original ids), `weights` (bool: the chosen positions, the only
ones the loss counts) and, in validation, `inputs_valid` (False at padding).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections
import numpy as np

from jaxformer import checks, data
from jaxformer.models import BERT, mask_for_mlm
from jaxformer.training.tasks.base import Task, classification_loss, evaluate_batches
from jaxformer.training.tasks.lm import lm_train_data, load_corpus, save_tokenizer

_mask = jax.jit(mask_for_mlm, static_argnames=("vocab_size", "mask_id", "special_ids", "mask_rate"))


@functools.partial(jax.jit, static_argnames=("seed", "mask_id", "mask_rate"))
def _corrupt_rows(step: jax.Array, rows: jax.Array, tokens: jax.Array, *, seed: int, mask_id: int, mask_rate: float):
    """`mask_for_mlm` of each row r of `tokens [b, T]` (global rows `rows [b]` of step `step`) with the key
    fold_in(fold_in(key(seed), step), r): one compiled program for every step."""
    step_key = jax.random.fold_in(jax.random.key(seed), step)

    def one(row, row_tokens):
        key = jax.random.fold_in(step_key, row)
        out = mask_for_mlm(key, row_tokens[None], vocab_size=mask_id + 1, mask_id=mask_id, mask_rate=mask_rate)
        return jax.tree.map(lambda x: x[0], out)

    return jax.vmap(one)(rows, tokens)


@dataclasses.dataclass(frozen=True)
class _Corrupt:
    """Row r of step s's windows corrupted with a key folded from (seed, s, r): the same corruption however many
    processes share the batch, and a resumed run sees identical batches."""

    mask_id: int
    mask_rate: float
    seed: int
    rows: slice

    def __call__(self, step: int, windows: dict) -> dict[str, np.ndarray]:
        rows = np.arange(self.rows.start, self.rows.stop)
        out = _corrupt_rows(
            np.int32(step), rows, windows["inputs"], seed=self.seed, mask_id=self.mask_id, mask_rate=self.mask_rate
        )
        inputs, labels, chosen = (np.asarray(x) for x in out)
        return {"inputs": inputs, "targets": labels, "weights": chosen}


def corrupt(key: jax.Array, tokens: np.ndarray, *, mask_id: int, mask_rate: float, valid=None) -> dict:
    """The MLM batch of `tokens [B, T]`: ids in [0, mask_id), [MASK] = mask_id, random ids in [0, mask_id]."""
    inputs, labels, chosen = _mask(
        key, tokens, vocab_size=mask_id + 1, mask_id=mask_id, valid=valid, mask_rate=mask_rate
    )
    return {"inputs": np.asarray(inputs), "targets": np.asarray(labels), "weights": np.asarray(chosen)}


class MaskedLanguageModelling(Task):
    model_class = BERT

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        cfg = config.data
        checks.check_positive_int("config.data.seq_len", cfg.seq_len)
        checks.check_real("config.data.mask_rate", cfg.mask_rate, low=0.0, high=1.0, low_open=True, high_open=True)
        if cfg.sampling != "random_windows":
            raise ValueError(f"config.data.sampling={cfg.sampling!r}: the mlm task reads 'random_windows' only.")
        self.tokenizer, self.train_tokens, self.eval_tokens = load_corpus(cfg)
        self.mask_id = self.tokenizer.vocab_size  # one id after the tokenizer's
        self.tokens_per_batch = config.batch_size * cfg.seq_len

    def train_data(self, rows: slice | None = None):
        """Random windows (their `inputs`: T tokens each), corrupted by `mask_for_mlm`."""
        cfg = self.config
        rows = data.pipeline.check_rows(rows, cfg.batch_size)
        windows = lm_train_data(cfg, self.train_tokens, rows)
        return windows.map_with_index(_Corrupt(self.mask_id, cfg.data.mask_rate, cfg.seed, rows))

    def model_fields(self) -> dict:
        return {"vocab_size": self.mask_id + 1, "max_len": self.config.data.seq_len}

    def activation_shape(self, model_cfg) -> tuple[int, int, int]:
        return self.config.data.seq_len, model_cfg.num_layers, model_cfg.vocab_size

    def loss(self, model, batch):
        valid = batch.get("inputs_valid")
        hidden = model(batch["inputs"], valid=valid).hidden
        logits = model.mlm_logits(hidden, valid=valid)
        return classification_loss(
            logits, batch["targets"], batch["weights"], label_smoothing=self.config.label_smoothing
        )

    @functools.cached_property
    def eval_set(self) -> list[dict]:
        """The validation text in padded windows, each corrupted once with a fixed key (the same at every eval)."""
        cfg, batches = self.config, []
        windows = data.pipeline.eval_windows(self.eval_tokens, batch_size=cfg.batch_size, seq_len=cfg.data.seq_len)
        key = jax.random.key(cfg.seed + 1)
        for i, window in enumerate(windows):
            # The windows' inputs are tokens 0..T-1 of each slice; their weights mark the real ones.
            batch = corrupt(
                jax.random.fold_in(key, i),
                window["inputs"],
                mask_id=self.mask_id,
                mask_rate=cfg.data.mask_rate,
                valid=window["weights"],
            )
            batches.append({**batch, "inputs_valid": window["weights"]})
        return batches

    def evaluate(self, eval_step, state, model) -> dict:
        """`val_loss` / `val_accuracy` over the chosen tokens of the validation text."""
        return evaluate_batches(eval_step, state, self.eval_set, with_perplexity=True)

    def samples(self, model) -> str:
        """A few validation windows: the corrupted input ([MASK] shown as "_") and the model's restoration."""
        batch = self.eval_set[0]
        rows = min(4, len(batch["inputs"]))
        out = model(batch["inputs"][:rows], valid=batch["inputs_valid"][:rows]).hidden
        predicted = np.asarray(model.mlm_logits(out).argmax(-1))
        restored = np.where(batch["weights"][:rows], predicted, batch["targets"][:rows])
        shown = np.where(batch["inputs"][:rows] == self.mask_id, -1, batch["inputs"][:rows])
        lines = []
        for i in range(rows):
            keep = batch["inputs_valid"][i]
            chosen = int(batch["weights"][i].sum())
            right = int((restored[i] == batch["targets"][i])[batch["weights"][i]].sum())
            lines += [
                f"--- window {i}: {right}/{chosen} chosen tokens restored",
                "input:    " + self._decode(shown[i][keep]),
                "restored: " + self._decode(restored[i][keep]),
                "original: " + self._decode(batch["targets"][i][keep]),
            ]
        return "\n".join(lines) + "\n"

    def _decode(self, ids: np.ndarray) -> str:
        """Text of ids where -1 ([MASK]) prints as "_", a predicted [MASK] as "#" and a newline as "|"."""
        parts = []
        for i in ids.tolist():
            parts.append("_" if i == -1 else "#" if i == self.mask_id else self.tokenizer.decode(np.asarray([i])))
        return "".join(parts).replace("\n", "|")  # one line per window

    def save_assets(self, workdir: str) -> None:
        save_tokenizer(self.tokenizer, workdir)
