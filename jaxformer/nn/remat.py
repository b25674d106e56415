"""Rematerialisation (gradient checkpointing) policies for a residual block: trade backward-pass compute for memory.

    policy name     what the backward pass keeps from the forward            what it recomputes
    "none"          every intermediate the gradient needs (no remat)         nothing
    "full"          only the block's inputs                                  the whole block forward
    "dots"          every matmul output (jax.checkpoint_policies.checkpoint_dots)   norms, activations, softmax
    "dots_no_batch" matmuls against weights: q/k/v/out projections, FFN      also the attention scores and
                    (dots_with_no_batch_dims_saveable)                       probabilities (T x S per head)

`full` keeps one `[B, T, D]` tensor per block instead of the ~(10 D + 2 N T) floats per token of a plain block
(Korthikanti et al. 2022) at the price of one more forward pass; `dots_no_batch` drops the T x S attention
tensors, which dominate at long context. Under `jax.grad` only; the forward values are unchanged.

Measured (BENCHMARKS.md): on an H100, GPT-2 small's step keeps 6.5 instead of 12.1 GiB of temporaries with "full",
looped or scanned. On XLA:CPU only the layer scan gets the saving: in a Python loop of blocks XLA schedules the
recomputation early and keeps its results, and the compiled step's temporaries are byte-for-byte those of no remat
(tests/models/test_remat.py measures the scanned case, where "full" cuts them about 4x).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


def remat(fn: Callable, policy: str, *, in_scan: bool = False) -> Callable:
    """`fn` wrapped in `jax.checkpoint` with the named policy ("none" returns `fn` itself).

    Outside a scan, `prevent_cse=True` keeps XLA from merging the recomputed forward with the original one, which
    silently undoes the remat (measured: the same temporaries and step time as no remat on an H100). Inside
    `lax.scan` the loop already prevents that, and `prevent_cse=False` avoids the barriers' cost (jax's docs).
    """
    if policy == "none":
        return fn
    policies = {
        "full": None,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }
    if policy not in policies:
        raise ValueError(f"remat policy must be one of {REMAT_POLICIES}; got {policy!r}.")
    return jax.checkpoint(fn, policy=policies[policy], prevent_cse=not in_scan)
