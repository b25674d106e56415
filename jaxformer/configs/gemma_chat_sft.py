"""Gemma 2 2B taught to follow instructions: LoRA SFT on your conversations in Gemma's chat template, one 16 GiB
TPU chip.

    jaxformer train --config gemma_chat_sft --workdir workdir/gemma_chat_sft \
        --config.data.train_files=chats/train.jsonl --config.data.eval_files=chats/eval.jsonl
    jaxformer sample --pretrained google/gemma-2-2b --adapter workdir/gemma_chat_sft/adapter --chat \
        --template google/gemma-2-2b-it --prompt "Write a haiku about TPUs." --num_tokens 128 --temperature 0

`init_from = "google/gemma-2-2b"` (the pretrained base: weights, architecture, tokenizer) and the chat template of
`google/gemma-2-2b-it` (`config.data.template`; the same tokenizer): `<start_of_turn>user ... <end_of_turn>`,
replies as `<start_of_turn>model`, no system role (Gemma 2's template refuses one: merge it into the first user
turn). Both checkpoints are gated: accept the licence on their hub pages, then `huggingface-cli login`.

Data: JSONL, one `{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}` a line
(docs/chat.md shows a 10-line export of a Hugging Face chat dataset to this format). The loss falls on the
replies and their `<end_of_turn>` only; conversations are packed into rows of 512 tokens (never split; a longer
one keeps its turns up to the last reply that fits).

Memory, as gemma_lora_shakespeare (whose numbers `experiments/lora_memory.py` prints): the base frozen in bfloat16
(4.9 GiB), rank-8 adapters on every attention and MLP weight in float32, 2 rows x 512 = 1,024 tokens a step (the
same tokens a step as that recipe, so the same 4.2 GiB of activations, mostly the 256k-token logits): about
9.2 GiB, which fits a TPU v5e chip's 16 GiB.

Expected time: NOT RUN by this project; an ESTIMATE from FLOPs as for gemma_lora_shakespeare: 4 x 2.61e9
parameters x 1,024 tokens = 1.07e13 FLOPs a step; 2,000 steps (2.0M tokens) at an assumed 30% of a v5e's
197 TFLOP/s take about 6 minutes of steps, plus compilation, evaluations (greedy replies to 32 held-out
conversations) and the checkpoint's adapter export: 10-15 minutes. What it reaches depends on your data.
"""

from jaxformer.configs.gpt2_finetune_shakespeare import finetune_config
from jaxformer.training.defaults import default_config

CHECKPOINT = "google/gemma-2-2b"
TEMPLATE = "google/gemma-2-2b-it"


def get_config():
    base = finetune_config("gemma_chat_sft", CHECKPOINT)  # bfloat16 compute, looped layers, the checkpoint's fields
    config = default_config("sft")
    config.name = base.name
    config.init_from = CHECKPOINT
    config.model = base.model
    config.data.template = TEMPLATE
    config.data.train_files = "chats/train.jsonl"  # override on the command line
    config.data.eval_files = "chats/eval.jsonl"
    config.data.seq_len = 512
    config.data.eval_generate = 32
    config.data.max_new_tokens = 128

    config.batch_size = 2  # 1,024 tokens a step: the logits over 256k tokens dominate the activations
    config.num_steps = 2000
    config.learning_rate = 2e-4
    config.end_learning_rate = 2e-5
    config.warmup_steps = 50
    config.optimizer.weight_decay = 0.0
    config.eval_every = 500
    config.checkpoint_every = 500
    config.lora.rank = 8
    config.lora.alpha = 16.0
    config.lora.targets = "all-linear"
    config.lora.base_dtype = "bfloat16"
    return config
