"""Character-level GPT on tiny Shakespeare for an accelerator: nanoGPT's `train_shakespeare_char` recipe.

    jaxformer train --config shakespeare_char --workdir workdir/shakespeare_char

6 layers, 6 heads, d=384, context 256, batch 64, dropout 0.2, 5000 steps, lr 1e-3 (100 warmup steps, cosine to
1e-4), AdamW b2=0.99, weight decay 0.1, clipping 1.0. nanoGPT reports validation loss 1.47 on one A100 in about
3 minutes. Too slow for a 2-core CPU (use shakespeare_char_cpu there); not yet measured by this project.
"""

from jaxformer.configs import shakespeare_char_cpu


def get_config():
    config = shakespeare_char_cpu.get_config()  # the CPU recipe, scaled up
    config.name = "shakespeare_char"
    config.data.seq_len = 256
    config.model.num_layers = 6
    config.model.num_heads = 6
    config.model.d_model = 384
    config.model.d_ff = 4 * 384
    config.model.dropout_rate = 0.2
    # The CPU recipe scans and rematerialises its layers (faster on XLA:CPU); on an H100 the plain loop was the
    # fastest GPT-2 small step (BENCHMARKS.md), so this recipe keeps it.
    config.model.scan_layers = False
    config.model.remat = "none"
    config.batch_size = 64
    config.num_steps = 5000
    config.eval_every = 500
    config.checkpoint_every = 1000
    return config
