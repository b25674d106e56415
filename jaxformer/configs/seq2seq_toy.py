"""Encoder-decoder Transformer on a synthetic digit task (reverse / sort / add), generated offline.

    jaxformer train --config seq2seq_toy --workdir workdir/seq2seq_toy
    jaxformer train --config seq2seq_toy --config.data.task=sort --workdir workdir/sort

transformer-tiny (2 + 2 layers, d=64, 4 heads, post-norm, sinusoidal positions), sequences of 1-8 digits,
20,000 training examples, batch 64, AdamW lr 1e-3 (warmup 100, cosine to 1e-5), no dropout.
Validation: 1,000 fresh examples decoded greedily; `val_exact_match` is the share answered exactly.
Expected on the 2-core CPU dev machine: about 1.5 minutes (1:12 measured), val_exact_match 1.0 (100%) and
val_loss ~5e-4 at step 1500 for reverse. tests/training/test_tasks.py (slow) checks >= 99% exact match.
"""

from jaxformer.training.defaults import default_config


def get_config():
    # config.data: "reverse" of 1-8 digits, 20,000 training and 1,000 validation examples (defaults.seq2seq_data)
    config = default_config("seq2seq")
    config.name = "seq2seq_toy"
    config.seed = 0

    config.model.variant = "transformer-tiny"
    config.model.dropout_rate = 0.0

    config.num_steps = 1500
    config.batch_size = 64
    config.learning_rate = 1e-3
    config.end_learning_rate = 1e-5
    config.warmup_steps = 100
    config.eval_every = 500
    return config
