"""Peak host memory of `pretrained.from_pretrained`: does loading hold about one copy of the model, or two?

    python experiments/pretrained_load_memory.py --dir /tmp/llama_ckpt            # makes the checkpoint once, then
                                                                                # measures in a fresh process
Makes (if missing) a Llama-shaped checkpoint with `save_pretrained` (random weights; default d_model 1024,
12 layers, 16 heads / 4 kv heads, d_ff 2816, vocab 32000: ~200M parameters, ~0.8 GB float32), then loads it in a
new process and reads the kernel's counters: VmRSS before loading (jax initialised) and after, and VmHWM (the
peak). On a CPU backend the loaded parameters themselves live in host memory, so the floor is one model copy;
a loader that materialised the whole checkpoint first (or built the model and then overwrote it) would peak
near two. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def make(directory: str, args) -> None:
    import jax.numpy as jnp
    from flax import nnx

    from jaxformer import pretrained
    from jaxformer.models import GPT, ModelConfig

    cfg = ModelConfig(
        vocab_size=args.vocab,
        num_layers=args.layers,
        d_model=args.d_model,
        num_heads=16,
        num_kv_heads=4,
        d_ff=args.d_ff,
        max_len=2048,
        positional="rope",
        rope_interleaved=False,
        norm="rmsnorm",
        activation="swiglu",
        use_bias=False,
        tie_embeddings=False,
        dtype=jnp.float32,
    )
    pretrained.save_pretrained(GPT(cfg, rngs=nnx.Rngs(0)), directory, max_shard_bytes=2**30)


def measure(directory: str) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxformer import pretrained

    jnp.zeros(8).block_until_ready()  # the backend is up before the baseline
    before = status_kib("VmRSS")
    model = pretrained.from_pretrained(directory)
    jax.block_until_ready(jax.tree.leaves(model))
    after, peak = status_kib("VmRSS"), status_kib("VmHWM")
    files = [f for f in os.listdir(directory) if f.endswith(".safetensors")]
    size = sum(os.path.getsize(os.path.join(directory, f)) for f in files)
    largest = max(x.nbytes for x in jax.tree.leaves(model) if hasattr(x, "nbytes"))
    mib = lambda kib: round(kib / 1024, 1)
    return {
        "checkpoint_mib": round(size / 2**20, 1),
        "largest_tensor_mib": round(largest / 2**20, 1),
        "rss_before_mib": mib(before),
        "rss_after_mib": mib(after),
        "peak_rss_mib": mib(peak),
        "peak_minus_before_over_checkpoint": round((peak - before) * 1024 / size, 3),
        "jax": jax.__version__,
        "backend": jax.default_backend(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--d_model", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d_ff", type=int, default=2816)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.dir)))
        return
    if not os.path.exists(os.path.join(args.dir, "config.json")):
        make(args.dir, args)
    out = subprocess.run([sys.executable, __file__, "--dir", args.dir, "--measure"], capture_output=True, text=True)
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
