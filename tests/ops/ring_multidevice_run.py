"""Run by test_ring_attention.py in a subprocess with 8 fake CPU devices: ring attention inside shard_map against a
float64 NumPy reference of full attention (outputs and gradients), the compiled programs' shapes, and the global
positions each device holds. Prints one JSON object on the last line.

    python tests/ops/ring_multidevice_run.py [CASE ...]     (no argument: the default cases)
"""

import json
import os
import re
import sys
import time

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from jaxformer import ops
from tests.ops import reference

AUTO = jax.sharding.AxisType.Auto
H = 8

# name -> settings: mesh (data, context) (default: 8 on context), global B (2) and T (64), heads N / K (4 / 4),
# causal, layout, window, segment ids, scale, soft-cap, key block. One program each (forward + backward): the
# default list stays short.
CASES = {
    "causal_contiguous": dict(causal=True),
    "causal_zigzag": dict(causal=True, layout="zigzag", T=128, hlo=True),  # T = 128: its program is inspected
    "noncausal_gqa": dict(heads=(4, 2)),
    "segments_causal_zigzag": dict(causal=True, layout="zigzag", segments="packed"),
    "window_causal_contiguous": dict(causal=True, window=11),
    "window_gqa_causal_zigzag": dict(causal=True, layout="zigzag", window=11, heads=(4, 2)),
    "empty_rows": dict(segments="empty_rows"),
    "softcap_causal_zigzag_gqa": dict(causal=True, layout="zigzag", heads=(4, 2), softcap=2.0),
    # ALiBi (BLOOM, MPT): on the layout's global positions, and on positions passed in (per packed document)
    "alibi_causal_zigzag": dict(causal=True, layout="zigzag", alibi="global", heads=(4, 2)),
    "alibi_given_positions_causal_zigzag_softcap": dict(
        causal=True, layout="zigzag", alibi="given", segments="packed", softcap=3.0
    ),
    # GPT-OSS: sinks with a window and packed documents, GQA, key blocks; on a (data, context) mesh
    "sinks_causal_zigzag_window_segments": dict(
        mesh=(2, 4), causal=True, layout="zigzag", window=9, segments="packed", heads=(4, 2), sinks=True, block=2
    ),
    # T_local = 16 folded 4 keys at a time (half tiles: 2 blocks), a window that skips far blocks; program inspected
    "blocks_causal_zigzag_window_segments": dict(
        T=128, causal=True, layout="zigzag", window=11, segments="packed", block=4, hlo=True
    ),
    "mesh_2x4_causal_zigzag_segments": dict(mesh=(2, 4), causal=True, layout="zigzag", segments="packed"),
}
# More combinations and longer sequences (`-m slow`).
SLOW_CASES = {
    "noncausal_zigzag": dict(layout="zigzag"),
    "segments_causal_contiguous": dict(causal=True, segments="packed"),
    "segments_noncausal_unsorted": dict(segments="unsorted"),
    "window_noncausal": dict(window=6),
    "window_noncausal_zigzag_segments": dict(layout="zigzag", window=6, segments="packed"),
    "mesh_2x4_causal_contiguous_gqa_window": dict(mesh=(2, 4), causal=True, heads=(4, 2), window=20),
    "mesh_4x2_noncausal_window_segments": dict(mesh=(4, 2), B=4, T=128, window=9, segments="unsorted"),
    "long_causal_zigzag_window_segments": dict(
        T=256, causal=True, layout="zigzag", window=37, segments="packed", heads=(8, 2)
    ),
    "long_causal_contiguous_scale_mqa": dict(T=256, causal=True, scale=0.3, heads=(4, 1)),
    "softcap_noncausal_window_segments": dict(window=9, segments="unsorted", softcap=1.5, scale=0.9),
    "blocks_noncausal_contiguous_gqa": dict(heads=(4, 2), block=2, segments="unsorted"),
    "sinks_noncausal_empty_rows": dict(segments="empty_rows", sinks=True),
    "alibi_noncausal_window_contiguous": dict(alibi="global", window=13, heads=(6, 3), block=4),
}


def zigzag_order(n):
    """The 2n chunks in the order the devices hold them: device i holds chunks i and 2n - 1 - i."""
    return [chunk for i in range(n) for chunk in (i, 2 * n - 1 - i)]


