"""Decoding speed against the peers: `jaxformer.decoding.generate` vs `transformers`' `generate`, in one run.

    python experiments/bench_decode_hf.py --json experiments/results/decode_hf_cpu.json   # ~15 min on a 2-core CPU
    python experiments/bench_decode_hf.py --models gemma2-2b --dtype float32,bfloat16 \
        --json experiments/results/decode_hf_gemma2_cpu.json                             # ~40 min (see Duration)
    python experiments/bench_decode_hf.py --smoke                                        # tiny shapes, ~1 min
    python experiments/bench_decode_hf.py --smoke --models gemma2-2b --dtype float32,bfloat16   # ~2 min

Needs the optional extra `pip install -e '.[hf]'` (transformers, torch). `--dtype`: float32 (default) and/or
bfloat16, run by both libraries: transformers holds and computes the model in that dtype (`.to(torch.bfloat16)`,
or `from_pretrained(dtype=torch.bfloat16)`), jaxformer loads it with `from_pretrained(..., dtype=jnp.bfloat16)`
(parameters and computation). Both round the same float32 checkpoint (checked: the sha256 of each library's
embedding table, `same_weights` in the JSON). In bfloat16, greedy tokens may legitimately part after some steps:
the table gives the first differing position and both libraries' logit gaps there.

Models (random weights, seeded): each is built in `transformers`, written with `save_pretrained` to a temporary
directory and loaded by jaxformer with `jaxformer.pretrained.from_pretrained`, so both libraries run the same
weights and greedy decoding must give the same tokens (checked; a difference is reported with its first position
and the logit gap there, not hidden).

- gpt2:  `GPT2LMHeadModel(GPT2Config())`: GPT-2 small, 12 layers, d 768, 12 heads, vocab 50257, learned positions.
- llama: `LlamaForCausalLM(LlamaConfig(...))`: 12 layers, d 768, 12 heads with 4 KV heads (GQA), SwiGLU d_ff 2048,
  RMSNorm, RoPE, vocab 32000, untied head: about GPT-2 small's parameter count (~124M).
- gemma2-2b: `Gemma2ForCausalLM(Gemma2Config(...))` in Gemma 2 2B's shape: vocab 256000, d 2304, 26 layers
  alternating sliding-window (4096) and global attention (sliding first), 8 heads with 4 KV heads of head_dim 256,
  GeGLU d_ff 9216, attention / final logit soft-caps 50 / 30, query_pre_attn_scalar 256, 8192 positions, tied
  embeddings: 2614M parameters, 10.5 GB in float32. jaxformer's loaded config must equal
  `ModelConfig.variant("gemma2-2b")` up to dtype (checked; an error otherwise). transformers runs Gemma 2's default
  attention, eager (its sdpa path refuses soft-caps). `--num_layers N` makes a full-width stand-in of N layers.
  With random weights the tied embedding (scaled by sqrt(d)) dominates the logits, so few distinct ids come out
  (one per row with 2 or 4 layers): the greedy check compares fewer distinct decisions than with trained weights.

Decoding: greedy (jaxformer temperature=0; transformers do_sample=False) and sampling (temperature 0.8, top-k 50 in
both; transformers do_sample=True, top_p=1.0); prompt of 32 random tokens, 128 new tokens (gemma2-2b: 32;
`--new_tokens`), no end-of-sequence token (both always generate all of them), batch 1 and 8. transformers runs
under `torch.inference_mode()` with `use_cache=True` (its default dynamic KV cache) and
`torch.set_num_threads(os.cpu_count())`.

Timing, in one process (gpt2, llama): for each setting, one warm-up call per library and length (excluded;
jaxformer's first call of a shape compiles, reported as "first call"), then `--rounds` rounds (default 5) that
alternate the libraries (jaxformer first in even rounds, transformers first in odd ones, so drift of the machine's
speed hits both), each timing `generate(max_new_tokens=1)` (the first-token latency: the prompt's forward plus
choosing one token) and `generate(max_new_tokens=new)`. Medians over rounds. Per-token decode time = (full - first)
/ (new - 1); "prefill tok/s" is B * prompt / first-token latency, "decode tok/s" is B / per-token time, "total
tok/s" is B * new / full call. Ratios are jaxformer / transformers in tokens/s (> 1: jaxformer is faster).

Timing, one process per library and round (gemma2-2b; `--isolate yes|no` forces either way for any model): two
float32 copies of Gemma 2 2B (21 GB) would not fit a 24 GiB machine beside the runtime, so only one model is ever in
memory. A build process makes the float32 model and saves it; then for each dtype `--rounds` rounds (default 2) of
one process per library, ordered J T T J (jaxformer first in even rounds), each loading the checkpoint in that
dtype and, for every setting in turn, making the same warm-up calls (compiling) and then one timed call of 1 and
of all new tokens (seed r + 1 in round r). Medians over rounds, that is over processes; first calls: medians over
processes (each compiles). When greedy tokens differ, one more process per library computes the logits at the
first difference. Every process's peak RSS (getrusage of the child) is printed and kept in the JSON. A worker
ends itself when the machine's MemAvailable falls below `--min_available_gib` (default 1; it also sets its
oom_score_adj to 1000, so the kernel would pick it first): that library's setting is then reported as failed
(no ratio), not retried in later rounds, and a new process goes on with the next settings.

Memory of gemma2-2b, per process (one at a time; from 2- and 4-layer full-width stand-ins, `--num_layers 2|4
--rounds 1`, extrapolated per layer, and from `memory_analysis()` of jaxformer's generate compiled at full size on
abstract shapes): build ~12.8 GiB (the float32 model, plus the 2.2 GiB untied head transformers allocates before
tying, plus ~0.9 GiB of runtime); jaxformer float32 ~13 GiB (9.7 GiB parameters, up to 2.4 GiB of XLA temporaries;
loading peaks at ~9.5 GiB while the embedding table is read, whatever the layer count); transformers float32
~11 GiB, bfloat16 ~15.6 GiB while loading (the float32 checkpoint's mapped pages beside the bfloat16 copy);
jaxformer bfloat16 ~10 GiB at batch 8, but ~21 GiB at batch 1: XLA:CPU's batch-1 programs hold float32 copies of
the weights (14.8 GiB of temporaries for 32 new tokens, against 1.2 GiB at batch 8), so on a 24 GiB machine those
two settings end as "out of memory" unless about 22 GiB is available when they run.

Duration of the gemma2-2b command above, estimated on the 2-core Xeon (AVX-512 + BF16 + AMX) dev machine: per-call
times of the 2- and 4-layer stand-ins (min of 3 calls per library, dtype and setting; float32 decode steps 0.14 s
jaxformer and 0.13 s transformers at batch 1, 4 layers) extrapolated to 26 layers (decode steps by parameter count,
prefill by layer count, compilation constant: the layers are scanned) and summed over the protocol: float32
~17-20 min, bfloat16 ~9-15 min, plus building (~1.5 min), loading and the logits processes: about 40 minutes.

Measure on a quiet machine: the 1-minute load average is printed before and after. With other processes on the
cores, torch with every core as a thread slows down far more than jaxformer (measured on a shared 2-core VM:
transformers 5x slower per token with 2 threads than with 1), which would inflate the ratios.

Note: both libraries' `generate(max_new_tokens=n)` run the prompt and then n - 1 cached steps (the last token's
logits are never needed); the per-token time is their difference over n - 1 steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import host
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from jaxformer import pretrained
from jaxformer.decoding import generate
from jaxformer.models import ModelConfig

GEMMA2_2B = dict(
    vocab_size=256000,
    hidden_size=2304,
    num_hidden_layers=26,
    num_attention_heads=8,
    num_key_value_heads=4,
    head_dim=256,
    intermediate_size=9216,
    sliding_window=4096,
    attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
    query_pre_attn_scalar=256,
    max_position_embeddings=8192,
)
FULL = {
    "gpt2": dict(n_layer=12, n_embd=768, n_head=12, n_inner=None, vocab_size=50257, n_positions=1024),
    "llama": dict(
        num_hidden_layers=12,
        hidden_size=768,
        num_attention_heads=12,
        num_key_value_heads=4,
        intermediate_size=2048,
        vocab_size=32000,
        max_position_embeddings=2048,
    ),
    "gemma2-2b": GEMMA2_2B,
}
SMOKE = {
    "gpt2": dict(n_layer=2, n_embd=64, n_head=4, n_inner=None, vocab_size=256, n_positions=64),
    "llama": dict(
        num_hidden_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        vocab_size=256,
        max_position_embeddings=64,
    ),
    # A window of 8 < prompt + new tokens (16): the local layers' ring buffers wrap.
    "gemma2-2b": dict(
        GEMMA2_2B,
        vocab_size=256,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=128,
        sliding_window=8,
        query_pre_attn_scalar=32,
        max_position_embeddings=64,
    ),
}
LAYERS_KEY = {"gpt2": "n_layer", "llama": "num_hidden_layers", "gemma2-2b": "num_hidden_layers"}
SEEDS = {"gpt2": 0, "llama": 1, "gemma2-2b": 2}
NEW_TOKENS = {"gpt2": 128, "llama": 128, "gemma2-2b": 32}  # defaults (smoke: 8)
ROUNDS = {"gpt2": 5, "llama": 5, "gemma2-2b": 2}  # defaults (smoke: 1)
ISOLATED = {"gemma2-2b"}  # --isolate auto: one process per library and round
DTYPES = {"float32": (torch.float32, jnp.float32), "bfloat16": (torch.bfloat16, jnp.bfloat16)}
LIBS = ("jaxformer", "transformers")
IN_PROCESS = "in-process: both models in one process, libraries alternating within each round"
SESSIONS = "isolated: one process per library and round, sessions ordered {order}"


def gemma2_layer_types(n: int) -> list[str]:
    """Gemma 2's pattern: sliding-window (local) and full (global) attention alternate, starting local."""
    return [("sliding_attention", "full_attention")[i % 2] for i in range(n)]


