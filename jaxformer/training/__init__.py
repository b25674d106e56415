"""jaxformer.training: schedules, optimizers, TrainState, the pure steps and the runner that runs them on devices."""

from jaxformer.training.optimizers import OPTIMIZERS, decay_mask, make_optimizer
from jaxformer.training.run import Run, build_run
from jaxformer.training.runner import PARALLEL, StepRunner, make_eval_step, make_train_step
from jaxformer.training.schedules import SCHEDULES, make_schedule
from jaxformer.training.state import Graphs, LoRATrainState, TrainState, create_train_state, merge
from jaxformer.training.steps import LossFn, eval_step_fn, train_step_fn

__all__ = [
    "OPTIMIZERS",
    "PARALLEL",
    "SCHEDULES",
    "Graphs",
    "LoRATrainState",
    "LossFn",
    "Run",
    "StepRunner",
    "TrainState",
    "build_run",
    "create_train_state",
    "decay_mask",
    "eval_step_fn",
    "make_eval_step",
    "make_optimizer",
    "make_schedule",
    "make_train_step",
    "merge",
    "train_step_fn",
]
