"""Preference optimisation (DPO) on CPU: a small GPT learns to prefer right answers over answers wrong in one
character, in ChatML conversations.

    jaxformer train --config chat_dpo_cpu --workdir workdir/chat_dpo_cpu      # from the repository's root

Data: `data.synthetic_chat.preference_task("strings")`: a user asks for a word uppercased, reversed or
capitalised; chosen is the right answer, rejected the same with one letter changed into one the word does not
have. Rendered by ChatML over the byte-level tokenizer (`chat.byte_chatml`); each side is prompt + reply, padded to
72 tokens. The reference is the starting model (its log-probabilities of every pair computed once before
training); beta 0.1. Held-out pairs ask about words training never sees; `val_reward_accuracy` is the share where
the policy's implicit reward prefers the chosen reply.

Model: as chat_sft_cpu (4 layers, d=128, rotary positions), trained from scratch by DPO alone.

Measured: see the end of this docstring once run (the target is val_reward_accuracy >= 0.9).
"""

import ml_collections

from jaxformer.training.defaults import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config("dpo")
    config.name = "chat_dpo_cpu"
    config.seed = 0
    config.dpo.beta = 0.1

    config.data.template = "byte_chatml"
    config.data.synthetic = "strings"
    config.data.num_train = 8_000
    config.data.num_eval = 500
    config.data.seq_len = 71  # prompt + reply: 72 tokens, the longest pair
    config.data.max_new_tokens = 12

    config.model.variant = "gpt2-tiny"
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.d_model = 128
    config.model.d_ff = 512
    config.model.positional = "rope"
    config.model.dropout_rate = 0.0
    config.model.scan_layers = True
    config.model.remat = "dots_no_batch"

    config.num_steps = 1000
    config.batch_size = 32
    config.learning_rate = 2e-3
    config.end_learning_rate = 1e-4
    config.warmup_steps = 50
    config.optimizer.weight_decay = 0.0
    config.log_every = 50
    config.eval_every = 200
    config.checkpoint_every = 200
    return config
