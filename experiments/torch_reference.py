"""A PyTorch reference of a jaxformer GPT recipe (default `shakespeare_char_cpu`, nanoGPT's CPU "baby GPT").

    python experiments/torch_reference.py --steps 2000             # train, evaluate, sample: ~2 minutes on 2 cores
    python experiments/torch_reference.py --steps 2000 --compile   # the same with torch.compile(model)
    python experiments/torch_reference.py --smoke                  # tiny sizes, seconds
    python experiments/torch_reference.py --text input.txt         # a text file instead of tfds (last 10%: val)

Written for this comparison (not nanoGPT's code), to compute exactly what jaxformer computes for the recipe:

  model      GPT-2 style, pre-norm: x = E[tokens] + P[0..T-1]; per block x += Attn(LN1(x)); x += MLP(LN2(x));
             logits = LN_f(x) E^T (tied). LayerNorm eps = config.model's norm_epsilon (1e-5) with bias, biases on
             every Linear (q/k/v, attention output, MLP in/out), GELU in the tanh form (jaxformer's "gelu"),
             causal softmax attention scaled by 1/sqrt(H) (F.scaled_dot_product_attention), no dropout.
  init       jaxformer's initial parameters, COPIED (the GPT built as jaxformer's loop builds it, seed
             config.seed): identical by construction; the forward passes are compared on a batch (asserted).
  optimizer  AdamW(b1, b2, eps=1e-8) with weight decay on exactly jaxformer's set (`decay_mask`: every weight
             matrix, and the token and position tables when decay_embeddings), none on biases and norms;
             global-norm clipping (torch's clip_grad_norm_); the warmup-cosine schedule in closed form through
             LambdaLR (asserted equal to jaxformer's optax schedule at every step).
  data       the batches of `data.pipeline.random_windows` (step s: B windows at starts drawn by
             np.random.default_rng((seed, s))), validation over `data.pipeline.eval_windows` (every token of the
             split once, non-overlapping windows, padding masked), both re-implemented here in NumPy and asserted
             equal to jaxformer's; the characters tokenized by jaxformer's CharTokenizer.
  loop       nanoGPT's step: zero_grad, forward + loss, backward, clip, optimizer.step, scheduler.step,
             loss.item() every step; log every config.log_every steps, evaluate every config.eval_every and at the
             end, save a checkpoint every config.checkpoint_every (with --out_dir), then sample 500 characters
             (temperature 0.8, top-k 200 clamped to the vocabulary, prompt "\\n", the context cropped as nanoGPT does).

The training process never imports jax (whose import alone adds ~150 MB of resident memory, which would distort a
peak-RSS comparison): the recipe - config, tokens, vocabulary, initial parameters, jaxformer's logits on a check
batch and its learning rate at every step - is first exported by a child process (this script with --export),
into a .npz the training process reads (--init FILE reuses one). The last line printed is a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def default_tfds_dir() -> None:
    """TFDS_DATA_DIR as `make run` sets it: ../shared/tensorflow_datasets next to the repository, if there."""
    shared = os.path.abspath(os.path.join(ROOT, "..", "shared", "tensorflow_datasets"))
    if not os.environ.get("TFDS_DATA_DIR") and os.path.isdir(shared):
        os.environ["TFDS_DATA_DIR"] = shared


# -- the recipe (jaxformer side; only the exporting process imports jax) -------------------------------------------


SMOKE = {  # tiny sizes for smoke tests: 1 layer of width 32, context 16, batch 2, 20 steps, evaluated at the end
    "model.num_layers": 1,
    "model.d_model": 32,
    "model.d_ff": 64,
    "model.num_heads": 2,
    "data.seq_len": 16,
    "batch_size": 2,
    "num_steps": 20,
    "warmup_steps": 4,
    "log_every": 5,
    "eval_every": 20,
    "checkpoint_every": 10,
    "sample.num_tokens": 50,
}


def recipe_overrides(*, smoke: bool = False, steps: int | None = None, text: str | None = None) -> dict:
    """Dotted config keys -> values (as `jaxformer train --config.KEY=VALUE` takes them): `smoke` (the SMOKE sizes),
    `steps` (num_steps, also the schedule's length), `text` (a text file instead of
    tfds; its last 10% validates)."""
    out = dict(SMOKE) if smoke else {}
    if steps is not None:
        out["num_steps"] = steps
    if text:
        out.update({"data.source": "text_file", "data.path": os.path.abspath(text)})
    return out


def recipe_config(name: str = "shakespeare_char_cpu", **overrides):
    """The jaxformer config: recipe `name` (a name or a .py file) with `recipe_overrides(**overrides)` applied."""
    from jaxformer.configs import load_config

    config = load_config(name)
    for key, value in recipe_overrides(**overrides).items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    config.warmup_steps = min(config.warmup_steps, config.num_steps)  # a short run warms up for all of it
    return config


def check_supported(config, model_cfg) -> None:
    """The reference implements one architecture and one optimizer: refuse a config it would not reproduce."""
    want = {
        "norm": "layernorm",
        "norm_position": "pre",
        "positional": "learned",
        "tie_embeddings": True,
        "head_bias": False,
        "embed_scale": False,
        "embed_norm": False,
        "type_vocab_size": 0,
        "qk_norm": False,
        "sliding_window": None,
        "qkv_bias": True,
        "out_bias": True,
        "mlp_bias": True,
        "dropout_rate": 0.0,
        "attention_dropout_rate": 0.0,
        "ffn_dropout_rate": 0.0,
    }
    wrong = {k: getattr(model_cfg, k) for k, v in want.items() if getattr(model_cfg, k) != v}
    if str(model_cfg.dtype) != "float32" or str(model_cfg.param_dtype) != "float32":
        wrong["dtype"] = (str(model_cfg.dtype), str(model_cfg.param_dtype))
    if model_cfg.activation not in ("gelu", "gelu_exact"):
        wrong["activation"] = model_cfg.activation
    if model_cfg.num_kv_heads != model_cfg.num_heads or model_cfg.head_dim * model_cfg.num_heads != model_cfg.d_model:
        wrong["heads"] = (model_cfg.num_heads, model_cfg.num_kv_heads, model_cfg.head_dim)
    if model_cfg.padded_vocab_size != model_cfg.vocab_size:
        wrong["vocab_multiple"] = model_cfg.vocab_multiple
    opt = config.optimizer
    if (opt.name, config.schedule, opt.grad_accum_steps, config.get("label_smoothing", 0.0)) != (
        "adamw",
        "warmup_cosine",
        1,
        0.0,
    ):
        wrong["optimizer"] = (opt.name, config.schedule, opt.grad_accum_steps, config.get("label_smoothing", 0.0))
    if config.data.get("sampling", "random_windows") != "random_windows":
        wrong["data.sampling"] = config.data.sampling
    if wrong:
        raise ValueError(f"torch_reference.py does not implement these settings of the recipe: {wrong}")


def reference_arrays(params, model_cfg) -> dict[str, np.ndarray]:
    """jaxformer's GPT parameters (an nnx.State of `nnx.Param`, scanned `[L, ...]` or a list of blocks) as float32
    NumPy arrays named and laid out as the torch model's state_dict (`TorchGPT`)."""
    import jax

    flat = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [getattr(k, "key", getattr(k, "idx", None)) for k in path]
        keys = [str(k) for k in keys if k is not None and k != "value"]
        flat[".".join(keys)] = np.asarray(jax.device_get(leaf), np.float32)
    D, N, H, L = model_cfg.d_model, model_cfg.num_heads, model_cfg.head_dim, model_cfg.num_layers

    def layer(name: str, i: int) -> np.ndarray:
        scanned = f"blocks.layers.{name}"
        return flat[scanned][i] if scanned in flat else flat[f"blocks.layers.{i}.{name}"]

    out = {
        "wte.weight": flat["embed.tokens.embedding"],
        "wpe.weight": flat["embed.positions.embedding"],
        "ln_f.weight": flat["final_norm.scale"],
        "ln_f.bias": flat["final_norm.bias"],
    }
    for i in range(L):
        a = "self_attention."
        w_qkv = np.concatenate([layer(a + w, i).reshape(D, N * H) for w in ("w_q", "w_k", "w_v")], axis=1)
        b_qkv = np.concatenate([layer(a + b, i).reshape(N * H) for b in ("b_q", "b_k", "b_v")])
        p = f"h.{i}."
        out.update(
            {
                p + "ln_1.weight": layer("self_residual.norm.scale", i),
                p + "ln_1.bias": layer("self_residual.norm.bias", i),
                p + "attn.c_attn.weight": w_qkv.T,  # torch Linear: [out, in]
                p + "attn.c_attn.bias": b_qkv,
                p + "attn.c_proj.weight": layer(a + "w_o", i).reshape(N * H, D).T,
                p + "attn.c_proj.bias": layer(a + "b_o", i),
                p + "ln_2.weight": layer("ffn_residual.norm.scale", i),
                p + "ln_2.bias": layer("ffn_residual.norm.bias", i),
                p + "mlp.c_fc.weight": layer("ffn.w_in", i).T,
                p + "mlp.c_fc.bias": layer("ffn.b_in", i),
                p + "mlp.c_proj.weight": layer("ffn.w_out", i).T,
                p + "mlp.c_proj.bias": layer("ffn.b_out", i),
            }
        )
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def decayed_names(params, model_cfg, decay_embeddings: bool) -> list[str]:
    """The torch parameter names that jaxformer's AdamW mask (`optimizers.decay_mask`) decays."""
    import jax

    from jaxformer.training.optimizers import decay_mask

    mask = decay_mask(params, decay_embeddings=decay_embeddings)
    # The mask as 0 / 1 arrays shaped like the parameters, renamed as they are: a torch parameter that merges
    # several jaxformer ones (c_attn = w_q | w_k | w_v) must be all decayed or all not.
    renamed = reference_arrays(jax.tree.map(lambda m, p: np.full(p.shape, float(m)), mask, params), model_cfg)
    mixed = [k for k, v in renamed.items() if v.min() != v.max()]
    if mixed:
        raise ValueError(f"Weight decay differs within the merged torch parameters {mixed}.")
    return sorted(k for k, v in renamed.items() if v.min() == 1.0)


