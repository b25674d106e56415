"""Gemma 3 270M (Google's weights from the hub) fine-tuned on tiny Shakespeare with Gemma's own tokenizer.

    jaxformer train --config gemma_finetune_shakespeare --workdir workdir/gemma_finetune_shakespeare

`init_from = "google/gemma-3-270m"`: the architecture (18 layers, d_model 640, 4 query heads and 1 key/value head of
256, 15 local layers with a 512-token window and 3 global ones, a 262,144-token vocabulary) and the starting
weights come from that checkpoint, downloaded once into the huggingface_hub cache; the tokenizer is its
tokenizer.json (`hf:` tokenizer). Gemma checkpoints are gated: accept the licence on the model's hub page, then
`huggingface-cli login` (or set HF_TOKEN). Any Gemma 1, 2, 3 or 4 text checkpoint, or a local directory holding
one, works the same way: `--config.init_from=ID_OR_DIR --config.data.tokenizer=hf:ID_OR_DIR`.

Training: 1000 steps of batch 4 x 256 tokens (1.0M tokens; the 1.1M characters of text are a few hundred thousand
Gemma tokens, so a few passes), AdamW lr 2e-5 with 100 warmup steps and cosine decay to 2e-6, weight decay 0.01
(not on the tied embedding table), clipping 1.0, no dropout (Gemma has none); bfloat16 compute with float32
parameters, the layers looped, not scanned (checkpoints store each layer). At the end it writes 500 tokens sampled
from "ROMEO:" (temperature 0.8, top-k 64) to samples.txt.

Memory: 268,098,176 parameters (167.8M of them the embedding table, tied with the output layer), 1.0 GiB in float32;
AdamW's two moments 2.0 GiB; gradients and updates 2.0 GiB. The activations are nearly all logits over the 262k
vocabulary (float32, 1,024 tokens a step x 262,144 x 4 bytes = 1 GiB per copy).
`jaxformer memory --config gemma_finetune_shakespeare` (from shapes, given a config.json of Gemma 3 270M's published
shape) estimates 7.5 GiB in all; XLA:CPU's memory analysis of an equivalent compiled step (AdamW, clipping, donated
state) reports an 8.4 GiB peak. Either way the run fits one Colab TPU v5e chip (16 GiB of HBM) without sharding or
remat. The batch is 4, not 8, because the logits grow with batch_size x seq_len: at 8 x 256 the same analysis
reports 13.3 GiB, too close to 16.

Expected time: NOT RUN by this project; an ESTIMATE from FLOPs. Training costs 6 x params x tokens = 6 x 268e6 x
1.02e6 = 1.65e15 FLOPs (attention adds ~4% at 256 tokens). On a Colab TPU runtime with one TPU v5e chip ("v5e-1":
197 TFLOP/s peak in bfloat16) at an assumed 20% MFU (a small model, 1k tokens a step):
1.65e15 / (197e12 x 0.20) = 42 s of steps, plus a minute or two of compilation, the evaluations, checkpoints and
the final sample: a few minutes in all. On another chip scale by its bfloat16 peak. The validation loss it reaches
is not known either.
"""

from jaxformer.configs.gpt2_finetune_shakespeare import finetune_config

CHECKPOINT = "google/gemma-3-270m"


def get_config():
    config = finetune_config("gemma_finetune_shakespeare", CHECKPOINT)
    config.batch_size = 4  # 1,024 tokens a step: the logits over 262k tokens dominate the memory
    config.num_steps = 1000
    config.learning_rate = 2e-5
    config.end_learning_rate = 2e-6
    config.warmup_steps = 100
    config.optimizer.weight_decay = 0.01
    config.optimizer.decay_embeddings = False
    config.eval_every = 250
    config.checkpoint_every = 500
    config.sample.prompt = "ROMEO:"
    config.sample.temperature = 0.8
    config.sample.top_k = 64
    return config
