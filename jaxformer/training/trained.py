"""A trained language model back from its workdir, without its training data: what `jaxformer sample` reads."""

from __future__ import annotations

import json
import os

import ml_collections

from jaxformer import data
from jaxformer.data import chat
from jaxformer.models import GPT
from jaxformer.training import defaults
from jaxformer.training.checkpoints import Checkpointer
from jaxformer.training.run import build_run
from jaxformer.training.state import create_train_state, merge, with_base
from jaxformer.training.tasks.lm import lm_model_fields
from jaxformer.training.tasks.sft import TEMPLATE_FILE as CHAT_TEMPLATE_FILE


def load_trained(workdir: str) -> tuple[GPT, data.Tokenizer, ml_collections.ConfigDict]:
    """(GPT in eval mode, tokenizer, config) from the newest checkpoint of a language-model run's workdir (task
    "lm", "sft" or "dpo"; what `jaxformer sample` reads): the tokenizer from `tokenizer.json` (or, for the chat
    tasks, `chat_template.json`: `load_chat_template`), no training data needed. A LoRA run's model is its base
    (config.init_from, read again) with the trained adapters."""
    chat_path = os.path.join(workdir, CHAT_TEMPLATE_FILE)
    path = os.path.join(workdir, "tokenizer.json")
    if os.path.exists(chat_path):
        tokenizer = load_chat_template(workdir).tokenizer
    elif os.path.exists(path):
        with open(path) as f:
            tokenizer = data.tokenizer_from_dict(json.load(f))
    else:
        raise FileNotFoundError(
            f"{path} does not exist: {workdir} holds no trained language model (task 'lm', 'sft' or 'dpo')."
        )
    with Checkpointer(os.path.join(workdir, "checkpoints")) as checkpoints:
        step = checkpoints.latest_intact_step()  # damaged newer ones are reported and moved aside
        if step is None:
            raise FileNotFoundError(f"No intact checkpoint in {checkpoints.directory}: train first.")
        config = defaults.complete(checkpoints.restore_config(step))
        if config.task not in ("lm", "sft", "dpo"):
            raise ValueError(f"{workdir} holds a {config.task!r} model; sampling text needs task 'lm', 'sft' or 'dpo'.")
        run = build_run(config, data_fields=lm_model_fields(config, tokenizer))
        graphs, template = create_train_state(run.make_model(), run.optimizer)
        if run.is_lora and (base := run.initial_params()) is not None:  # a LoRA checkpoint holds no base weights
            template = with_base(template, base)
        state, _ = checkpoints.restore(template, step)
    return merge(graphs.eval, state), tokenizer, config


def load_chat_template(workdir: str) -> chat.ChatTemplate:
    """The chat template a conversation run (task "sft" / "dpo") trained with: `workdir/chat_template.json`."""
    path = os.path.join(workdir, CHAT_TEMPLATE_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist: {workdir} is not a chat run (task 'sft' or 'dpo').")
    with open(path, encoding="utf-8") as f:
        return chat.ChatTemplate.from_dict(json.load(f))