def recipe_meta(config, model_cfg, tokenizer) -> dict:
    """The settings the torch side needs, as plain JSON values."""
    opt = config.optimizer
    return {
        "name": config.name,
        "vocab": tokenizer.chars,
        "vocab_size": model_cfg.vocab_size,
        "num_layers": model_cfg.num_layers,
        "num_heads": model_cfg.num_heads,
        "d_model": model_cfg.d_model,
        "d_ff": model_cfg.d_ff,
        "max_len": model_cfg.max_len,
        "norm_epsilon": model_cfg.norm_epsilon,
        "gelu_tanh": model_cfg.activation == "gelu",
        "seq_len": config.data.seq_len,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "num_steps": config.num_steps,
        "warmup_steps": config.warmup_steps,
        "learning_rate": config.learning_rate,
        "end_learning_rate": config.end_learning_rate,
        "b1": opt.b1,
        "b2": opt.b2,
        "eps": 1e-8,  # optimizers.make_optimizer's default, which optimizers.from_config keeps
        "weight_decay": opt.weight_decay,
        "clip_norm": opt.clip_norm or None,
        "log_every": config.log_every,
        "eval_every": config.eval_every,
        "checkpoint_every": config.checkpoint_every,
        "sample_prompt": config.sample.prompt,
        "sample_tokens": config.sample.num_tokens,
        "sample_temperature": config.sample.temperature,
        "sample_top_k": config.sample.top_k,
    }


