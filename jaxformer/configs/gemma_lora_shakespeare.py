"""Gemma 2 2B (Google's weights from the hub) fine-tuned on tiny Shakespeare with LoRA on one 16 GiB TPU chip.

    jaxformer train --config gemma_lora_shakespeare --workdir workdir/gemma_lora_shakespeare
    jaxformer sample --pretrained google/gemma-2-2b --adapter workdir/gemma_lora_shakespeare/adapter --prompt "ROMEO:"

`init_from = "google/gemma-2-2b"`: the architecture (26 layers alternating local (4096-token window) and global
attention, d_model 2304, 8 query heads and 4 key/value heads of 256, GeGLU width 9216, soft-caps 50 / 30, a
256,000-token vocabulary tied with the output layer; 2.61B parameters) and the weights come from that checkpoint,
the tokenizer is its tokenizer.json. Gemma checkpoints are gated: accept the licence on the model's hub page, then
`huggingface-cli login` (or set HF_TOKEN).

Why LoRA: full fine-tuning keeps the weights, their gradients and AdamW's two moments in float32, 16 bytes a
parameter: 42 GiB for 2.61B parameters before any activation, more than a TPU v5e chip's 16 GiB. Here the base is
frozen in bfloat16 (`lora.base_dtype`, 4.9 GiB) and only rank-8 adapters on every attention and MLP weight train
(10.4M parameters, 0.4%; float32, with their AdamW moments 0.1 GiB). `python experiments/lora_memory.py` prints
`jaxformer memory`'s per-device report for this recipe and for the same run as a full fine-tuning, from shapes
(BENCHMARKS.md, "LoRA"): LoRA 9.2 GiB in all (4.9 GiB of parameters, 79 MiB of optimizer state, 79 MiB of
gradients and updates, 4.2 GiB of activations, mostly the logits): it fits one 16 GiB chip. Full fine-tuning
52.9 GiB (9.7 + 19.5 + 19.5 + 4.2): it does not.

Training: 1000 steps of batch 4 x 256 tokens (1.0M tokens), AdamW lr 2e-4 (LoRA's usual step, 10x full
fine-tuning's) with 50 warmup steps and cosine decay to 2e-5, no weight decay, clipping 1.0, bfloat16 compute, the
layers looped (checkpoints store each layer). The run ends by writing `adapter/` in peft's layout
(`peft.PeftModel.from_pretrained(base, dir)` and `pretrained.from_pretrained("google/gemma-2-2b", adapter=dir)`
load it) and 500 tokens sampled from "ROMEO:" to samples.txt; `--config.lora.export_merged=True` also writes the
merged model.

Expected time: NOT RUN by this project; an ESTIMATE from FLOPs. The forward and backward passes still run through
the whole base: the backward needs the gradient with respect to the activations (2 x params x tokens) but not the
weights', so a LoRA step costs about 4 x params x tokens = 4 x 2.61e9 x 1.02e6 = 1.07e16 FLOPs for the run. On a
Colab TPU v5e-1 (197 TFLOP/s peak in bfloat16) at an assumed 30% MFU: 1.07e16 / (197e12 x 0.30) = 3 minutes of
steps, plus compilation, evaluations and the sample: about 5-10 minutes. On another chip scale by its bfloat16
peak. The validation loss it reaches is not known.
"""

from jaxformer.configs.gpt2_finetune_shakespeare import finetune_config

CHECKPOINT = "google/gemma-2-2b"


def get_config():
    config = finetune_config("gemma_lora_shakespeare", CHECKPOINT)
    config.batch_size = 4  # 1,024 tokens a step: the logits over 256k tokens dominate the activations
    config.num_steps = 1000
    config.learning_rate = 2e-4
    config.end_learning_rate = 2e-5
    config.warmup_steps = 50
    config.optimizer.weight_decay = 0.0
    config.eval_every = 250
    config.checkpoint_every = 500
    config.lora.rank = 8
    config.lora.alpha = 16.0
    config.lora.targets = "all-linear"
    config.lora.base_dtype = "bfloat16"  # the frozen base in half the memory; the adapters stay float32
    config.sample.prompt = "ROMEO:"
    config.sample.temperature = 0.8
    config.sample.top_k = 64
    return config
