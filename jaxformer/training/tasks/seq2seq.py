"""Sequence to sequence (`config.task = "seq2seq"`): the encoder-decoder Transformer on a synthetic digit task.

Data (`jaxformer.data.seq2seq_task`, generated offline from the seed): `config.data.task` "reverse", "sort" or
"add"; `min_len`..`max_len` digits per sequence (per operand for add); `num_train` training examples (seed
`config.seed`) shuffled epoch after epoch (`data.pipeline.shuffled_examples`), `num_eval` validation examples
(seed `config.seed + 1`).
Training is teacher-forced; validation also decodes greedily and reports `val_exact_match`, the share of
examples whose whole output (EOS included) equals the target.
"""

from __future__ import annotations

import jax
import ml_collections
import numpy as np

from jaxformer import checks, data
from jaxformer.decoding import beam_search
from jaxformer.models import Transformer
from jaxformer.training.tasks.base import Task, classification_loss, weighted_mean


def greedy_decode(model: Transformer, src: np.ndarray, src_valid: np.ndarray, max_len: int) -> np.ndarray:
    """int32 `[B, max_len]`: the greedy output (beam search with one beam), EOS and then EOS / 0 after the end."""
    sequences, _ = beam_search(
        model, src, beam_size=1, max_len=max_len, eos_id=data.EOS_ID, bos_id=data.BOS_ID, src_valid=src_valid
    )
    return np.asarray(sequences[:, 0])


def exact_matches(predicted: np.ndarray, tgt_out: np.ndarray, tgt_valid: np.ndarray) -> np.ndarray:
    """bool `[B]`: the prediction equals target + EOS at every position the target occupies (so it stops there)."""
    return np.all((predicted == tgt_out) | ~tgt_valid, axis=1)


class SequenceToSequence(Task):
    model_class = Transformer

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        cfg = config.data
        for name in ("min_len", "max_len", "num_train", "num_eval"):
            checks.check_positive_int(f"config.data.{name}", cfg[name])
        if cfg.min_len > cfg.max_len:
            raise ValueError(f"config.data.min_len={cfg.min_len} must be <= config.data.max_len={cfg.max_len}.")
        make = lambda n, seed: data.seq2seq_task(
            cfg.task, num_examples=n, min_len=cfg.min_len, max_len=cfg.max_len, seed=seed
        )
        self.train_set = make(cfg.num_train, config.seed)
        self.eval_set = make(cfg.num_eval, config.seed + 1)
        src_len, tgt_len = self.train_set["src"].shape[1], self.train_set["tgt_in"].shape[1]
        self.tokens_per_batch = config.batch_size * (src_len + tgt_len)

    def train_data(self, rows: slice | None = None):
        return data.pipeline.shuffled_examples(
            self.train_set, batch_size=self.config.batch_size, seed=self.config.seed, rows=rows
        )

    def model_fields(self) -> dict:
        src_len, tgt_len = self.train_set["src"].shape[1], self.train_set["tgt_in"].shape[1]
        return {"vocab_size": data.seq2seq_vocab_size(self.config.data.task), "max_len": max(src_len, tgt_len)}

    def activation_shape(self, model_cfg) -> tuple[int, int, int]:
        """Both stacks keep activations; T is the longer of the source and the target."""
        return model_cfg.max_len, model_cfg.num_layers + model_cfg.decoder_layers, model_cfg.vocab_size

    def loss(self, model, batch):
        logits = model(batch["src"], batch["tgt_in"], src_valid=batch["src_valid"], tgt_valid=batch["tgt_valid"])
        weights = batch.get("weights", batch["tgt_valid"])
        return classification_loss(logits, batch["tgt_out"], weights, label_smoothing=self.config.label_smoothing)

    def evaluate(self, eval_step, state, model) -> dict:
        """`val_loss` / `val_accuracy` (teacher-forced, per target token) and `val_exact_match` (greedy decoding)."""
        rows, matches = [], []
        for batch, example_valid in data.pipeline.padded_examples(self.eval_set, batch_size=self.config.batch_size):
            batch["weights"] = batch["tgt_valid"] & example_valid[:, None]
            metrics = jax.device_get(eval_step(state, batch))
            rows.append((metrics, float(metrics["tokens"])))
            predicted = greedy_decode(model, batch["src"], batch["src_valid"], batch["tgt_out"].shape[1])
            matches.append(exact_matches(predicted, batch["tgt_out"], batch["tgt_valid"])[example_valid])
        return {
            "val_loss": weighted_mean(rows, "nll"),
            "val_accuracy": weighted_mean(rows, "accuracy"),
            "val_exact_match": float(np.mean(np.concatenate(matches))),
        }

    def samples(self, model) -> str:
        n = min(20, len(self.eval_set["src"]))
        subset = {k: v[:n] for k, v in self.eval_set.items()}
        predicted = greedy_decode(model, subset["src"], subset["src_valid"], subset["tgt_out"].shape[1])
        ok = exact_matches(predicted, subset["tgt_out"], subset["tgt_valid"])
        lines = [f"{self.config.data.task}: source -> greedy output (target)"]
        for i in range(n):
            src, out, want = (data.seq2seq_decode(x[i]) for x in (subset["src"], predicted, subset["tgt_out"]))
            lines.append(f"{src} -> {out}  ({want}{'' if ok[i] else '  WRONG'})")
        return "\n".join(lines) + "\n"
