"""XLA's memory analysis of `generate` for a Gemma-2-2B-width model in bfloat16, from shapes alone (nothing runs).

    python experiments/decode_memory_bf16.py [--num_layers 2] [--batches 1,2,8]

Prints the compiled decoding program's temporaries and arguments per batch size. Before `ops.dense` padded one-row
products, batch 1 held a float32 copy of every weight (XLA:CPU computes a one-row bf16 dot in float32 and hoists the
converted weights out of the decoding loop); BENCHMARKS.md records both.
"""

from __future__ import annotations

import argparse

import host
import jax
import jax.numpy as jnp
from flax import nnx

from jaxformer.decoding.generate import _generate
from jaxformer.models import GPT, ModelConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--batches", default="1,2,8")
    args = parser.parse_args()
    print(host.describe())
    kinds = ("local", "global") * (args.num_layers // 2) + ("local",) * (args.num_layers % 2)
    cfg = ModelConfig.variant(
        "gemma2-2b", num_layers=args.num_layers, layer_types=kinds, dtype="bfloat16", param_dtype="bfloat16"
    )
    graphdef, state = nnx.split(nnx.eval_shape(lambda: GPT(cfg, rngs=nnx.Rngs(0))))
    settings = dict(max_new_tokens=32, max_len=64, temperature=0.0, top_k=None, top_p=None, eos_id=None)
    for batch in (int(b) for b in args.batches.split(",")):
        prompt, lengths = jax.ShapeDtypeStruct((batch, 32), jnp.int32), jax.ShapeDtypeStruct((batch,), jnp.int32)
        memory = _generate.lower(graphdef, state, prompt, lengths, jax.random.key(0), **settings).compile()
        memory = memory.memory_analysis()
        print(
            f"gemma2-2b width, {args.num_layers} layers, bf16, batch {batch}: temporaries "
            f"{memory.temp_size_in_bytes / 2**30:.2f} GiB, arguments {memory.argument_size_in_bytes / 2**30:.2f} GiB"
        )


if __name__ == "__main__":
    main()