def to_layout(x, n, layout):
    """A global [B, T, ...] array (or a pair of them) in the order that splitting it contiguously over n devices
    gives each device its slice in `layout` (NumPy: independent of ops.zigzag, which test_ring_attention checks)."""
    if isinstance(x, tuple):
        return tuple(to_layout(y, n, layout) for y in x)
    if layout == "contiguous":
        return x
    chunks = np.split(x, 2 * n, axis=1)
    return np.concatenate([chunks[c] for c in zigzag_order(n)], axis=1)


def from_layout(x, n, layout):
    if layout == "contiguous":
        return x
    chunks = np.split(x, 2 * n, axis=1)
    order = zigzag_order(n)
    return np.concatenate([chunks[order.index(c)] for c in range(2 * n)], axis=1)


def segment_ids(kind, B, T, rng):
    """Global ids [B, T] (or a (q, kv) pair). "packed": 6 documents per row, non-decreasing ids, each boundary inside
    a chunk of 4 (so never at the edge of a device's slice or zigzag chunk); "unsorted": ids 0-2 at random."""
    if kind == "packed":
        inside = np.array([p for p in range(1, T) if p % 4])
        starts = [np.sort(rng.choice(inside, size=5, replace=False)) for _ in range(B)]
        return np.stack([np.searchsorted(s, np.arange(T), side="right") for s in starts]).astype(np.int32)
    if kind == "unsorted":
        return rng.integers(0, 3, size=(B, T)).astype(np.int32)
    # empty_rows: query ids 0 / 1, key ids 0 / 2: queries of id 1 see no key at all.
    q_ids = (rng.random((B, T)) < 0.3).astype(np.int32)
    kv_ids = 2 * (rng.random((B, T)) < 0.5).astype(np.int32)
    return q_ids, kv_ids


def reference_mask(B, T, causal, window, ids):
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    mask = np.ones((B, 1, T, T), bool)
    if causal:
        mask &= s <= t
    if window is not None:
        mask &= (t - s < window) if causal else (np.abs(t - s) < window)
    if ids is not None:
        q_ids, kv_ids = ids if isinstance(ids, tuple) else (ids, ids)
        mask &= q_ids[:, None, :, None] == kv_ids[:, None, None, :]
    return mask


def sink_probs(q, k, mask, scale, softcap, sinks):
    """float64 ([B, N, T, S] key probabilities, [B, N, T] the sink's) of softmax(logits | sink): each row's
    normaliser also holds exp(sink_n) (GPT-OSS); a row with no visible key gives all its weight to the sink."""
    G = q.shape[2] // k.shape[2]
    logits = np.einsum("btnh,bsnh->bnts", q, np.repeat(k, G, axis=2)) * scale
    if softcap is not None:
        logits = softcap * np.tanh(logits / softcap)
    logits = np.where(mask, logits, -np.inf)
    sink = np.asarray(sinks, np.float64)[None, :, None]  # [1, N, 1]
    top = np.maximum(logits.max(axis=-1), sink)  # [B, N, T]
    weights = np.exp(logits - top[..., None])
    total = weights.sum(axis=-1) + np.exp(sink - top)
    return weights / total[..., None], np.exp(sink - top) / total


def reference_grads(q, k, v, w, mask, scale, softcap=None, sinks=None, bias=None):
    """float64 (out, dq, dk, dv[, dsinks]) of sum(attention(q, k, v) * w), the logits soft-capped at `softcap`
    (None: not), with attention sinks `sinks` [N] (None: none; else their gradient comes last)."""
    q, k, v, w = (np.asarray(x, np.float64) for x in (q, k, v, w))
    N, K = q.shape[2], k.shape[2]
    G = N // K
    if sinks is None:
        probs = reference.attention_probs(q, k, mask=mask, bias=bias, scale=scale, softcap=softcap)  # [B, N, T, S]
    else:
        probs, p_sink = sink_probs(q, k, mask, scale, softcap, sinks)
    k_rep, v_rep = np.repeat(k, G, axis=2), np.repeat(v, G, axis=2)
    out = np.einsum("bnts,bsnh->btnh", probs, v_rep)
    dv = np.einsum("bnts,btnh->bsnh", probs, w)
    dprobs = np.einsum("btnh,bsnh->bnts", w, v_rep)
    dlogits = probs * (dprobs - np.sum(dprobs * probs, axis=-1, keepdims=True)) * scale
    if softcap is not None:  # through c tanh(x / c): 1 - tanh^2
        dlogits *= 1.0 - np.tanh(np.einsum("btnh,bsnh->bnts", q, k_rep) * scale / softcap) ** 2
    dq = np.einsum("bnts,bsnh->btnh", dlogits, k_rep)
    dk = np.einsum("bnts,btnh->bsnh", dlogits, q)

    def fold(x):  # query head n = k G + g reads key/value head k
        return x.reshape(*x.shape[:2], K, G, x.shape[-1]).sum(axis=3)

    if sinks is not None:  # d sink_n = -sum_{b, t} p_sink (w . out)
        dsinks = -np.einsum("bnt,btn->n", p_sink, np.sum(w * out, axis=-1))
        return out, dq, fold(dk), fold(dv), dsinks

    return out, dq, fold(dk), fold(dv)


