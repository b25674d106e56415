"""Character-level GPT on tiny Shakespeare, nanoGPT's CPU recipe ("baby GPT" on a laptop).

    jaxformer train --config shakespeare_char_cpu --workdir workdir/shakespeare_char_cpu

4 layers, 4 heads, d=128, context 64, batch 12, 2000 steps, AdamW (b2=0.99, weight decay 0.1 on all matrices
and embeddings), lr 1e-3 with 100 warmup steps and cosine decay to 1e-4, gradient clipping 1.0, no dropout; the
layers are scanned and rematerialised (dots_no_batch), the fastest step on XLA:CPU.
Data: tfds `tiny_shakespeare` (train / validation splits) from $TFDS_DATA_DIR.
Expected on the 2-core CPU dev machine: about 70 seconds on an AMD EPYC (68.8 s, 25 ms a step, quiet machine, jax
0.10.2, session 8), 2:19 on an Intel Xeon with AVX-512 (138.5 s, 55.6 ms a step, jax 0.12.1, session 9), and
validation loss 1.765 at step 2000 (the target is <= 1.89; nanoGPT reports 1.88 for this recipe). See README.md
for a sample.
"""

import ml_collections

from jaxformer.training.defaults import default_config


def get_config() -> ml_collections.ConfigDict:
    config = default_config()
    config.name = "shakespeare_char_cpu"
    config.seed = 1337

    # config.data: tiny Shakespeare from tfds, characters, context 64 (defaults.text_data)

    config.model.variant = "gpt2-tiny"
    config.model.num_layers = 4
    config.model.num_heads = 4
    config.model.d_model = 128
    config.model.d_ff = 512
    config.model.dropout_rate = 0.0
    # On XLA:CPU the scanned, rematerialised stack is the fastest step (0.80x the looped one, measured in one run by
    # experiments/ablate_train_cpu.py; BENCHMARKS.md): the backward recomputes each block's element-wise work
    # instead of storing it, and the scan compiles one block.
    config.model.scan_layers = True
    config.model.remat = "dots_no_batch"
    # XLA's attention (T x T scores) is the fastest at context 64; "blockwise" keeps O(T) memory for long contexts.
    config.model.attention_impl = "xla"

    config.num_steps = 2000
    config.batch_size = 12
    config.schedule = "warmup_cosine"
    config.learning_rate = 1e-3
    config.end_learning_rate = 1e-4
    config.warmup_steps = 100

    config.optimizer.name = "adamw"
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.99
    config.optimizer.weight_decay = 0.1
    config.optimizer.decay_embeddings = True  # nanoGPT decays every 2-D parameter
    config.optimizer.clip_norm = 1.0
    config.optimizer.grad_accum_steps = 1

    config.log_every = 50
    config.eval_every = 250
    config.checkpoint_every = 500
    config.keep_checkpoints = 3

    config.sample.prompt = "\n"  # samples.txt: 500 characters at temperature 0.8, top-k 200
    return config
