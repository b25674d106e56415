"""Image classification (`config.task = "classification"`): a ViT labels images.

Data: `config.data.name` "mnist" (tfds, from $TFDS_DATA_DIR / `data_dir`) or "digits" (scikit-learn's 8x8
digits, offline); `config.data.fallback` is loaded instead when the tfds dataset is not prepared. The model's
image size, channels and classes come from the data; `config.data.patch_grid` g cuts each image into g x g
patches (patch_size = image_size / g), so the sequence length is g^2 + 1 whichever dataset was loaded.
"""

from __future__ import annotations

import ml_collections
import numpy as np
from flax import nnx

from jaxformer import checks, data
from jaxformer.models import ViT
from jaxformer.training.tasks.base import Task, classification_loss, evaluate_batches

_predict = nnx.jit(lambda model, images: model(images).argmax(-1))


class ImageClassification(Task):
    model_class = ViT

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        cfg = config.data
        checks.check_positive_int("config.data.patch_grid", cfg.patch_grid)  # before any image is read
        load = lambda split: data.image_dataset(
            cfg.name, split, data_dir=cfg.data_dir or None, fallback=cfg.fallback or None
        )
        self.train_set, self.eval_set = load(cfg.train_split), load(cfg.eval_split)
        size, grid = self.train_set.images.shape[1], cfg.patch_grid
        if size % grid:
            raise ValueError(
                f"config.data.patch_grid={grid} does not divide the image size {size} of {self.train_set.name!r}."
            )
        self.patch_size = size // grid
        self.tokens_per_batch = config.batch_size * (grid * grid + 1)

    def train_data(self, rows: slice | None = None):
        arrays = {"images": self.train_set.images, "labels": self.train_set.labels}
        return data.pipeline.shuffled_examples(
            arrays, batch_size=self.config.batch_size, seed=self.config.seed, rows=rows
        )

    def model_fields(self) -> dict:
        images = self.train_set.images
        grid = self.config.data.patch_grid
        return {
            "image_size": images.shape[1],
            "num_channels": images.shape[3],
            "num_classes": self.train_set.num_classes,
            "patch_size": self.patch_size,
            "max_len": grid * grid + 1,
        }

    def activation_shape(self, model_cfg) -> tuple[int, int, int]:
        """One class prediction per image: no per-token logits worth counting."""
        return model_cfg.max_len, model_cfg.num_layers, 0

    def loss(self, model, batch):
        logits = model(batch["images"])
        return classification_loss(
            logits, batch["labels"], batch.get("weights"), label_smoothing=self.config.label_smoothing
        )

    def evaluate(self, eval_step, state, model) -> dict:
        """`val_loss` and `val_accuracy` over every image of the evaluation split."""
        arrays = {"images": self.eval_set.images, "labels": self.eval_set.labels}
        batches = data.pipeline.padded_examples(arrays, batch_size=self.config.batch_size)
        batches = ({**batch, "weights": valid} for batch, valid in batches)
        return evaluate_batches(eval_step, state, batches)

    def samples(self, model) -> str:
        """The confusion matrix on the evaluation split (rows: true class, columns: predicted)."""
        k = self.eval_set.num_classes
        confusion = np.zeros((k, k), np.int64)
        arrays = {"images": self.eval_set.images, "labels": self.eval_set.labels}
        for batch, valid in data.pipeline.padded_examples(arrays, batch_size=self.config.batch_size):
            predicted = np.asarray(_predict(model, batch["images"]))
            np.add.at(confusion, (batch["labels"][valid], predicted[valid]), 1)
        accuracy = np.trace(confusion) / confusion.sum()
        lines = [
            f"{self.eval_set.name} {self.config.data.eval_split}: accuracy {accuracy:.4f} "
            f"({np.trace(confusion)}/{confusion.sum()}); confusion matrix, rows = true class, columns = predicted",
            "     " + " ".join(f"{j:>4}" for j in range(k)),
        ]
        lines += [f"{i:>4} " + " ".join(f"{c:>4}" for c in confusion[i]) for i in range(k)]
        return "\n".join(lines) + "\n"
