"""default_config(): every key `train_and_evaluate` reads, with defaults; the recipes override them.

    config = default_config()            # in a recipe's get_config() (jaxformer/configs/*.py)
    config.task = "seq2seq"
    config.model.variant = "transformer-tiny"

Keys that other tools rely on keep these names: `num_steps`, `batch_size`, `seed`, `eval_every`,
`checkpoint_every`, `learning_rate`, `warmup_steps`, `schedule`, `model` (a ModelConfig variant name plus field
overrides, e.g. `model.dtype = "bfloat16"` for bf16 compute with float32 parameters), `data` (task specific).
"""

from __future__ import annotations

import ml_collections

from jaxformer import checks
from jaxformer.data.prepared import DEFAULT_VALIDATION_FRACTION


def default_config(task: str = "lm") -> ml_collections.ConfigDict:
    """Every key of a run of `task` ("lm", "mlm", "seq2seq", "classification", "sft" or "dpo"), `config.data`
    included."""
    checks.check_choice("config.task", task, tuple(TASK_DATA))
    config = ml_collections.ConfigDict()
    config.name = "run"
    config.task = task  # jaxformer.training.tasks
    config.seed = 0
    # A Hugging Face checkpoint (directory or hub id) to start from: its weights, and its architecture as the
    # model fields (config.model may then set only execution fields: dtype, remat, attention_impl, dropout rates).
    config.init_from = ""

    config.data = TASK_DATA[task]()  # keys depend on the task: see jaxformer/training/tasks/<task>.py
    if task == "dpo":
        config.dpo = ml_collections.ConfigDict()
        config.dpo.beta = 0.1  # the KL penalty's strength: rewards are beta * (log pi - log ref)
    config.model = ml_collections.ConfigDict()
    config.model.variant = "gpt2-tiny"  # plus any ModelConfig field to override
    config.model.dtype = "float32"  # computation; "bfloat16" keeps float32 parameters (param_dtype)
    config.model.scan_layers = False  # one compiled block scanned over the layers (compile time)
    config.model.remat = "none"  # none | full | dots | dots_no_batch (jaxformer/nn/remat.py)
    config.model.vocab_multiple = 1  # pad the embedding table to a multiple (e.g. 128 for GPT-2's 50257 tokens)

    # LoRA (jaxformer.lora): rank > 0 adds adapters to the model once its base weights are set (init_from's, or
    # random ones from config.model) and trains only them; checked by run.check_lora_config.
    config.lora = ml_collections.ConfigDict()
    config.lora.rank = 0  # 0 = no LoRA: every parameter trains
    config.lora.alpha = 16.0  # scale = alpha / rank (alpha / sqrt(rank) with use_rslora)
    config.lora.targets = "all-linear"  # or weight names, comma-separated: "w_q,w_v" (jaxformer.lora.TARGETS)
    config.lora.dropout = 0.0  # on each adapter's input (peft's lora_dropout)
    config.lora.use_rslora = False
    config.lora.export_merged = False  # also write workdir/merged/: the base with the adapters folded in
    config.lora.base_dtype = ""  # the frozen base's dtype ("" = the model's param_dtype; "bfloat16"); adapters f32

    config.num_steps = 1000
    config.batch_size = 32
    config.schedule = "warmup_cosine"  # jaxformer.training.SCHEDULES
    config.learning_rate = 1e-3  # the peak (inverse_sqrt: the factor in front of d_model^-0.5)
    config.end_learning_rate = 1e-4
    config.warmup_steps = 100
    config.label_smoothing = 0.0
    # Settings of particular schedules, in optimizer updates (= steps / optimizer.grad_accum_steps):
    config.schedule_options = ml_collections.ConfigDict()
    config.schedule_options.boundaries = ()  # step: multiply by decay_factor at each of these updates
    config.schedule_options.decay_factor = 0.1
    config.schedule_options.decay_rate = 0.5  # exponential: multiply by decay_rate every decay_steps
    config.schedule_options.decay_steps = 1000
    config.schedule_options.decay_fraction = 0.2  # warmup_stable_decay: the share of updates spent decaying

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "adamw"  # or "adafactor"
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.99
    config.optimizer.weight_decay = 0.1  # matrices only; norms and biases never decay
    config.optimizer.decay_embeddings = False
    config.optimizer.clip_norm = 1.0  # 0 = no clipping
    config.optimizer.grad_accum_steps = 1

    # Devices (jaxformer/sharding.py): data x fsdp x tensor x expert x context must use every device; -1 takes the
    # rest. context > 1 splits each sequence over that many devices (ring attention; parallel="jit", GPT models).
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.tensor = 1
    config.mesh.expert = 1
    config.mesh.context = 1
    # With context > 1: how each sequence is cut over the context devices. "zigzag" (device i holds chunks i and
    # 2c - 1 - i of 2c: every device does the same causal work) or "contiguous" (device i holds chunk i).
    config.sequence_layout = "zigzag"
    config.parallel = "jit"  # or "pmap" / "shard_map": per-device data parallelism (training/runner.py)
    config.distributed = False  # multi-host: jax.distributed.initialize() first (training/multihost.py)

    # The input pipeline (data/pipeline.py, grain): threads reading batches ahead, and worker processes.
    config.grain = ml_collections.ConfigDict()
    config.grain.num_threads = 2
    config.grain.prefetch_buffer_size = 4
    config.grain.num_workers = 0  # > 0: grain worker processes (helps when building a batch is costly)

    config.log_every = 50
    config.eval_every = 250
    config.checkpoint_every = 500
    config.keep_checkpoints = 3

    config.sample = ml_collections.ConfigDict()  # what a language model writes to samples.txt at the end
    config.sample.prompt = "\n"
    config.sample.num_tokens = 500
    config.sample.temperature = 0.8
    config.sample.top_k = 200
    return config