def export_recipe(path: str, config) -> dict:
    """Builds the recipe exactly as jaxformer's loop does (task, StepRunner state from `config.seed`) and writes
    what the torch side needs to `path` (.npz); also checks the NumPy batch code against jaxformer's pipeline."""
    import jax
    import jax.numpy as jnp

    from jaxformer import sharding
    from jaxformer.training import StepRunner, build_run, merge

    run = build_run(config)
    config, task, model_cfg, schedule = run.config, run.task, run.model_config, run.schedule  # config completed
    check_supported(config, model_cfg)
    mesh = sharding.mesh_from_config(config.mesh)
    runner = StepRunner(config.parallel, run.make_model, run.optimizer, schedule, task.loss, mesh=mesh)
    state = runner.initial_state
    meta = recipe_meta(config, model_cfg, task.tokenizer)
    meta["decayed"] = decayed_names(state.params, model_cfg, config.optimizer.decay_embeddings)
    train_tokens = np.asarray(task.train_tokens.tokens)
    eval_tokens = np.asarray(task.eval_tokens.tokens)
    check_batches(task, config, train_tokens, eval_tokens)
    batch = task.train_data()[0]
    logits = merge(runner.graphs.eval, state)(jnp.asarray(batch["inputs"]))
    lrs = np.asarray(jax.vmap(schedule)(jnp.arange(config.num_steps)), np.float64)
    dtype = np.uint8 if model_cfg.vocab_size <= 256 else np.int32
    arrays = {f"param/{k}": v for k, v in reference_arrays(state.params, model_cfg).items()}
    np.savez(
        path,
        meta=np.asarray(json.dumps(meta)),
        train_tokens=train_tokens.astype(dtype),
        eval_tokens=eval_tokens.astype(dtype),
        check_inputs=np.asarray(batch["inputs"]),
        check_logits=np.asarray(logits, np.float32),
        learning_rates=lrs,
        **arrays,
    )
    return meta


