"""GPT-2 small (124M, OpenAI's weights from the hub) fine-tuned on tiny Shakespeare with GPT-2's own BPE.

    jaxformer train --config gpt2_finetune_shakespeare --workdir workdir/gpt2_finetune_shakespeare

`init_from = "openai-community/gpt2"`: the architecture and the starting weights come from that checkpoint
(downloaded once into the huggingface_hub cache), the tokenizer is its tokenizer.json (`hf:` tokenizer); GPT-2's
dropout (0.1) is kept. 1000 steps of batch 8 x 256 tokens (2M tokens), AdamW lr 3e-5 with 100 warmup steps and
cosine decay to 3e-6, weight decay 0.01, clipping 1.0, bfloat16 compute with float32 parameters. Needs internet
once (or the checkpoint in the cache, or a local directory passed as `--config.init_from=DIR
--config.data.tokenizer=hf:DIR`); meant for an accelerator. Expected time and loss on a Colab GPU / TPU: not
measured by this project yet.
"""

from jaxformer.configs import shakespeare_char_cpu

CHECKPOINT = "openai-community/gpt2"


def finetune_config(name: str, checkpoint: str):
    """Tiny Shakespeare (the loop's settings of shakespeare_char_cpu) from `checkpoint`'s weights, architecture and
    tokenizer, 256 tokens a row, bfloat16 compute, looped layers: what every fine-tuning recipe shares."""
    config = shakespeare_char_cpu.get_config()
    config.name = name
    config.init_from = checkpoint
    config.data.tokenizer = f"hf:{checkpoint}"
    config.data.seq_len = 256
    # With init_from the architecture is the checkpoint's: only execution fields may be set here.
    model = config.model
    for field in list(model.keys()):
        if field not in ("variant", "dtype", "scan_layers", "remat"):
            del model[field]
    model.dtype = "bfloat16"
    model.scan_layers = False  # checkpoints store each layer
    model.remat = "none"
    return config


def get_config():
    config = finetune_config("gpt2_finetune_shakespeare", CHECKPOINT)
    config.batch_size = 8
    config.num_steps = 1000
    config.learning_rate = 3e-5
    config.end_learning_rate = 3e-6
    config.warmup_steps = 100
    config.optimizer.weight_decay = 0.01
    config.eval_every = 250
    config.checkpoint_every = 250
    config.sample.prompt = "ROMEO:"
    config.sample.top_k = 50
    return config