def make_mesh(shape):
    if shape is None:
        return jax.make_mesh((8,), ("context",), axis_types=(AUTO,))
    return jax.make_mesh(shape, ("data", "context"), axis_types=(AUTO, AUTO))


def ring_function(mesh, *, causal, window, layout, scale, softcap, block, paired, sinks=False, alibi=None):
    """jit(shard_map) of (q, k, v, ids, w, positions[, sinks]) -> (out, dq, dk, dv[, dsinks]): the vjp of ring
    attention with cotangent w (sinks replicated, their gradient too; positions for ALiBi, or None)."""
    batch = "data" if "data" in mesh.axis_names else None
    seq, ids_spec = P(batch, "context"), P(batch, "context")

    def attend(q, k, v, ids, positions, sinks=None):
        return ops.ring_attention(
            q,
            k,
            v,
            axis_name="context",
            causal=causal,
            window=window,
            layout=layout,
            scale=scale,
            logit_softcap=softcap,
            block_size=block,
            segment_ids=ids,
            sinks=sinks,
            alibi_slopes=alibi,
            positions=positions,
        )

    def local(q, k, v, ids, w, positions, *sinks):
        out, vjp = jax.vjp(lambda q, k, v, *sinks: attend(q, k, v, ids, positions, *sinks), q, k, v, *sinks)
        return (out, *vjp(w))

    ids_specs = None if paired is None else ((ids_spec, ids_spec) if paired else ids_spec)
    in_specs, out_specs = (seq, seq, seq, ids_specs, seq, ids_spec), (seq,) * 4
    if sinks:
        in_specs, out_specs = (*in_specs, P()), (*out_specs, P())
    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=out_specs))


def run_case(name, settings, rng):
    B, T = settings.get("B", 2), settings.get("T", 64)
    mesh = make_mesh(settings.get("mesh"))
    n = mesh.shape["context"]
    N, K = settings.get("heads", (4, 4))
    causal, window = settings.get("causal", False), settings.get("window")
    layout, scale, softcap = settings.get("layout", "contiguous"), settings.get("scale"), settings.get("softcap")
    q = rng.standard_normal((B, T, N, H)).astype(np.float32)
    k = rng.standard_normal((B, T, K, H)).astype(np.float32)
    v = rng.standard_normal((B, T, K, H)).astype(np.float32)
    w = rng.standard_normal((B, T, N, H)).astype(np.float32)
    ids = None if "segments" not in settings else segment_ids(settings["segments"], B, T, rng)
    mask = reference_mask(B, T, causal, window, ids)
    sinks = None if "sinks" not in settings else rng.standard_normal(N).astype(np.float32) + 1.0
    alibi, positions, bias = settings.get("alibi"), None, None
    if alibi is not None:  # "global": the layout's positions (the default); "given": others, passed as `positions`
        positions = np.broadcast_to(np.arange(T), (B, T)).astype(np.int32)
        if alibi == "given":  # per packed document and 3 apart: distances no default could give
            starts = np.concatenate([np.ones((B, 1), bool), ids[:, 1:] != ids[:, :-1]], axis=1)
            positions = 3 * (positions - np.maximum.accumulate(np.where(starts, np.arange(T), 0), axis=1))
        distance = np.abs(positions[:, None, :, None] - positions[:, None, None, :]).astype(np.float64)
        bias = -np.asarray(ops.alibi_slopes(N), np.float64)[None, :, None, None] * distance
    want = reference_grads(q, k, v, w, mask, 1 / np.sqrt(H) if scale is None else scale, softcap, sinks, bias)

    def lay(x):
        return None if x is None else to_layout(x, n, layout)

    paired = None if ids is None else isinstance(ids, tuple)
    block = settings.get("block")
    fn = ring_function(
        mesh,
        causal=causal,
        window=window,
        layout=layout,
        scale=scale,
        softcap=softcap,
        block=block,
        paired=paired,
        sinks=sinks is not None,
        alibi=None if alibi is None else ops.alibi_slopes(N),
    )
    given = positions if alibi == "given" else None  # "global": ring_attention's default positions
    args = (lay(q), lay(k), lay(v), lay(ids), lay(w), lay(given), *(() if sinks is None else (sinks,)))
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    got = jax.block_until_ready(compiled(*args))
    seconds = time.perf_counter() - start
    got = [from_layout(np.asarray(x), n, layout) for x in got[:4]] + [np.asarray(x) for x in got[4:]]
    names = ("out", "dq", "dk", "dv", "dsinks")[: len(want)]
    errors = {key: float(np.max(np.abs(g - r))) for key, g, r in zip(names, got, want, strict=True)}
    result = {"errors": errors, "finite": all(bool(np.isfinite(g).all()) for g in got), "seconds": seconds}
    if settings.get("hlo"):
        result["hlo"] = hlo_check(compiled.as_text(), T, B, N, H, n, block)
    if settings.get("segments") == "empty_rows":
        empty = ~mask.any(axis=-1)[:, 0]  # [B, T]
        result["empty_rows"] = int(empty.sum())
        result["empty_rows_zero"] = bool((got[0][empty] == 0).all() and (got[1][empty] == 0).all())
    return result