def check_batches(task, config, train_tokens: np.ndarray, eval_tokens: np.ndarray) -> None:
    """The NumPy `random_windows` / `eval_windows` below give jaxformer's batches (its pipeline, indexed)."""
    from jaxformer import data

    B, T = config.batch_size, config.data.seq_len
    train = task.train_data()
    for step in (0, 1, 2, 99, 1234):
        ours = random_windows(train_tokens, B, T, config.seed, step)
        theirs = train[step]
        assert all(np.array_equal(ours[k], theirs[k]) for k in ("inputs", "targets")), f"train batch {step} differs"
    theirs = list(data.pipeline.eval_windows(task.eval_tokens, batch_size=B, seq_len=T))
    ours = list(eval_windows(eval_tokens, B, T))
    assert len(ours) == len(theirs), (len(ours), len(theirs))
    for a, b in zip(ours, theirs, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in ("inputs", "targets", "weights")), "eval batches differ"


# -- data (NumPy, as jaxformer.data.pipeline computes it) ---------------------------------------------------------


def random_windows(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, step: int) -> dict:
    """`data.pipeline.random_windows`' batch of `step`: B windows of T + 1 tokens at starts drawn uniformly from
    [0, N - T) by `np.random.default_rng((seed, step))`."""
    rng = np.random.default_rng((seed, step))
    starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
    windows = tokens[starts[:, None] + np.arange(seq_len + 1)].astype(np.int32)
    return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}


