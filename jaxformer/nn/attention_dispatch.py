"""Which attention kernel a `MultiHeadAttention` call runs: the one dispatch point behind `implementation`.

    implementation  kernel                                             masks          bias  GQA  dropout  decoding
    xla             ops.dot_product_attention (dense T x S scores)     any            yes   yes  yes      yes
    blockwise       ops.blockwise_attention (O(T) memory)              structural     no    yes  -> xla   -> xla
    jax_nn          jax.nn.dot_product_attention, default backend      any            yes   yes  -> xla   -> xla
    cudnn           jax.nn.dot_product_attention(implementation=       any            yes   yes  -> xla   -> xla
                    "cudnn"): flash attention, NVIDIA GPU, bf16/fp16
    pallas          ops.splash_attention: jax's Pallas TPU splash      structural     no    yes  -> xla   -> xla
                    kernel; T, S multiples of 128; off TPU it runs
                    in the Pallas interpreter (slow, with a warning)

"masks" is what the layer can hand the kernel: "any" takes array masks (padding, sparse patterns; packing's
`segment_ids` become `ops.segment_mask`); "structural" takes `is_causal`, `sliding_window` and `segment_ids` as
arguments and skips the blocks they hide, but no array mask, so an array mask or an ALiBi bias given to an explicit
`blockwise` / `pallas` raises a ValueError that says to use `xla`.

`auto` picks `cudnn` on a GPU when the call is bf16 / fp16 with head_dim <= 128 (a multiple of 8), no array mask,
no bias, no segment ids and no sliding window; `pallas` on a TPU when there is no array mask or bias and both
lengths are multiples of 128; `blockwise` on a CPU when the longer sequence has >= `BLOCKWISE_MIN_LEN` tokens and
there is no array mask or bias; `xla` otherwise.

"-> xla": dropout on attention weights and cached decoding always take the dense path. The choice is made while
tracing, from static facts (backend, dtype, shapes, which masks are given), so it costs nothing at run time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "jax_nn", "cudnn", "pallas")
PALLAS_TILE = 128  # ops.splash_attention needs both lengths to be multiples of this
BLOCKWISE_MIN_LEN = 2048  # on CPU blockwise was 2.5x faster than dense at T=4096 and slower at T=256 (BENCHMARKS.md)


def choose(
    implementation: str,
    *,
    dtype,
    head_dim: int,
    q_len: int,
    kv_len: int,
    has_mask: bool,
    has_bias: bool,
    sliding_window: int | None,
    dropout: bool,
    decode: bool,
    has_segments: bool = False,
    backend: str | None = None,
) -> str:
    """The kernel that runs ("xla", "blockwise", "jax_nn", "cudnn" or "pallas") for a requested `implementation`."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r}; choose one of {IMPLEMENTATIONS}.")
    if dropout or decode:
        return "xla"
    if implementation != "auto":
        return implementation
    backend = jax.default_backend() if backend is None else backend
    structural = not has_mask and not has_bias
    if (
        backend == "gpu"
        and jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
        and head_dim <= 128
        and head_dim % 8 == 0
        and structural
        and not has_segments
        and sliding_window is None
    ):
        return "cudnn"
    if backend == "tpu" and structural and q_len % PALLAS_TILE == 0 and kv_len % PALLAS_TILE == 0:
        return "pallas"
    if backend == "cpu" and max(q_len, kv_len) >= BLOCKWISE_MIN_LEN and structural:
        return "blockwise"
    return "xla"
