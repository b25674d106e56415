"""Character-level BERT (masked LM) on tiny Shakespeare.

    jaxformer train --config bert_mlm_tiny --workdir workdir/bert_mlm_tiny

bert-tiny overridden to 4 layers, 4 heads, d=128 (post-norm, learned positions, GELU, tied MLM decoder), context
64 characters, 15% of them chosen per window (80% [MASK] / 10% random / 10% kept), batch 16, AdamW lr 1e-3
(warmup 100, cosine to 1e-4), no dropout. Validation: the tfds validation split, corrupted once with a fixed key;
`val_loss` / `val_accuracy` count the chosen characters only.
Expected on the 2-core CPU dev machine: about 5 minutes (5:08 measured), val_loss 2.19 and val_accuracy 0.39 on
the masked characters at step 2000.
"""

from jaxformer.training.defaults import default_config


def get_config():
    config = default_config("mlm")  # config.data: tiny Shakespeare, characters, context 64, mask_rate 0.15
    config.name = "bert_mlm_tiny"
    config.seed = 0

    config.model.variant = "bert-tiny"
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.d_model = 128
    config.model.d_ff = 512
    config.model.dropout_rate = 0.0
    config.model.attention_dropout_rate = 0.0

    config.num_steps = 2000
    config.batch_size = 16
    config.eval_every = 500
    return config
