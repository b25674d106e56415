"""Self-attention over a sequence split across devices (context parallelism): `ops.ring_attention` inside
`jax.shard_map`, as `nn.MultiHeadAttention` runs it when the active activation hints (a sharded training step,
nn/constraints.py) split the sequence ("length") over a mesh axis (`config.mesh.context` > 1; sharding.py).
"""

from __future__ import annotations

import jax

from jaxformer import ops
from jaxformer.nn.constraints import resolved, sequence_split


def context_shardings(q, k):
    """(q's sharding, k's sharding) when the active hints split the sequence of q `[B, T, N, H]` over a mesh axis;
    else None (no hints, or the sequence whole: ordinary attention)."""
    q_sharding = resolved(("batch", "length", "heads", "head_dim"), q.shape)
    if q_sharding is None or len(q_sharding.spec) < 2 or q_sharding.spec[1] is None:
        return None
    return q_sharding, resolved(("batch", "length", "kv_heads", "head_dim"), k.shape)


def ring_self_attention(
    q,
    k,
    v,
    shardings,
    *,
    causal: bool,
    window: int | None,
    scale: float | None,
    logit_softcap: float | None,
    sinks,
    alibi,
    segment_ids,
    mask,
    decode: bool,
    dropout_rate: float,
):
    """Self-attention of q `[B, T, N, H]`, k, v `[B, T, K, H]` split on T as `shardings` (`context_shardings`)
    say: `ops.ring_attention` over that mesh axis inside `jax.shard_map`, the batch and heads mapped as the hints
    lay them out, the sequence in the hints' layout (contiguous or zigzag). The layer's causality, sliding `window`,
    `logit_softcap`, `sinks` `[N]`, ALiBi (`alibi` = (query positions `[B, T]`, key positions): distances on the
    tokens' positions) and `segment_ids` apply on global positions; RoPE was applied before, on the global
    positions. What ring attention cannot do (an array `mask`, `decode`, a `dropout_rate` > 0) is a ValueError
    naming it, as are keys not split like the queries."""
    q_sharding, k_sharding = shardings
    axis = q_sharding.spec[1]
    unsupported = [
        (decode, "decode=True (a KV cache)"),
        (dropout_rate > 0, f"dropout_rate={dropout_rate} (attention dropout)"),
        (mask is not None, "an array `mask` (padding `valid` included; pack with segment_ids instead)"),
    ]
    refused = [name for flag, name in unsupported if flag]
    if refused:
        raise ValueError(
            f"Context parallelism (the sequence split over mesh axis {axis!r}: config.mesh.context > 1) runs "
            f"self-attention as ring attention, which does not support {', '.join(refused)} yet. Set "
            "config.mesh.context to 1, or change the model."
        )
    if k_sharding is None or tuple(k_sharding.spec[:2]) != tuple(q_sharding.spec[:2]):
        raise ValueError(
            f"Context parallelism splits queries of shape {tuple(q.shape)} on their sequence over {axis!r}, but "
            f"not the keys of shape {tuple(k.shape)}: ring attention is for self-attention over one sequence."
        )
    batch = q_sharding.spec[0]
    # Heads split over tensor stay split when the key / value heads are split alike (query head n reads key
    # head n // G on the same device); otherwise every device of that axis attends over all heads. ALiBi's slopes
    # are static per query head: with ALiBi every device takes all heads.
    heads = q_sharding.spec[2] if q_sharding.spec[2] == k_sharding.spec[2] and alibi is None else None
    spec = jax.sharding.PartitionSpec(batch, axis, heads, None)
    ids_spec = jax.sharding.PartitionSpec(batch, axis)
    _, _, layout = sequence_split(q.shape[0], q.shape[1])
    ring = dict(axis_name=axis, causal=causal, window=window, scale=scale, logit_softcap=logit_softcap, layout=layout)
    # The optional inputs by keyword: segment ids and positions split like the tokens, sinks [N] like the heads.
    optional = {"segment_ids": (segment_ids, ids_spec), "sinks": (sinks, jax.sharding.PartitionSpec(heads))}
    if alibi is not None:  # the queries' positions; the keys' are the same (self-attention), ringing with them
        optional["positions"] = (alibi[0], ids_spec)
        ring["alibi_slopes"] = ops.alibi_slopes(q.shape[2])
    names = [name for name, (x, _) in optional.items() if x is not None]

    def local(q, k, v, *rest):
        return ops.ring_attention(q, k, v, **dict(zip(names, rest, strict=True)), **ring)

    args = (q, k, v, *(optional[name][0] for name in names))
    in_specs = (spec, spec, spec, *(optional[name][1] for name in names))
    return jax.shard_map(local, mesh=q_sharding.mesh, in_specs=in_specs, out_specs=spec)(*args)
