"""The claims lab's shared machinery: every experiment in experiments/claims/ is one claim, run the same way.

An experiment module defines

    CLAIM = "One sentence: what the classic explanation says."
    SETUP = "What is run, at the default size (a 2-core CPU, minutes) and with --full (an accelerator)."

    def run(size: str) -> Outcome:           # does the work at one of SIZES, returns the numbers and the verdict
    def plot(numbers: dict, path: str):      # draws the figure from the numbers alone

and ends with `if __name__ == "__main__": lab.main(sys.modules[__name__])`. `main` parses `--size` (`--full` is
`--size full`) and `--out`, times the run, and writes `<out>/<name>.json` (claim, setup, result, verdict, numbers,
seconds, size, machine) and `<out>/<name>.png`. `report.py` turns those files into experiments/REPORT.md: nothing in
the report is typed by hand.

The sizes: "default" is the recorded run (a 2-core CPU, minutes); "full" is for an accelerator; "tiny" exercises
every line of the experiment in seconds to a minute, mostly compiles (tests/test_claims.py runs it in the default
suite, so no refactor breaks a claim unseen). A tiny run's verdict is not evidence: its models are too small and
too briefly trained.

Experiments that train a language model use `lm_config` + `train_lm`: the library's own training loop
(`jaxformer.training.train_and_evaluate`) on tiny Shakespeare from tfds, in a temporary workdir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from types import ModuleType

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import host  # noqa: E402  (experiments/host.py: the CPU and its vector extensions)

RESULTS = os.path.join(HERE, "results")
CPU_RECIPE = "shakespeare_char_cpu"  # a recipe of jaxformer.configs
SIZES = ("tiny", "default", "full")
# The recipe shrunk for --size tiny: one narrow layer on short windows, so a training run costs its compiles only.
TINY_LM = {
    "model.num_layers": 1,
    "model.num_heads": 2,
    "model.d_model": 32,
    "model.d_ff": 64,
    "data.seq_len": 32,
    "batch_size": 8,
}


@dataclasses.dataclass
class Outcome:
    """What an experiment found: `result` (a few sentences quoting the numbers), `supported` (True / False /
    None for "partly" or "depends"), and `numbers` (JSON-serialisable; enough to redraw the figure)."""

    result: str
    supported: bool | None
    numbers: dict


def verdict(supported: bool | None) -> str:
    return {True: "supported", False: "not supported", None: "partly supported"}[supported]


def pick(size: str, **by_size):
    """`by_size[size]`, for a claim's table of settings: `pick(size, tiny=..., default=..., full=...)`."""
    if size not in SIZES or set(by_size) != set(SIZES):
        raise ValueError(f"size must be one of {SIZES} (with a setting for each), got {size!r} of {sorted(by_size)}")
    return by_size[size]


def main(module: ModuleType) -> dict:
    """Runs `module`'s claim from the command line; returns the record it wrote."""
    parser = argparse.ArgumentParser(description=f"{module.CLAIM}\n\n{module.SETUP}")
    parser.add_argument("--size", choices=SIZES, default="default", help="tiny: seconds; full: an accelerator")
    parser.add_argument("--full", action="store_true", help="the same as --size full")
    parser.add_argument("--out", default=RESULTS, help="where <name>.json and <name>.png go")
    args = parser.parse_args()
    return record(module, "full" if args.full else args.size, args.out)


def record(module: ModuleType, size: str, out: str) -> dict:
    """Runs `module`'s claim at `size`, writes `<out>/<name>.json` and `<out>/<name>.png`; returns the record."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}; got {size!r}.")
    import matplotlib

    matplotlib.use("Agg")  # a script writes files only; imported in a notebook, plots stay inline
    name = os.path.splitext(os.path.basename(module.__file__))[0]
    os.makedirs(out, exist_ok=True)
    start = time.perf_counter()
    outcome = module.run(size)
    seconds = time.perf_counter() - start
    figure = os.path.join(out, f"{name}.png")
    module.plot(outcome.numbers, figure)
    record = {
        "name": name,
        "claim": module.CLAIM,
        "setup": module.SETUP,
        "result": outcome.result,
        "supported": outcome.supported,
        "verdict": verdict(outcome.supported),
        "numbers": outcome.numbers,
        "seconds": round(seconds, 1),
        "size": size,
        "machine": host.describe(),
        "figure": os.path.basename(figure),
    }
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(f"{name}: {record['verdict']} ({seconds:.0f} s)\n{outcome.result}")
    return record


def lm_config(steps: int, **overrides):
    """The `shakespeare_char_cpu` training config for `steps` steps (evaluated once, at the end), with dotted
    `overrides`: `lm_config(300, **{"model.num_heads": 1, "batch_size": 16})`."""
    from jaxformer.configs import load_config

    config = load_config(CPU_RECIPE)
    # The plain loop of layers: the experiments read per-layer internals (attention maps, per-layer gradients) and
    # their records were taken with it (the recipe itself now scans and rematerialises its layers for speed).
    config.model.update(scan_layers=False, remat="none")
    config.update(num_steps=steps, log_every=max(1, steps // 20), eval_every=steps, checkpoint_every=steps)
    config.warmup_steps = min(config.warmup_steps, steps // 10)
    config.sample.num_tokens = 0
    for dotted, value in overrides.items():
        *path, key = dotted.split(".")
        node = config
        for part in path:
            node = node[part]
        node[key] = value
    return config


def load_tokens(config) -> tuple[object, np.ndarray, np.ndarray]:
    """(tokenizer, train tokens int32 `[N]`, eval tokens int32 `[M]`) of `config.data`: the training loop's own
    corpus (`tasks.lm.load_corpus`), each split read whole (tiny Shakespeare is about a million characters)."""
    from jaxformer.training.tasks.lm import load_corpus

    tokenizer, train, evaluation = load_corpus(config.data)
    whole = lambda store: store.windows(np.zeros(1, np.int64), len(store))[0]
    return tokenizer, whole(train), whole(evaluation)


def train_lm(config, *, keep_model: bool = False) -> dict:
    """Trains `config` with the library's loop in a temporary workdir. Returns {"final": the last metrics row
    (with val_loss), "history": every logged row}; with `keep_model`, also "model" (the trained model in eval
    mode, read back from the final checkpoint before the workdir goes) and "tokenizer"."""
    from jaxformer.training.loop import train_and_evaluate
    from jaxformer.training.trained import load_trained

    with tempfile.TemporaryDirectory() as workdir:
        final = train_and_evaluate(config, workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            history = [json.loads(line) for line in f if line.strip()]
        out = {"final": final, "history": history}
        if keep_model:
            out["model"], out["tokenizer"], _ = load_trained(workdir)
    return out


def attention_maps(model, tokens) -> list:
    """Per layer, the causal self-attention probabilities [B, N, T, T] of a pre-norm GPT on `tokens` [B, T].

    Recomputes each block's q and k from its own normalised input (exactly what the block attends with) and
    passes them to `ops.attention_weights`; the blocks themselves carry the residual stream forward."""
    import jax.numpy as jnp
    import numpy as np

    from jaxformer import ops

    model.eval()
    x = model.embed(jnp.asarray(tokens, jnp.int32))
    maps = []
    for block in model.blocks.layers:
        h = block.self_residual.norm(x)
        q, k, _ = block.self_attention.project_qkv(h)
        maps.append(np.asarray(ops.attention_weights(q, k, is_causal=True)))
        x = block(x)
    return maps