def eval_windows(tokens: np.ndarray, batch_size: int, seq_len: int):
    """`data.pipeline.eval_windows`: non-overlapping windows predicting every token after the first once, in
    batches of B; the tail is padded with token 0 and `weights` False."""
    n = len(tokens) - 1  # targets
    windows = -(-n // seq_len)
    padded = np.zeros(-(-windows // batch_size) * batch_size * seq_len + 1, np.int32)
    padded[: len(tokens)] = tokens
    pos = np.arange(len(padded) - 1)
    weights_all = pos < n
    per_batch = batch_size * seq_len
    for first in range(0, len(padded) - 1, per_batch):
        sl = slice(first, first + per_batch)
        weights = weights_all[sl].reshape(batch_size, seq_len)
        inputs = np.where(weights, padded[sl].reshape(batch_size, seq_len), 0)
        targets = np.where(weights, padded[first + 1 : first + 1 + per_batch].reshape(batch_size, seq_len), 0)
        yield {"inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32), "weights": weights}


def learning_rate(step: int, meta: dict) -> float:
    """jaxformer's warmup_cosine at optimizer step `step` (0-based): lr * s / w during the warmup, then
    lr_end + (lr - lr_end) * (1 + cos(pi * min(s - w, N - w) / (N - w))) / 2."""
    lr, end, w, n = meta["learning_rate"], meta["end_learning_rate"], meta["warmup_steps"], meta["num_steps"]
    if step < w:
        return lr * step / w
    decay = max(n - w, 1)
    progress = min(step - w, decay) / decay
    return end + (lr - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


# -- the torch model -----------------------------------------------------------------------------------------------


def torch_modules():
    """The torch classes, defined on first use so that importing this file does not import torch."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class CausalSelfAttention(nn.Module):
        def __init__(self, d_model: int, num_heads: int):
            super().__init__()
            self.num_heads = num_heads
            self.c_attn = nn.Linear(d_model, 3 * d_model)  # q | k | v, each head-major (n * H + h)
            self.c_proj = nn.Linear(d_model, d_model)

        def forward(self, x):
            B, T, D = x.shape
            q, k, v = self.c_attn(x).split(D, dim=2)
            q, k, v = (t.view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2) for t in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1 / sqrt(H)
            return self.c_proj(y.transpose(1, 2).reshape(B, T, D))

    class MLP(nn.Module):
        def __init__(self, d_model: int, d_ff: int, gelu_tanh: bool):
            super().__init__()
            self.c_fc = nn.Linear(d_model, d_ff)
            self.c_proj = nn.Linear(d_ff, d_model)
            self.approximate = "tanh" if gelu_tanh else "none"

        def forward(self, x):
            return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))

    class Block(nn.Module):
        def __init__(self, meta: dict):
            super().__init__()
            D, eps = meta["d_model"], meta["norm_epsilon"]
            self.ln_1 = nn.LayerNorm(D, eps=eps)
            self.attn = CausalSelfAttention(D, meta["num_heads"])
            self.ln_2 = nn.LayerNorm(D, eps=eps)
            self.mlp = MLP(D, meta["d_ff"], meta["gelu_tanh"])

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class TorchGPT(nn.Module):
        """jaxformer's GPT for the recipe (see the module docstring); `model(idx, targets) -> (logits, loss)`."""

        def __init__(self, meta: dict):
            super().__init__()
            self.max_len = meta["max_len"]
            self.wte = nn.Embedding(meta["vocab_size"], meta["d_model"])
            self.wpe = nn.Embedding(meta["max_len"], meta["d_model"])
            self.h = nn.ModuleList([Block(meta) for _ in range(meta["num_layers"])])
            self.ln_f = nn.LayerNorm(meta["d_model"], eps=meta["norm_epsilon"])

        def forward(self, idx, targets=None):
            T = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
            for block in self.h:
                x = block(x)
            logits = F.linear(self.ln_f(x), self.wte.weight)  # tied head
            if targets is None:
                return logits, None
            return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))

    return TorchGPT


def build_model(meta: dict, arrays: dict[str, np.ndarray]):
    """The torch GPT with jaxformer's parameters `arrays` (named as its state_dict) copied in."""
    import torch

    model = torch_modules()(meta)
    state = model.state_dict()
    missing, extra = set(state) - set(arrays), set(arrays) - set(state)
    if missing or extra:
        raise ValueError(f"Parameter names differ: torch has {sorted(missing)} unmatched, jaxformer {sorted(extra)}.")
    for name, value in arrays.items():
        if tuple(state[name].shape) != value.shape:
            raise ValueError(f"{name}: torch shape {tuple(state[name].shape)}, jaxformer {value.shape}.")
    model.load_state_dict({k: torch.from_numpy(np.array(v, np.float32)) for k, v in arrays.items()})
    return model


def build_optimizer(model, meta: dict):
    """(AdamW with jaxformer's decay set, LambdaLR of the warmup-cosine schedule)."""
    import torch

    decayed = set(meta["decayed"])
    named = dict(model.named_parameters())
    groups = [
        {"params": [p for n, p in named.items() if n in decayed], "weight_decay": meta["weight_decay"]},
        {"params": [p for n, p in named.items() if n not in decayed], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=meta["learning_rate"], betas=(meta["b1"], meta["b2"]), eps=meta["eps"])
    peak = meta["learning_rate"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate(s, meta) / peak)
    return optimizer, scheduler


def to_torch(batch: dict):
    import torch

    return torch.from_numpy(batch["inputs"]).long(), torch.from_numpy(batch["targets"]).long()


def train_step(model, optimizer, scheduler, batch: dict, clip_norm: float | None) -> float:
    """One nanoGPT-style step on a host batch; returns loss.item()."""
    import torch

    x, y = to_torch(batch)
    optimizer.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    if clip_norm:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    scheduler.step()
    return loss.item()


def evaluate(model, tokens: np.ndarray, meta: dict) -> float:
    """Mean next-token loss over every target of `tokens` (jaxformer's val_loss)."""
    import torch
    from torch.nn import functional as F

    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in eval_windows(tokens, meta["batch_size"], meta["seq_len"]):
            x, y = to_torch(batch)
            logits, _ = model(x)
            nll = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="none")
            w = torch.from_numpy(batch["weights"].reshape(-1))
            total += float((nll * w).sum())
            count += int(w.sum())
    model.train(was_training)
    return total / max(count, 1)


def sample(model, meta: dict, *, seed: int) -> str:
    """`sample_tokens` characters after the prompt: temperature, top-k (clamped to V), context cropped to max_len."""
    import torch
    from torch.nn import functional as F

    chars = meta["vocab"]
    index = {c: i for i, c in enumerate(chars)}
    context = [index[c] for c in meta["sample_prompt"] if c in index] or [0]
    idx = torch.tensor([context], dtype=torch.long)
    top_k = min(meta["sample_top_k"], meta["vocab_size"]) if meta["sample_top_k"] else None
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    with torch.no_grad():
        for _ in range(meta["sample_tokens"]):
            logits, _ = model(idx[:, -meta["max_len"] :])
            logits = logits[:, -1, :] / meta["sample_temperature"]
            if top_k:
                kth = torch.topk(logits, top_k).values[:, -1:]
                logits = logits.masked_fill(logits < kth, -float("inf"))
            nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
    model.train()
    return meta["sample_prompt"] + "".join(chars[i] for i in idx[0, len(context) :].tolist())


def load_recipe(path: str) -> tuple[dict, dict]:
    """(meta, arrays) of an exported recipe; the parameter arrays are under arrays["params"]."""
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    meta = json.loads(str(arrays.pop("meta")))
    arrays["params"] = {k.removeprefix("param/"): arrays.pop(k) for k in list(arrays) if k.startswith("param/")}
    return meta, arrays


def check_recipe(model, meta: dict, arrays: dict) -> dict:
    """Asserts that the torch model's logits match jaxformer's on the check batch and that the schedule matches at
    every step; returns the differences."""
    import torch

    model.eval()
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(arrays["check_inputs"]).long())
    model.train()
    forward = float(np.max(np.abs(logits.numpy() - arrays["check_logits"])))
    ours = np.asarray([learning_rate(s, meta) for s in range(meta["num_steps"])])
    schedule = float(np.max(np.abs(ours - arrays["learning_rates"]) / meta["learning_rate"]))
    assert forward < 1e-4, f"torch and jaxformer logits differ by {forward:.2e} on the check batch"
    assert schedule < 1e-6, f"the learning-rate schedules differ by {schedule:.2e} (relative to the peak)"
    return {"forward_max_abs_diff": forward, "schedule_max_rel_diff": schedule}


def export_in_child(args, directory: str) -> tuple[str, float]:
    """Runs this script with --export in a child process (the one that imports jax), writing `args.init` or
    `directory`/recipe.npz; returns (path, seconds)."""
    path = args.init or os.path.join(directory, "recipe.npz")
    cmd = [sys.executable, os.path.abspath(__file__), "--export", path, "--config", args.config]
    cmd += ["--smoke"] if args.smoke else []
    cmd += [f"--steps={args.steps}"] if args.steps is not None else []
    cmd += [f"--text={args.text}"] if args.text else []
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return path, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="shakespeare_char_cpu", help="a jaxformer recipe's name or .py file")
    parser.add_argument("--steps", type=int, help="num_steps (and the schedule's length); default the recipe's")
    parser.add_argument("--smoke", action="store_true", help="1 tiny layer, context 16, batch 2, 20 steps")
    parser.add_argument("--text", help="train on this text file (its last 10%% validates) instead of tfds")
    parser.add_argument("--compile", action="store_true", help="torch.compile(model) (eval too; sampling eager)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    parser.add_argument("--init", help="an exported recipe (.npz) to use; with --export: where to write it")
    parser.add_argument("--export", metavar="NPZ", help="only export the recipe from jaxformer to this file")
    parser.add_argument("--out_dir", help="save checkpoints (every checkpoint_every steps) and samples.txt here")
    parser.add_argument("--summary_json", help="also write the final JSON summary to this file")
    args = parser.parse_args()
    default_tfds_dir()

    if args.export:
        t0 = time.perf_counter()
        config = recipe_config(args.config, smoke=args.smoke, steps=args.steps, text=args.text)
        meta = export_recipe(args.export, config)
        print(f"exported {meta['name']} from jaxformer to {args.export} in {time.perf_counter() - t0:.1f} s")
        return

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="torch_reference_") as directory:
        if args.init and os.path.exists(args.init):
            path, export_s = args.init, 0.0
        else:
            path, export_s = export_in_child(args, directory)
        meta, arrays = load_recipe(path)
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.steps is not None and args.steps != meta["num_steps"]:
        raise ValueError(f"{path} was exported for {meta['num_steps']} steps; export it again for {args.steps}.")
    model = build_model(meta, arrays["params"])
    checks = check_recipe(model, meta, arrays)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {meta['name']}: "
        f"{sum(p.numel() for p in model.parameters()):,} parameters copied from jaxformer's initialisation; logits "
        f"agree to {checks['forward_max_abs_diff']:.1e}, the schedule to {checks['schedule_max_rel_diff']:.1e}"
    )
    optimizer, scheduler = build_optimizer(model, meta)
    step_model = torch.compile(model) if args.compile else model
    train_tokens, eval_tokens = arrays["train_tokens"], arrays["eval_tokens"]
    B, T, seed, clip = meta["batch_size"], meta["seq_len"], meta["seed"], meta["clip_norm"]
    if args.out_dir:
        os.makedirs(args.out_dir, exist_ok=True)

    step_times, losses, rows, all_step_ms = [], [], [], []
    train_start = time.perf_counter()
    setup_s = train_start - start
    eval_s = checkpoint_s = 0.0
    for step in range(1, meta["num_steps"] + 1):
        t0 = time.perf_counter()
        batch = random_windows(train_tokens, B, T, seed, step - 1)
        loss = train_step(step_model, optimizer, scheduler, batch, clip)
        dt = time.perf_counter() - t0
        if step > 1:  # the first step of a compiled model compiles
            step_times.append(dt)
            all_step_ms.append(1e3 * dt)
        if not math.isfinite(loss):
            raise RuntimeError(f"Training loss is {loss} at step {step}.")
        losses.append(loss)
        last = step == meta["num_steps"]
        if step % meta["log_every"] == 0 or step % meta["eval_every"] == 0 or last:
            row = {
                "step": step,
                "train_loss": float(np.mean(losses)),
                "learning_rate": learning_rate(step - 1, meta),
                "step_ms": 1e3 * statistics.median(step_times) if step_times else None,
            }
            if step % meta["eval_every"] == 0 or last:
                e0 = time.perf_counter()
                row["val_loss"] = evaluate(step_model, eval_tokens, meta)
                eval_s += time.perf_counter() - e0
            rows.append(row)
            print(json.dumps(row), flush=True)
            step_times, losses = [], []
        if args.out_dir and (step % meta["checkpoint_every"] == 0 or last):
            c0 = time.perf_counter()
            state = {"step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
            torch.save(state, os.path.join(args.out_dir, "checkpoint.pt"))
            checkpoint_s += time.perf_counter() - c0
    train_s = time.perf_counter() - train_start
    s0 = time.perf_counter()
    text = sample(model, meta, seed=seed)
    sample_s = time.perf_counter() - s0
    print(f"\n--- {meta['sample_tokens']} sampled characters ---\n{text}\n---")
    if args.out_dir:
        with open(os.path.join(args.out_dir, "samples.txt"), "w") as f:
            f.write(text)
    summary = {
        "implementation": "torch.compile" if args.compile else "torch eager",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "steps": meta["num_steps"],
        "val_loss": rows[-1].get("val_loss"),
        "val_losses": {r["step"]: r["val_loss"] for r in rows if "val_loss" in r},
        "train_losses": {r["step"]: r["train_loss"] for r in rows},
        "step_ms_median": statistics.median(all_step_ms) if all_step_ms else None,
        "export_s": export_s,
        "setup_s": setup_s,
        "train_loop_s": train_s,
        "eval_s": eval_s,
        "checkpoint_s": checkpoint_s,
        "sample_s": sample_s,
        "total_s": time.perf_counter() - start,
        **checks,
    }
    print(json.dumps(summary))
    if args.summary_json:
        with open(args.summary_json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()
