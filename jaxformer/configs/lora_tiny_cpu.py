"""LoRA on CPU in a minute: rank-4 adapters on a tiny pretrained Llama (a test fixture) learn tiny Shakespeare.

    jaxformer train --config lora_tiny_cpu --workdir workdir/lora_tiny_cpu      # from the repository's root

`init_from = "tests/fixtures/pretrained/llama"`: the 2-layer, d_model 24 Llama checkpoint (random weights, made by
`transformers`; experiments/make_pretrained_fixtures.py) and its 96-token byte-level tokenizer. The base stays
frozen; rank-4 adapters (alpha 8) on every attention and MLP weight train: 3,072 parameters beside the 15,096 of
the base, with AdamW
lr 1e-2 (adapters want a larger step than full fine-tuning), 30 warmup steps, cosine decay, batch 16 x 32 tokens,
400 steps. At the end the run writes `adapter/` (peft's layout: `jaxformer sample --pretrained
tests/fixtures/pretrained/llama --adapter workdir/lora_tiny_cpu/adapter`) and `merged/` (the base with the
adapters folded in, loadable by transformers).

What it shows is the mechanics, not a good model: the base has random weights and the adapters are small, so the
loss falls only as far as rank-4 updates of a 24-wide model can take it. Measured on the 2-core Intel Xeon
(AVX-512 + BF16 + AMX) dev machine, jax 0.12.1, session 12: 25 s in all (6.5 s of steps); training loss 5.47 (mean
of the first 50 steps) -> 4.57 (step 100) -> 4.31 (step 400), validation loss 4.49 (step 100) -> 4.36 -> 4.31 ->
4.29 (step 400).
"""

import ml_collections

from jaxformer.configs import shakespeare_char_cpu

CHECKPOINT = "tests/fixtures/pretrained/llama"


def get_config() -> ml_collections.ConfigDict:
    config = shakespeare_char_cpu.get_config()
    config.name = "lora_tiny_cpu"
    config.init_from = CHECKPOINT
    config.data.tokenizer = f"hf:{CHECKPOINT}"
    config.data.seq_len = 32  # the checkpoint's positions stop at 64
    # With init_from the architecture is the checkpoint's: only execution fields may be set.
    model = config.model
    for field in list(model.keys()):
        if field not in ("variant", "dtype", "scan_layers", "remat"):
            del model[field]
    model.scan_layers = False  # a checkpoint stores each layer
    model.remat = "none"

    config.lora.rank = 4
    config.lora.alpha = 8.0
    config.lora.targets = "all-linear"
    config.lora.export_merged = True

    config.num_steps = 400
    config.batch_size = 16
    config.learning_rate = 1e-2
    config.end_learning_rate = 1e-3
    config.warmup_steps = 30
    config.optimizer.weight_decay = 0.0
    config.log_every = 50
    config.eval_every = 100
    config.checkpoint_every = 200
    config.sample.prompt = "ROMEO:"
    config.sample.num_tokens = 100
    return config