def text_data() -> ml_collections.ConfigDict:
    """`config.data` of the text tasks (lm, mlm): where the text comes from, its tokenizer, how batches are cut."""
    data = ml_collections.ConfigDict()
    data.prepared = ""  # a directory written by `jaxformer prepare` (tokens and tokenizer); else the source below
    data.source = "tfds"  # or "text_file" with data.path
    data.name = "tiny_shakespeare"
    data.data_dir = ""  # "" = $TFDS_DATA_DIR, else tfds's default
    data.path = ""
    data.validation_fraction = DEFAULT_VALIDATION_FRACTION  # text_file: the tail held out (as `jaxformer prepare`)
    data.train_split = "train"
    data.eval_split = "validation"
    data.tokenizer = "char"  # or "byte", "sentencepiece" (with data.vocab_size), "hf:DIR_OR_HUB_ID"
    data.vocab_size = 0  # sentencepiece only
    data.sentencepiece_type = "unigram"  # or "bpe"
    data.seq_len = 64
    data.sampling = "random_windows"  # or "packed_documents" (data/pipeline.py; lm only)
    return data


def mlm_data() -> ml_collections.ConfigDict:
    """`config.data` of the masked LM: the text tasks' keys plus the share of tokens chosen for prediction."""
    data = text_data()
    data.mask_rate = 0.15  # BERT's: 80% [MASK] / 10% random / 10% kept (models.mask_for_mlm)
    return data


def seq2seq_data() -> ml_collections.ConfigDict:
    """`config.data` of the encoder-decoder task: a synthetic digit task generated from the seed
    (`data.seq2seq_task`)."""
    data = ml_collections.ConfigDict()
    data.task = "reverse"  # or "sort", "add"
    data.min_len = 1  # source lengths, drawn uniformly from [min_len, max_len]
    data.max_len = 8
    data.num_train = 20_000
    data.num_eval = 1_000
    return data


def image_data() -> ml_collections.ConfigDict:
    """`config.data` of image classification (`data.image_dataset`)."""
    data = ml_collections.ConfigDict()
    data.name = "mnist"  # or "digits" (scikit-learn's 8x8 digits, offline)
    data.fallback = "digits"  # loaded (with a warning) when `name` is not prepared; "" = fail instead
    data.data_dir = ""  # "" = $TFDS_DATA_DIR
    data.train_split = "train"
    data.eval_split = "test"
    data.patch_grid = 4  # g: each image is cut into g x g patches
    return data


def chat_data() -> ml_collections.ConfigDict:
    """`config.data` of the conversation tasks (sft, dpo): the chat template, where conversations come from, the
    row length and held-out decoding."""
    data = ml_collections.ConfigDict()
    data.template = ""  # "" = config.init_from's chat template; "byte_chatml" (from scratch); or a directory / hub id
    data.train_files = ""  # JSONL, comma-separated paths or globs (sft: {"messages"}; dpo: {"prompt", "chosen", ...})
    data.eval_files = ""
    data.prepared = ""  # sft, instead of files: `jaxformer prepare --source chat:GLOB`'s directory (its own template)
    data.synthetic = ""  # instead of files: a task of data.synthetic_chat ("strings"), generated from the seed
    data.num_train = 20_000  # synthetic only
    data.num_eval = 500
    data.seq_len = 128  # sft: the packed row length; dpo: the padded length of a prompt + reply
    data.eval_generate = 64  # held-out conversations decoded greedily for val_exact_match (0 = none)
    data.max_new_tokens = 16
    return data


TASK_DATA = {
    "lm": text_data,
    "mlm": mlm_data,
    "seq2seq": seq2seq_data,
    "classification": image_data,
    "sft": chat_data,
    "dpo": chat_data,
}


def complete(config: ml_collections.ConfigDict | dict) -> ml_collections.ConfigDict:
    """A new config: `config` over `default_config(config.task)`, so every key a run reads exists.

    The one place defaults come from: code reads `config.label_smoothing`, never `config.get(key, default)`.
    Keys `config` sets win (also keys the defaults do not have); `config` itself is not changed.
    """
    if not isinstance(config, ml_collections.ConfigDict | dict):
        raise TypeError(f"`config` must be an ml_collections.ConfigDict or a dict; got {type(config).__name__}.")
    values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    return ml_collections.ConfigDict(_merge(default_config(values.get("task", "lm")).to_dict(), values))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both_dicts else value
    return out
