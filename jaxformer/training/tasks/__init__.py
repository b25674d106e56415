"""Training tasks: what `train_and_evaluate` trains, chosen by `config.task`.

lm              GPT, next-token prediction on text                   (shakespeare_char*)
mlm             BERT, masked-token prediction on text                (bert_mlm_tiny)
seq2seq         encoder-decoder Transformer on a synthetic task      (seq2seq_toy)
classification  ViT on images                                        (vit_digits)
sft             a decoder fine-tuned on conversations' replies         (chat_sft_cpu)
dpo             a decoder taught preferences between replies (DPO)    (chat_dpo_cpu)
"""

from __future__ import annotations

import ml_collections

from jaxformer import checks
from jaxformer.training import defaults
from jaxformer.training.defaults import TASK_DATA
from jaxformer.training.tasks.base import Task

TASKS = tuple(TASK_DATA)  # each with its config.data defaults


def make_task(config: ml_collections.ConfigDict) -> Task:
    """The Task `config.task` names, with its data loaded, over `config` completed with its defaults (`build_run`,
    which callers use, calls this)."""
    config = defaults.complete(config)
    return task_class(config.task)(config)


def task_class(name: str) -> type[Task]:
    """The Task class of the task `name` (imported on demand: each pulls in its own model and data)."""
    checks.check_choice("config.task", name, TASKS)
    if name == "lm":
        from jaxformer.training.tasks.lm import LanguageModelling as cls
    elif name == "mlm":
        from jaxformer.training.tasks.mlm import MaskedLanguageModelling as cls
    elif name == "seq2seq":
        from jaxformer.training.tasks.seq2seq import SequenceToSequence as cls
    elif name == "classification":
        from jaxformer.training.tasks.classification import ImageClassification as cls
    elif name == "sft":
        from jaxformer.training.tasks.sft import SupervisedFineTuning as cls
    else:  # "dpo"
        from jaxformer.training.tasks.dpo import PreferenceOptimization as cls
    return cls


__all__ = ["TASKS", "Task", "make_task", "task_class"]
