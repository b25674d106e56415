"""Which attention kernel a `MultiHeadAttention` call runs: the one dispatch point behind `implementation`.

    implementation  kernel
    xla             ops.dot_product_attention: dense T x S scores, any backend
    blockwise       ops.blockwise_attention: O(T) memory, skips hidden blocks (jaxformer's own custom VJP)
    jax_nn          jax.nn.dot_product_attention with its default backend
    cudnn           jax.nn.dot_product_attention(implementation="cudnn"): flash attention, NVIDIA GPU, bf16/fp16
                    (a ValueError elsewhere, before anything compiles)
    pallas          ops.splash_attention: jax's Pallas TPU splash kernel; T, S multiples of 128; off TPU it runs
                    in the Pallas interpreter (slow, with a warning)

    what the call has      xla   blockwise  jax_nn  cudnn  pallas
    is_causal / window     yes   yes        yes     yes    yes      (blockwise / pallas skip hidden blocks)
    segment_ids (packing)  mask  yes        mask    mask   yes      ("mask": as ops.segment_mask; "yes": no mask array,
                                                                     and blockwise skips other documents' blocks)
    array mask (padding)   yes   error      yes     yes    error
    bias (ALiBi)           yes   error      yes     yes    error
    logit soft-cap         yes   yes        error   error  yes      (jax.nn.dot_product_attention takes none)
    GQA / MQA              yes   yes        yes     yes    yes
    attention dropout      yes   -> xla     -> xla  -> xla -> xla
    KV-cache decoding      yes   -> xla     -> xla  -> xla -> xla

"error": an explicit `blockwise` / `pallas` raises a ValueError that names the input and says to use `xla`
(a model config with ALiBi and either of them is refused when it is built); an explicit `jax_nn` / `cudnn` with a
logit soft-cap is refused the same way (never run without the cap). "-> xla": dropout on the attention
weights and cached decoding always take the dense path.

`auto` picks `cudnn` on a GPU when the call is bf16 / fp16 with head_dim <= 128 (a multiple of 8), no array mask,
no bias, no segment ids, no sliding window and no logit soft-cap (a capped call on a GPU runs `xla` instead);
`pallas` on a TPU when there is no array mask or bias and both lengths are multiples of 128; `blockwise` on a CPU
when the longer sequence has >= `BLOCKWISE_MIN_LEN` tokens and there is no array mask or bias; `xla` otherwise.

The choice is made while tracing, from static facts (backend, dtype, shapes, which masks are given), so it costs
nothing at run time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxformer import checks

IMPLEMENTATIONS = ("auto", "xla", "blockwise", "jax_nn", "cudnn", "pallas")
PALLAS_TILE = 128  # ops.splash_attention needs both lengths to be multiples of this
BLOCKWISE_MIN_LEN = 2048  # on CPU blockwise was 2.5x faster than dense at T=4096 and slower at T=256 (BENCHMARKS.md)


def check_implementation(implementation: str, name: str = "implementation") -> str:
    """`implementation` (named `name` in the message, e.g. "ModelConfig.attention_impl") must be one of
    `IMPLEMENTATIONS` (a TypeError for what is no string); returns it. The one check: configs and
    `MultiHeadAttention` call it, `choose` trusts it."""
    return checks.check_choice(name, implementation, IMPLEMENTATIONS)


def check_softcap(implementation: str, softcap: float | None, name: str = "implementation") -> None:
    """A logit soft-cap needs a kernel that applies it: `jax_nn` and `cudnn` (jax.nn.dot_product_attention) take
    none, so asking for either with a cap is a ValueError that names both options, never a silently uncapped run."""
    if softcap is not None and implementation in ("jax_nn", "cudnn"):
        raise ValueError(
            f"{name}={implementation!r} runs jax.nn.dot_product_attention, which has no logit soft-cap, and this "
            f"attention caps its logits (attention_logit_softcap={softcap}). Use 'auto' (it picks a kernel that "
            "applies the cap), 'xla', 'blockwise' or 'pallas'."
        )


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
    softcap: float | None = None,
    backend: str | None = None,
) -> str:
    """The kernel that runs ("xla", "blockwise", "jax_nn", "cudnn" or "pallas") for a requested `implementation`
    (one of `IMPLEMENTATIONS`, as `check_implementation` made sure when the layer was built). An explicit kernel
    that cannot apply a logit soft-cap raises a ValueError (`check_softcap`)."""
    assert implementation in IMPLEMENTATIONS, implementation
    if dropout or decode:
        return "xla"
    if implementation != "auto":
        check_softcap(implementation, softcap)
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
        and softcap is None
    ):
        return "cudnn"
    if backend == "tpu" and structural and q_len % PALLAS_TILE == 0 and kv_len % PALLAS_TILE == 0:
        return "pallas"
    if backend == "cpu" and max(q_len, kv_len) >= BLOCKWISE_MIN_LEN and structural:
        return "blockwise"
    return "xla"
