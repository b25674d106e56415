"""Training tasks: what `train_and_evaluate` trains, chosen by `config.task`.

lm              GPT, next-token prediction on text                   (shakespeare_char*)
mlm             BERT, masked-token prediction on text                (bert_mlm_tiny)
seq2seq         encoder-decoder Transformer on a synthetic task      (seq2seq_toy)
classification  ViT on images                                        (vit_digits)
"""

from __future__ import annotations

import ml_collections

from jaxformer.training.tasks.base import Task, build_model_config

TASKS = ("lm", "mlm", "seq2seq", "classification")


def make_task(config: ml_collections.ConfigDict) -> Task:
    """The Task `config.task` names (default "lm"), with its data loaded."""
    name = config.get("task", "lm")
    if name == "lm":
        from jaxformer.training.tasks.lm import LanguageModelling as cls
    elif name == "mlm":
        from jaxformer.training.tasks.mlm import MaskedLanguageModelling as cls
    elif name == "seq2seq":
        from jaxformer.training.tasks.seq2seq import SequenceToSequence as cls
    elif name == "classification":
        from jaxformer.training.tasks.classification import ImageClassification as cls
    else:
        raise ValueError(f"config.task={name!r}; choose one of {TASKS}.")
    return cls(config)


__all__ = ["TASKS", "Task", "build_model_config", "make_task"]