def hlo_check(ring_text, T, B, N, H, n, block=None):
    """Whether the compiled ring program (forward + backward, given as text) holds any array with a global T x T
    pair of dimensions, and whether the dense path's program for the same causal attention does; the shapes of
    its score tiles (dot outputs [..., queries, keys])."""
    square = re.compile(rf"(?<![0-9]){T}[x,]{T}(?![0-9])")  # HLO "f32[2,4,128,128]" / MLIR "2x4x128x128"
    local = re.compile(rf"(?<![0-9]){T // n}[x,]{T // n}(?![0-9])")  # one [T_local, S_local] tile

    def dense(q, k, v, w):
        out, vjp = jax.vjp(lambda q, k, v: ops.dot_product_attention(q, k, v, mask=ops.causal_mask(T)), q, k, v)
        return (out, *vjp(w))

    tl = T // n
    dots = {re.sub(r"^.*?= \w+\[([0-9,]*)\].*$", r"\1", line) for line in ring_text.splitlines() if " dot(" in line}
    x = jax.ShapeDtypeStruct((B, T, N, H), jnp.float32)
    dense_text = jax.jit(dense).lower(x, x, x, x).compile().as_text()
    return {
        "ring_square": sorted({line.strip()[:200] for line in ring_text.splitlines() if square.search(line)}),
        "ring_local_tile": bool(local.search(ring_text)),
        "ring_collective_permutes": ring_text.count("collective-permute"),
        # the causal zigzag half tiles: all T_local queries x the first T_local / 2 keys, and the reverse
        "ring_half_tiles": all(any(d.endswith(f",{a},{b}") for d in dots) for a, b in ((tl, tl // 2), (tl // 2, tl))),
        "dense_square": bool(square.search(dense_text)),
        "dot_shapes": sorted(dots),
    }


def positions():
    """Per layout, the global positions each of the 8 devices holds (T = 64), as ring_positions gives them."""
    mesh = make_mesh(None)
    result = {}
    for layout in ("contiguous", "zigzag"):
        fn = jax.jit(
            jax.shard_map(
                lambda x, layout=layout: ops.ring_positions(x.shape[0], axis_name="context", layout=layout),
                mesh=mesh,
                in_specs=P("context"),
                out_specs=P("context"),
            )
        )
        result[layout] = np.asarray(fn(jnp.zeros(64))).reshape(8, 8).tolist()
    return result


def main(names):
    cases = {**CASES, **SLOW_CASES}
    names = names or list(CASES)
    rng = np.random.default_rng(0)
    out = {"devices": jax.device_count(), "cases": {}}
    for name in names:
        if name == "positions":
            out["positions"] = positions()
        else:
            out["cases"][name] = run_case(name, cases[name], rng)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
