"""jaxformer.training: schedules, optimizers, TrainState and the pure train / eval steps."""

from jaxformer.training.optimizers import OPTIMIZERS, decay_mask, make_optimizer
from jaxformer.training.schedules import SCHEDULES, make_schedule
from jaxformer.training.state import Graphs, TrainState, create_train_state, merge
from jaxformer.training.steps import lm_loss, make_eval_step, make_train_step

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "Graphs",
    "TrainState",
    "create_train_state",
    "decay_mask",
    "lm_loss",
    "make_eval_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "merge",
]