def build_hf(name: str, shape: dict, seed: int) -> torch.nn.Module:
    """A random-init transformers model (seeded), float32, eval, with no end-of-sequence token."""
    torch.manual_seed(seed)
    if name == "gpt2":
        cfg = GPT2Config(**shape, activation_function="gelu_new", bos_token_id=None, eos_token_id=None)
        model = GPT2LMHeadModel(cfg)
    elif name == "llama":
        cfg = LlamaConfig(
            **shape,
            rms_norm_eps=1e-5,
            hidden_act="silu",
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
        model = LlamaForCausalLM(cfg)
    elif name == "gemma2-2b":
        cfg = Gemma2Config(
            **shape,
            layer_types=gemma2_layer_types(shape["num_hidden_layers"]),
            hidden_activation="gelu_pytorch_tanh",
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            attention_bias=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            bos_token_id=None,
            eos_token_id=None,
            pad_token_id=None,
        )
        model = Gemma2ForCausalLM(cfg)
    else:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(FULL)}")
    return prepare_hf(model.to(torch.float32))


def prepare_hf(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and a generation config with no end-of-sequence token (every call generates all its tokens)."""
    model = model.eval()
    model.generation_config.eos_token_id = None
    model.generation_config.bos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights once


def config_differences(name: str, shape: dict, cfg: ModelConfig) -> list[str] | None:
    """gemma2-2b: the fields where jaxformer's loaded config differs from `ModelConfig.variant("gemma2-2b")` (with
    the smoke / --num_layers shape's fields where they differ from the full one), dtypes aside. None otherwise."""
    if name != "gemma2-2b":
        return None
    fields = dict(
        vocab_size="vocab_size",
        hidden_size="d_model",
        num_hidden_layers="num_layers",
        num_attention_heads="num_heads",
        num_key_value_heads="num_kv_heads",
        head_dim="head_dim",
        intermediate_size="d_ff",
        sliding_window="sliding_window",
        attn_logit_softcapping="attention_logit_softcap",
        final_logit_softcapping="final_logit_softcap",
        max_position_embeddings="max_len",
    )
    full = FULL[name]
    overrides = {ours: shape[theirs] for theirs, ours in fields.items() if shape[theirs] != full[theirs]}
    if shape["query_pre_attn_scalar"] != full["query_pre_attn_scalar"]:
        overrides["attention_scale"] = float(shape["query_pre_attn_scalar"]) ** -0.5
    if "num_layers" in overrides:
        kinds = gemma2_layer_types(shape["num_hidden_layers"])
        overrides["layer_types"] = tuple({"sliding_attention": "local", "full_attention": "global"}[k] for k in kinds)
    expected = ModelConfig.variant(name, **overrides, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
    return [
        f"{f.name}: loaded {getattr(cfg, f.name)!r}, variant {getattr(expected, f.name)!r}"
        for f in dataclasses.fields(cfg)
        if getattr(cfg, f.name) != getattr(expected, f.name)
    ]


def load(lib: str, directory: str, dtype: str, name: str, shape: dict):
    """The saved checkpoint in `lib`, its parameters and computation in `dtype`; (model, seconds to load)."""
    start = time.perf_counter()
    if lib == "jaxformer":
        model = pretrained.from_pretrained(directory, dtype=DTYPES[dtype][1])
        load_s = time.perf_counter() - start
        differences = config_differences(name, shape, model.config)
        if differences:
            raise RuntimeError(f"jaxformer loaded {name} with a config unlike its variant: {differences}")
        return model, load_s
    model = prepare_hf(AutoModelForCausalLM.from_pretrained(directory, dtype=DTYPES[dtype][0]))
    load_s = time.perf_counter() - start
    dtypes = {p.dtype for p in model.parameters()}
    if dtypes != {DTYPES[dtype][0]}:
        raise RuntimeError(f"transformers loaded {name} with parameters in {dtypes}, not {dtype}")
    return model, load_s


def embedding_digest(lib: str, model) -> str:
    """sha256 (12 hex digits) of the token embedding table's bytes (row-major [V, D], as each library holds it): the
    same in both libraries when they run the same weights in the same dtype (bfloat16: both rounded from float32)."""
    digest = hashlib.sha256()
    if lib == "jaxformer":
        vocab = model.config.vocab_size
        table = model.embed.tokens.embedding[...]
        for i in range(0, vocab, 16384):
            digest.update(np.ascontiguousarray(np.asarray(table[i : min(i + 16384, vocab)])).view(np.uint8))
    else:
        table = model.get_input_embeddings().weight.detach()
        for i in range(0, table.shape[0], 16384):
            digest.update(table[i : i + 16384].contiguous().view(torch.uint8).numpy())
    return digest.hexdigest()[:12]


def hf_generate(model, prompt: torch.Tensor, n: int, sampling: dict | None, seed: int) -> torch.Tensor:
    kwargs = dict(do_sample=False) if sampling is None else dict(do_sample=True, top_p=1.0, **sampling)
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=n,
            min_new_tokens=n,
            use_cache=True,
            pad_token_id=0,
            **kwargs,
        )
    return out[:, prompt.shape[1] :]


def jf_generate(model, prompt: jax.Array, n: int, sampling: dict | None, seed: int) -> jax.Array:
    settings = dict(temperature=0.0) if sampling is None else sampling
    return jax.block_until_ready(generate(model, prompt, n, rng=jax.random.key(seed), **settings))


def make_prompt(vocab: int, B: int, prompt_len: int) -> np.ndarray:
    return np.random.default_rng(1000 + B).integers(0, vocab, (B, prompt_len)).astype(np.int32)


def runner(lib: str, model, prompt_np: np.ndarray, sampling: dict | None):
    """fn(n, seed) -> the [B, n] new tokens of `lib`'s generate, as numpy."""
    if lib == "jaxformer":
        prompt_j = jnp.asarray(prompt_np)
        return lambda n, seed: np.asarray(jf_generate(model, prompt_j, n, sampling, seed))
    prompt_t = torch.from_numpy(prompt_np).long()
    return lambda n, seed: hf_generate(model, prompt_t, n, sampling, seed).numpy()


def clock(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def measure(fns: dict, new: int, rounds: list[int]) -> tuple[dict, dict, dict]:
    """One warm-up per library (`generate` of 1 and of `new` tokens, seed 0; jaxformer compiles a program per
    length here), then for each round r a timed call of 1 and of `new` tokens with seed r + 1, libraries in the
    order of `fns` in even rounds and reversed in odd ones. Returns (first calls, times, the warm-up's tokens):
    lists of seconds under "<lib>_1" / "<lib>_full", numpy tokens under "<lib>"."""
    first_calls, tokens = {}, {}
    for lib, fn in fns.items():
        first_calls[lib + "_1"] = [clock(fn, 1, 0)[0]]
        seconds, tokens[lib] = clock(fn, new, 0)
        first_calls[lib + "_full"] = [seconds]
    times = {f"{lib}_{n}": [] for lib in fns for n in ("1", "full")}
    for r in rounds:
        for lib in list(fns) if r % 2 == 0 else list(fns)[::-1]:
            times[lib + "_1"].append(clock(fns[lib], 1, r + 1)[0])
            times[lib + "_full"].append(clock(fns[lib], new, r + 1)[0])
    return first_calls, times, tokens


def make_row(
    name: str,
    dtype: str,
    mode: str,
    B: int,
    prompt_len: int,
    new: int,
    first_calls,
    times,
    tokens,
    protocol: str,
    failures: dict | None = None,
) -> dict:
    """A table row from the timings of both libraries (medians over rounds; first calls: medians over processes).
    A library with no timed round (`failures[lib]`: why) gets {"failed": [reasons]} and the row no ratios."""
    failures = failures or {}
    rounds = max(len(times[lib + "_1"]) for lib in LIBS)
    row = dict(
        model=name, dtype=dtype, mode=mode, batch=B, prompt=prompt_len, new_tokens=new, rounds=rounds, protocol=protocol
    )
    for lib in LIBS:
        if not times[lib + "_1"]:
            row[lib] = dict(failed=failures.get(lib) or ["no timed round"])
            continue
        first, full = statistics.median(times[lib + "_1"]), statistics.median(times[lib + "_full"])
        step = (full - first) / (new - 1)
        row[lib] = dict(
            first_token_s=first,
            full_s=full,
            decode_step_s=step,
            prefill_tokens_per_s=B * prompt_len / first,
            decode_tokens_per_s=B / step,
            total_tokens_per_s=B * new / full,
            first_call_1_s=statistics.median(first_calls[lib + "_1"]),
            first_call_full_s=statistics.median(first_calls[lib + "_full"]),
            first_calls_1_s=first_calls[lib + "_1"],
            first_calls_full_s=first_calls[lib + "_full"],
            times_1_s=times[lib + "_1"],
            times_full_s=times[lib + "_full"],
        )
        if failures.get(lib):  # some rounds failed, others did not
            row[lib]["failed_rounds"] = failures[lib]
    jf, hf = row["jaxformer"], row["transformers"]
    both = "failed" not in jf and "failed" not in hf
    keys = ("prefill_tokens_per_s", "decode_tokens_per_s", "total_tokens_per_s")
    row["ratio"] = {k: jf[k] / hf[k] for k in keys} if both else None
    # of B * new: a collapsed output checks less
    row["distinct_tokens"] = len(np.unique(tokens["jaxformer"])) if "jaxformer" in tokens else None
    if mode == "greedy" and both:
        row["same_tokens"] = bool(np.array_equal(tokens["jaxformer"], tokens["transformers"]))
    else:
        row["same_tokens"] = None  # sampled tokens come from different random generators: speed only
    return row


def first_difference(prompt: np.ndarray, hf_tokens: np.ndarray, jf_tokens: np.ndarray) -> dict:
    """Where greedy tokens first differ: row, position among the new tokens, the prefix both libraries saw there
    (prompt and the identical tokens before it) and each library's token."""
    differ = hf_tokens != jf_tokens
    rows, positions = np.nonzero(differ)
    order = np.lexsort((rows, positions))
    row, pos = int(rows[order[0]]), int(positions[order[0]])
    return dict(
        rows_differing=int(differ.any(axis=1).sum()),
        first_row=row,
        first_position=pos,
        transformers_token=int(hf_tokens[row, pos]),
        jaxformer_token=int(jf_tokens[row, pos]),
        prefix=np.concatenate([prompt[row], hf_tokens[row, :pos]]).astype(np.int32),
    )


def logits_at(lib: str, model, prefix: np.ndarray) -> np.ndarray:
    """`lib`'s next-token logits after `prefix` (one forward over it, no cache), float64."""
    if lib == "jaxformer":
        return np.asarray(model(jnp.asarray(prefix[None], jnp.int32))[0, -1].astype(jnp.float32), np.float64)
    with torch.inference_mode():
        return model(torch.from_numpy(prefix[None]).long()).logits[0, -1].double().numpy()


def difference_report(first: dict, hf_logits: np.ndarray, jf_logits: np.ndarray) -> dict:
    """`first` (without its prefix) and each library's logit gap there between its own choice and the other's (both
    > 0 and tiny: a near-tie rounded differently; large: a real disagreement)."""
    hf_tok, jf_tok = first["transformers_token"], first["jaxformer_token"]
    return dict(
        {k: v for k, v in first.items() if k != "prefix"},
        transformers_logit_gap=float(hf_logits[hf_tok] - hf_logits[jf_tok]),
        jaxformer_logit_gap=float(jf_logits[jf_tok] - jf_logits[hf_tok]),
        max_abs_logit_difference=float(np.abs(hf_logits - jf_logits).max()),
    )


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB"


def run_in_process(name: str, shape: dict, dtype: str, settings, prompt_len: int, new: int, rounds: int, sampling):
    """Both libraries' models in this process; each setting's rounds alternate the libraries call by call."""
    hf_model = build_hf(name, shape, SEEDS[name])
    params = n_params(hf_model)
    with tempfile.TemporaryDirectory() as tmp:
        hf_model.save_pretrained(tmp)
        hf_model = prepare_hf(hf_model.to(DTYPES[dtype][0]))  # before jaxformer loads: one float32 copy at most
        gc.collect()
        jf_model, load_s = load("jaxformer", tmp, dtype, name, shape)
    models = {"jaxformer": jf_model, "transformers": hf_model}
    digests = {lib: embedding_digest(lib, model) for lib, model in models.items()}
    print(
        f"# {name} {dtype}: {params / 1e6:.1f}M parameters, jaxformer load {load_s:.1f} s, embedding digests {digests}",
        flush=True,
    )
    rows = []
    for mode, B in settings:
        prompt_np = make_prompt(jf_model.config.vocab_size, B, prompt_len)
        sampling_or_none = None if mode == "greedy" else sampling
        fns = {lib: runner(lib, model, prompt_np, sampling_or_none) for lib, model in models.items()}
        first_calls, times, tokens = measure(fns, new, list(range(rounds)))
        row = make_row(name, dtype, mode, B, prompt_len, new, first_calls, times, tokens, IN_PROCESS)
        row.update(
            params_m=params / 1e6,
            same_weights=len(set(digests.values())) == 1,
            embedding_digests=digests,
            attn_implementation=hf_model.config._attn_implementation,
        )
        if row["same_tokens"] is False:
            first = first_difference(prompt_np, tokens["transformers"], tokens["jaxformer"])
            logits = {lib: logits_at(lib, model, first["prefix"]) for lib, model in models.items()}
            row["difference"] = difference_report(first, logits["transformers"], logits["jaxformer"])
        rows.append(row)
        print_brief(row)
    return rows


def print_brief(row: dict) -> None:
    print(json.dumps({k: v for k, v in row.items() if k not in ("jaxformer", "transformers")}), flush=True)


def call_worker(tmp: str, processes: list[dict], **spec) -> tuple[list[dict], str | None]:
    """Runs one job of this script (`--worker`) in a fresh Python process. Returns the records it wrote (JSON lines,
    one per finished step, so a process that dies keeps what it finished) and why it failed (None: it did not), and
    appends the process's record (wall time, peak RSS from the kernel's accounting of the child) to `processes`."""
    index = len(processes)
    spec_path, out_path = os.path.join(tmp, f"spec_{index}.json"), os.path.join(tmp, f"result_{index}.jsonl")
    with open(spec_path, "w") as f:
        json.dump(dict(spec, out=out_path), f)
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", spec_path])
    _, status, usage = os.wait4(child.pid, 0)  # its own rusage, also when the kernel killed it
    child.returncode = code = os.waitstatus_to_exitcode(status)
    records = []
    if os.path.exists(out_path):
        with open(out_path) as f:
            records = [json.loads(line) for line in f if line.strip()]
    failure = next((r["reason"] for r in records if r["kind"] == "failed"), None)
    if code != 0 and failure is None:
        failure = f"exit status {code}" + (f" (signal {-code}; 9: the kernel's OOM killer?)" if code < 0 else "")
    load_s = next((r["load_s"] for r in records if r["kind"] == "loaded"), None)
    record = {k: spec.get(k) for k in ("job", "name", "lib", "dtype", "round")}
    record.update(
        settings=len(spec.get("settings", [])),
        process_s=time.perf_counter() - start,
        load_s=load_s,
        peak_rss_bytes=usage.ru_maxrss * 1024,
        failed=failure,
    )
    processes.append(record)
    return records, failure


def session_order(rounds: int) -> list[tuple[int, str]]:
    """(round, library) in running order: jaxformer first in even rounds, transformers first in odd ones."""
    return [(r, lib) for r in range(rounds) for lib in (LIBS if r % 2 == 0 else LIBS[::-1])]


def run_session(tmp, processes, settings: list, skip: set, lib: str, **spec) -> tuple[dict | None, dict]:
    """One library's round over `settings` (minus the indices in `skip`) in a fresh process. When that process dies
    (out of memory, say), the setting it was in is recorded as failed, added to `skip` (later rounds do not retry
    it: the same program needs the same memory) and a new process goes on with the settings after it. Returns (the
    "loaded" record of the first process, {setting index: its record, or {"failed": reason}})."""
    remaining = [k for k in range(len(settings)) if k not in skip]
    loaded, results = None, {}
    while remaining:
        records, failure = call_worker(
            tmp, processes, job="session", lib=lib, settings=[settings[k] for k in remaining], **spec
        )
        loaded = loaded or next((r for r in records if r["kind"] == "loaded"), None)
        done = [r for r in records if r["kind"] == "setting"]
        results.update(zip(remaining, done, strict=False))
        remaining = remaining[len(done) :]
        if failure is None:
            break
        print(f"# {lib} {spec['dtype']} round {spec['round']} failed: {failure}", flush=True)
        if not any(r["kind"] == "loaded" for r in records):  # failed before its first setting: so would a retry
            results.update((k, dict(failed=failure)) for k in remaining)
            skip.update(remaining)
            break
        results[remaining[0]] = dict(failed=failure)
        skip.add(remaining.pop(0))
    return loaded, results


def run_isolated(name, shape, dtypes, settings, prompt_len, new, rounds, sampling, torch_threads, min_available):
    """A build process writes the float32 checkpoint; then per dtype one process per library and round (each loads
    the checkpoint in that dtype, warms up and times every setting once), in `session_order`; one more process per
    library when greedy tokens differ, for the logits at the first difference. At most one model is in memory.
    Returns (rows, the processes' records)."""
    order = " ".join(lib[0].upper() for _, lib in session_order(rounds))
    protocol = SESSIONS.format(order=order)
    processes = []
    with tempfile.TemporaryDirectory(prefix="bench_decode_hf_") as tmp:
        directory = os.path.join(tmp, "model")
        common = dict(
            name=name, shape=shape, directory=directory, torch_threads=torch_threads, min_available=min_available
        )
        records, failure = call_worker(tmp, processes, job="build", seed=SEEDS[name], **common)
        if failure is not None:
            raise RuntimeError(f"building {name} failed: {failure}")
        params = records[-1]["params"]
        print(
            f"# {name}: {params / 1e6:.1f}M parameters, built and saved (float32) in "
            f"{processes[-1]['process_s']:.0f} s, peak RSS {gib(processes[-1]['peak_rss_bytes'])}",
            flush=True,
        )
        rows = []
        for dtype in dtypes:
            runs = {lib: [] for lib in LIBS}  # per library, one (loaded, results) per round
            skip = {lib: set() for lib in LIBS}
            for r, lib in session_order(rounds):
                spec = dict(common, dtype=dtype, round=r, prompt_len=prompt_len, new=new, sampling=sampling)
                start = len(processes)
                loaded, results = run_session(tmp, processes, settings, skip[lib], lib, **spec)
                runs[lib].append((loaded, results))
                mine = processes[start:]
                if not mine:
                    print(f"# {name} {dtype} round {r} {lib}: skipped (its settings failed in an earlier round)")
                    continue
                load_s = f"{loaded['load_s']:.1f} s" if loaded else "failed"
                print(
                    f"# {name} {dtype} round {r} {lib}: {len(mine)} process(es), "
                    f"{sum(p['process_s'] for p in mine):.0f} s, load {load_s}, "
                    f"peak RSS {gib(max(p['peak_rss_bytes'] for p in mine))}",
                    flush=True,
                )
            loads = {lib: [loaded for loaded, _ in runs[lib] if loaded] for lib in LIBS}
            digests = {lib: loads[lib][0]["digest"] if loads[lib] else None for lib in LIBS}
            # None: a library never loaded the model
            same_weights = (
                len({x["digest"] for lib in LIBS for x in loads[lib]}) == 1 if all(digests.values()) else None
            )
            attn = loads["transformers"][0]["attn_implementation"] if loads["transformers"] else None
            wanted, dtype_rows = [], []
            for k, (mode, B) in enumerate(settings):
                per = {lib: [res[k] for _, res in runs[lib] if k in res and "failed" not in res[k]] for lib in LIBS}
                failures = {
                    lib: [res[k]["failed"] for _, res in runs[lib] if "failed" in res.get(k, {})] for lib in LIBS
                }
                first_calls = {
                    f"{lib}_{n}": [p[f"first_call_{n}_s"] for p in per[lib]] for lib in LIBS for n in ("1", "full")
                }
                times = {f"{lib}_{n}": [p[f"time_{n}_s"] for p in per[lib]] for lib in LIBS for n in ("1", "full")}
                tokens = {lib: np.asarray(per[lib][0]["tokens"]) for lib in LIBS if per[lib]}
                row = make_row(name, dtype, mode, B, prompt_len, new, first_calls, times, tokens, protocol, failures)
                row.update(
                    params_m=params / 1e6,
                    same_weights=same_weights,
                    embedding_digests=digests,
                    # every process of a library gave the same warm-up tokens (seed 0)
                    tokens_repeat={lib: all(p["tokens"] == per[lib][0]["tokens"] for p in per[lib]) for lib in LIBS},
                    attn_implementation=attn,
                )
                if row["same_tokens"] is False:
                    prompt_np = make_prompt(shape["vocab_size"], B, prompt_len)
                    wanted.append((row, first_difference(prompt_np, tokens["transformers"], tokens["jaxformer"])))
                dtype_rows.append(row)
            if wanted:  # the logits where greedy tokens first differ, one process per library
                prefixes = [first["prefix"].tolist() for _, first in wanted]
                logits, failed = {}, []
                for lib in LIBS:
                    spec = dict(common, dtype=dtype, prefixes=prefixes)
                    records, failure = call_worker(tmp, processes, job="logits", lib=lib, **spec)
                    if failure is None:
                        logits[lib] = np.load(records[-1]["path"])
                    else:
                        failed.append(f"{lib}: {failure}")
                for i, (row, first) in enumerate(wanted):
                    if failed:
                        row["difference"] = dict({k: v for k, v in first.items() if k != "prefix"}, failed=failed)
                    else:
                        row["difference"] = difference_report(first, logits["transformers"][i], logits["jaxformer"][i])
            for row in dtype_rows:
                print_brief(row)
            rows += dtype_rows
    return rows, processes


def mem_available_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62  # unknown: never trips the guard


def memory_guard(floor_gib: float, phase: list, emit) -> None:
    """Ends this worker (exit status 75, after a "failed" record) when the machine's MemAvailable falls below
    `floor_gib` (checked every 50 ms): a program that needs more memory than the machine has then fails alone,
    before the kernel's OOM killer picks a process. `phase[0]` names what was running."""

    def watch():
        while True:
            available = mem_available_bytes()
            if available < floor_gib * 2**30:
                reason = (
                    f"out of memory: MemAvailable {gib(available)} < {floor_gib} GiB in {phase[0]}, this process's RSS "
                    f"peak {gib(peak_rss_bytes())}"
                )
                emit(kind="failed", reason=reason)
                os._exit(75)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def worker(spec_path: str) -> None:
    """One job of `run_isolated` in this process: "build" (the float32 checkpoint), "session" (one library and
    dtype, one round over its settings) or "logits" (one library's logits after each prefix). Writes a JSON line
    per finished step to spec["out"]."""
    start = time.perf_counter()
    with open(spec_path) as f:
        spec = json.load(f)

    def emit(**record):
        with open(spec["out"], "a") as f:
            f.write(json.dumps(record) + "\n")

    try:  # if memory does run out, the kernel kills this process rather than someone else's
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(spec["torch_threads"])
    job, name, shape, phase = spec["job"], spec["name"], spec["shape"], [spec["job"]]
    memory_guard(spec["min_available"], phase, emit)
    if job == "build":
        model = build_hf(name, shape, spec["seed"])
        model.save_pretrained(spec["directory"])
        return emit(kind="end", params=n_params(model), wall_s=time.perf_counter() - start)
    lib, phase[0] = spec["lib"], "loading"
    model, load_s = load(lib, spec["directory"], spec["dtype"], name, shape)
    attn = model.config._attn_implementation if lib == "transformers" else None
    emit(kind="loaded", load_s=load_s, digest=embedding_digest(lib, model), attn_implementation=attn)
    if job == "logits":
        phase[0] = "logits"
        path = spec["out"] + ".npy"
        np.save(path, np.stack([logits_at(lib, model, np.asarray(p, np.int32)) for p in spec["prefixes"]]))
        return emit(kind="end", path=path, wall_s=time.perf_counter() - start)
    for mode, B in spec["settings"]:
        phase[0] = f"{mode} batch {B}"
        prompt_np = make_prompt(shape["vocab_size"], B, spec["prompt_len"])
        fn = runner(lib, model, prompt_np, None if mode == "greedy" else spec["sampling"])
        first_calls, times, tokens = measure({lib: fn}, spec["new"], [spec["round"]])
        emit(
            kind="setting",
            mode=mode,
            batch=B,
            first_call_1_s=first_calls[lib + "_1"][0],
            first_call_full_s=first_calls[lib + "_full"][0],
            time_1_s=times[lib + "_1"][0],
            time_full_s=times[lib + "_full"][0],
            tokens=tokens[lib].tolist(),
        )
    return emit(kind="end", wall_s=time.perf_counter() - start)


def fmt_ms(seconds: float) -> str:
    return f"{1e3 * seconds:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


def fmt_rate(tokens_per_s: float) -> str:
    return f"{tokens_per_s:.0f}" if tokens_per_s >= 10 else f"{tokens_per_s:.2f}"


def pair(r: dict, key: str, fmt) -> str:
    """ "jaxformer / transformers" of one measure; "failed" for a library that has none."""
    return " / ".join("failed" if "failed" in r[lib] else fmt(r[lib][key]) for lib in LIBS)


def table(rows: list[dict]) -> str:
    lines = [
        "| model | dtype | decoding | batch | first token jf / hf | prefill ratio | per token jf / hf "
        "| decode tok/s jf / hf | decode ratio | total tok/s jf / hf | total ratio | same greedy tokens |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in rows:
        x = lambda key, ratio=r["ratio"] or {}: f"{ratio[key]:.2f}x" if key in ratio else "n/a"
        same = {True: "yes", False: "**NO**", None: "n/a (sampled)"}[r["same_tokens"]]
        if r["ratio"] is None:
            why = "; ".join(f"{lib}: {r[lib]['failed'][0]}" for lib in LIBS if "failed" in r[lib])
            same = f"n/a (**failed**: {why})"
        if r["same_tokens"] is not None:
            same += f" ({r['distinct_tokens']} distinct ids)"
        partial = [
            f"{lib}: {len(r[lib]['failed_rounds'])} round(s) failed" for lib in LIBS if "failed_rounds" in r[lib]
        ]
        if partial:
            same += f" ({', '.join(partial)})"
        if r.get("difference"):
            d = r["difference"]
            if "failed" in d:
                same += f" (from token {d['first_position']} of {r['new_tokens']}; logits failed)"
            else:
                gaps = f"hf {d['transformers_logit_gap']:.2e} / jf {d['jaxformer_logit_gap']:.2e}"
                same += f" (from token {d['first_position']} of {r['new_tokens']}, logit gap {gaps})"
        if r.get("same_weights") is False:
            same += " (**embedding tables differ**)"
        total = f"**{x('total_tokens_per_s')}**"
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['mode']} | {r['batch']} | {pair(r, 'first_token_s', fmt_ms)} | "
            f"{x('prefill_tokens_per_s')} | {pair(r, 'decode_step_s', fmt_ms)} | "
            f"{pair(r, 'decode_tokens_per_s', fmt_rate)} | {x('decode_tokens_per_s')} | "
            f"{pair(r, 'total_tokens_per_s', fmt_rate)} | {total} | {same} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict], goal: float = 1.5) -> str:
    """One line on the >= 1.5x goal (total tokens/s), one on the greedy token check, one on failed settings."""
    label = lambda r: f"{r['model']} {r['dtype']} {r['mode']} batch {r['batch']}"
    ratios = [(r["ratio"]["total_tokens_per_s"], label(r)) for r in rows if r["ratio"]]
    low = min(ratios, default=(float("nan"), "none measured"))
    greedy = [r for r in rows if r["same_tokens"] is not None]
    differ = [label(r) for r in greedy if not r["same_tokens"]]
    failed = [f"{label(r)} ({', '.join(lib for lib in LIBS if 'failed' in r[lib])})" for r in rows if not r["ratio"]]
    return (
        f"Total tokens/s, jaxformer / transformers: >= {goal}x in {sum(x >= goal for x, _ in ratios)} of "
        f"{len(ratios)} settings; lowest {low[0]:.2f}x ({low[1]}).\n"
        f"Greedy tokens identical in {len(greedy) - len(differ)} of {len(greedy)} greedy settings"
        + (f"; different in: {', '.join(differ)}." if differ else ".")
        + (f"\nFailed (no ratio): {', '.join(failed)}." if failed else "")
    )


def warmup_table(rows: list[dict]) -> str:
    lines = [
        "| model | dtype | decoding | batch | jaxformer first call, 1 / all tokens "
        "| of which compiling (first - median) | transformers first call, 1 / all tokens |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        cells = []
        for lib in LIBS:
            c = r[lib]
            cells.append("failed" if "failed" in c else f"{c['first_call_1_s']:.2f} / {c['first_call_full_s']:.2f} s")
        jf = r["jaxformer"]
        compiling = "n/a"
        if "failed" not in jf:
            compiling = (
                f"{jf['first_call_1_s'] - jf['first_token_s']:.2f} / {jf['first_call_full_s'] - jf['full_s']:.2f} s"
            )
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['mode']} | {r['batch']} | {cells[0]} | {compiling} | {cells[1]} |"
        )
    return "\n".join(lines)


def process_table(processes: list[dict], own_peak: int) -> str:
    lines = [
        "| process | model | library | dtype | round | settings | wall | load | peak RSS | failed |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in processes:
        load_s = "" if p["load_s"] is None else f"{p['load_s']:.1f} s"
        lines.append(
            f"| {p['job']} | {p['name']} | {p['lib'] or ''} | {p['dtype'] or 'float32'} | "
            f"{'' if p['round'] is None else p['round']} | {p['settings'] or ''} | {p['process_s']:.0f} s | {load_s} | "
            f"{gib(p['peak_rss_bytes'])} | {p['failed'] or ''} |"
        )
    lines.append(
        f"| this process (in-process runs hold both libraries' models here) | | | | | | | | {gib(own_peak)} | |"
    )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny models and lengths: checks that the script runs")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--models", default="gpt2,llama", help="comma-separated: gpt2, llama, gemma2-2b")
    parser.add_argument("--dtype", default="float32", help="comma-separated: float32, bfloat16 (both libraries)")
    parser.add_argument("--modes", default="greedy,sample", help="comma-separated: greedy, sample")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 1,8; smoke 1,2)")
    parser.add_argument("--prompt_len", type=int, default=None, help="prompt tokens (default 32; smoke 8)")
    parser.add_argument(
        "--new_tokens", type=int, default=None, help="generated tokens (default 128, gemma2-2b 32; smoke 8)"
    )
    parser.add_argument(
        "--rounds", type=int, default=None, help="timed rounds per setting (default 5, gemma2-2b 2; smoke 1)"
    )
    parser.add_argument(
        "--num_layers", type=int, default=None, help="override the layer count (a full-width stand-in for estimates)"
    )
    parser.add_argument(
        "--isolate",
        choices=("auto", "yes", "no"),
        default="auto",
        help="one process per library and round (auto: for gemma2-2b only)",
    )
    parser.add_argument("--temperature", type=float, default=0.8, help="sampling temperature")
    parser.add_argument("--top_k", type=int, default=50, help="sampling top-k")
    parser.add_argument(
        "--torch_threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: every CPU)"
    )
    parser.add_argument(
        "--min_available_gib",
        type=float,
        default=1.0,
        help="isolated runs: a worker ends itself (that setting: failed) when MemAvailable falls below this",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one job of an isolated run
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker)
    pick = lambda value, full, smoke: value if value is not None else (smoke if args.smoke else full)
    batches = [int(b) for b in pick(args.batches, "1,8", "1,2").split(",")]
    prompt_len = pick(args.prompt_len, 32, 8)
    models, modes, dtypes = args.models.split(","), args.modes.split(","), args.dtype.split(",")
    if not set(models) <= set(FULL):
        parser.error(f"--models: from {sorted(FULL)}; got {args.models}")
    if not set(modes) <= {"greedy", "sample"}:
        parser.error(f"--modes: greedy and/or sample; got {args.modes}")
    if not set(dtypes) <= set(DTYPES):
        parser.error(f"--dtype: float32 and/or bfloat16; got {args.dtype}")
    new = {name: pick(args.new_tokens, NEW_TOKENS[name], 8) for name in models}
    rounds = {name: pick(args.rounds, ROUNDS[name], 1) for name in models}
    if min(new.values()) < 2:
        parser.error("--new_tokens must be >= 2 (the per-token time is (full - first token) / (new_tokens - 1))")
    torch.set_num_threads(args.torch_threads)
    transformers.utils.logging.disable_progress_bar()
    sampling = dict(temperature=args.temperature, top_k=args.top_k)
    settings = [(mode, B) for mode in modes for B in batches]
    load_before = os.getloadavg()
    rows, processes, protocols = [], [], {}
    for name in models:
        shape = dict((SMOKE if args.smoke else FULL)[name])
        if args.num_layers is not None:
            shape[LAYERS_KEY[name]] = args.num_layers
        if args.isolate == "yes" or (args.isolate == "auto" and name in ISOLATED):
            lengths = (prompt_len, new[name], rounds[name])
            limits = (args.torch_threads, args.min_available_gib)
            isolated_rows, isolated_processes = run_isolated(name, shape, dtypes, settings, *lengths, sampling, *limits)
            rows += isolated_rows
            processes += isolated_processes
        else:
            for dtype in dtypes:
                rows += run_in_process(name, shape, dtype, settings, prompt_len, new[name], rounds[name], sampling)
        protocols[name] = rows[-1]["protocol"]
    load_after = os.getloadavg()
    cpu = host.cpu_info()
    machine = (
        f"{host.describe()} (backend {jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}; 1-minute load average {load_before[0]:.2f} before, "
        f"{load_after[0]:.2f} after"
    )
    print(
        f"\n{machine}\nprompt {prompt_len}; dtypes {', '.join(dtypes)}; sampling: temperature {args.temperature}, "
        f"top-k {args.top_k}; ratios: jaxformer / transformers tokens/s"
    )
    for name in models:
        layers = f", {args.num_layers} layers" if args.num_layers is not None else ""
        print(f"{name}{layers}: {new[name]} new tokens, medians of {rounds[name]} rounds; {protocols[name]}")
    print()
    print(table(rows))
    print(f"\n{summary(rows)}")
    print("\nFirst calls (excluded above; isolated runs: medians over the processes, each compiles):\n")
    print(warmup_table(rows))
    own_peak = peak_rss_bytes()
    print("\nPeak resident memory (getrusage ru_maxrss) of each process:\n")
    print(process_table(processes, own_peak))
    if args.json:
        with open(args.json, "w") as f:
            meta = dict(
                machine=machine,
                cpu=dict(cpu, vector_extensions=host.vector_extensions(cpu["flags"]), cpus=os.cpu_count()),
                versions=dict(jax=jax.__version__, torch=torch.__version__, transformers=transformers.__version__),
                torch_threads=torch.get_num_threads(),
                load_average=dict(before=load_before, after=load_after),
                dtypes=dtypes,
                prompt=prompt_len,
                new_tokens=new,
                rounds=rounds,
                num_layers=args.num_layers,
                protocol=protocols,
                sampling=sampling,
                processes=processes,
                peak_rss_bytes=own_peak,
            )
            json.dump(dict(meta, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
