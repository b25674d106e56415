"""A stack of L blocks, applied in a Python loop or scanned over stacked parameters (one block, or the repeating
group of a per-layer pattern such as Gemma's 5 local + 1 global)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import jax
from flax import nnx

from jaxformer.nn.attention import check_cache_room
from jaxformer.nn.constraints import RESIDUAL_AXES, constrain
from jaxformer.nn.remat import remat


class BlockStack(nnx.Module):
    """L blocks built by `make_block(rngs)` (or `make_block(rngs, kinds[i])`); `stack(x, **kwargs)` applies them
    in order.

    With `scan=True` the blocks' parameters are stacked on a leading `[L, ...]` axis (built with `nnx.vmap`) and
    applied with `jax.lax.scan`: XLA compiles one block instead of L, so compile time no longer grows with depth
    (MaxText's `scan_layers`). KV caches, batch statistics and dropout streams are stacked the same way.

    `kinds` (one hashable per layer, e.g. "local" / "global") gives layers different structures. Scanning then
    goes over the repeating group: with period P (the shortest whose first L // P * P layers repeat it) the stack
    holds `layers`, a `_Group` of P blocks stacked `[L // P, ...]`, and `tail`, the L mod P layers left over,
    applied after them unscanned (Gemma 3 1B: 26 layers = 4 groups of 5 local + 1 global, then 2 local layers).
    Without scan, `layers[i]` is layer i whatever its kind.

    `remat` names a rematerialisation policy (nn/remat.py) applied to each block (to each group when a pattern is
    scanned): under `jax.grad` the backward pass recomputes what the policy does not save.

    The residual stream `[B, T, D]` entering the stack and leaving every block is marked with
    `constrain(x, RESIDUAL_AXES)`: a no-op unless a sharded training step has activation hints on (nn/constraints.py).
    """

    def __init__(
        self,
        make_block: Callable[..., nnx.Module],
        num_layers: int,
        *,
        scan: bool,
        rngs: nnx.Rngs,
        remat: str = "none",
        kinds: Sequence[Hashable] | None = None,
    ):
        self.scan, self.num_layers, self.remat = scan, num_layers, remat
        if kinds is not None and len(kinds) != num_layers:
            raise ValueError(f"`kinds` must name each of the {num_layers} layers; got {len(kinds)}.")
        build_layer = (lambda r, i: make_block(r)) if kinds is None else (lambda r, i: make_block(r, kinds[i]))
        self.period = 1 if kinds is None else _period(kinds)
        self.tail = nnx.data(None)
        if not scan:
            self.layers = nnx.List([build_layer(rngs, i) for i in range(num_layers)])
            return
        groups, P = num_layers // self.period, self.period

        @nnx.split_rngs(splits=groups)
        @nnx.vmap(in_axes=(0,), out_axes=0)
        def build(layer_rngs):
            if P == 1:
                return build_layer(layer_rngs, 0)
            return _Group([build_layer(layer_rngs, j) for j in range(P)])

        self.layers = build(rngs)
        if num_layers % P:
            self.tail = nnx.List([build_layer(rngs, i) for i in range(groups * P, num_layers)])

    def __call__(
        self,
        x: jax.Array,
        *args,
        layer_inputs: jax.Array | None = None,
        kv_sources: Sequence[int | None] | None = None,
        **kwargs,
    ) -> jax.Array:
        """Applies every block as `x = block(x, *args, **kwargs)`; args and kwargs are the same for each layer.

        layer_inputs: `[L, ...]`, one slice per layer, passed to block i as `layer_input=layer_inputs[i]` (Gemma 4's
        per-layer inputs). kv_sources: per layer, the index of the earlier layer whose keys and values it attends
        over (`kv=`, from that layer's `return_kv=True`), or None for its own (`ModelConfig.kv_sources`; Gemma 4's
        KV sharing; only without scan).
        """
        x = constrain(x, RESIDUAL_AXES)
        sources = [i for i, s in enumerate(kv_sources or ()) if s is not None]
        if not self.scan:
            wanted = {kv_sources[i] for i in sources}
            shared = {}
            for i, block in enumerate(self.layers):
                extra = {} if layer_inputs is None else {"layer_input": layer_inputs[i]}
                if i in sources:
                    extra["kv"] = shared[kv_sources[i]]
                if i in wanted:
                    extra["return_kv"] = True
                out = self._apply_block(block, x, args, {**kwargs, **extra})
                if i in wanted:
                    out, shared[i] = out
                x = constrain(out, RESIDUAL_AXES)
            return x
        if sources:
            raise ValueError(
                "KV sharing (ModelConfig.num_kv_shared_layers > 0) needs scan_layers=False: a shared layer reads "
                "another layer's keys and values, which a scan over the layers does not hand out."
            )

        # A plain lax.scan over the split state (rather than nnx.scan) also works inside other jax loops, such as
        # the decoding while_loop, whose trace levels NNX transforms refuse to mix.
        # Parameters are read-only here; the rest (KV caches, batch statistics, dropout counters) is carried out.
        graphdef, params, mutable = nnx.split(self.layers, nnx.Param, ...)
        G, P = self.num_layers // self.period, self.period
        scanned_inputs = None
        if layer_inputs is not None:  # [L, ...] -> [G, ...] (one per layer) or [G, P, ...] (one per group member)
            head = layer_inputs[: G * P]
            scanned_inputs = head if P == 1 else head.reshape(G, P, *head.shape[1:])

        def apply(h, scanned):
            layer_state, layer_input = scanned
            block = nnx.merge(graphdef, *layer_state)
            extra = {} if layer_input is None else {"layer_input": layer_input}
            out = constrain(block(h, *args, **kwargs, **extra), RESIDUAL_AXES)
            return out, nnx.state(block, nnx.Not(nnx.Param))

        x, mutable = jax.lax.scan(remat(apply, self.remat, in_scan=True), x, ((params, mutable), scanned_inputs))
        nnx.update(self.layers, mutable)
        for k, block in enumerate(self.tail or ()):
            extra = {} if layer_inputs is None else {"layer_input": layer_inputs[G * P + k]}
            x = constrain(self._apply_block(block, x, args, {**kwargs, **extra}), RESIDUAL_AXES)
        return x

    def _apply_block(self, block: nnx.Module, x: jax.Array, args: tuple, kwargs: dict) -> jax.Array:
        if self.remat == "none":
            return block(x, *args, **kwargs)
        # jax.checkpoint takes a pure function: the block's state goes in and its updated state comes out.
        graphdef, state = nnx.split(block)

        def apply(state, h):
            block = nnx.merge(graphdef, state)
            return block(h, *args, **kwargs), nnx.state(block)

        y, state = remat(apply, self.remat)(state, x)
        nnx.update(block, state)
        return y

    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> None:
        """Gives every block's self-attention an empty KV cache (stacked `[L, ...]` when scanned)."""
        if not self.scan:
            for block in self.layers:
                block.init_cache(batch_size, max_len, dtype)
            return

        @nnx.vmap(in_axes=(0,), out_axes=0)
        def init(block):
            block.init_cache(batch_size, max_len, dtype)

        init(self.layers)
        for block in self.tail or ():
            block.init_cache(batch_size, max_len, dtype)

    def _attentions(self):
        """(self-attention, whether its cache is stacked [L // P, ...]) of every layer, in order."""
        if not self.scan:
            yield from ((block.self_attention, False) for block in self.layers)
            return
        group = [self.layers] if self.period == 1 else list(self.layers.blocks)
        yield from ((block.self_attention, True) for block in group)
        yield from ((block.self_attention, False) for block in self.tail or ())

    def cache_index(self, num_tokens: int | None = None) -> jax.Array:
        """The number of tokens cached so far, `[B]` (the same in every layer). With `num_tokens`, also checks
        that so many more fit the cache (a ValueError naming the overflow, when the index is known); ring buffers
        (sliding-window layers, nn/attention.py) never overflow, so the first other layer's cache is checked."""
        attentions = list(self._attentions())
        attention, stacked = attentions[0]
        if attention.cache_index is None:
            raise ValueError("decode=True needs a KV cache: call init_cache(batch_size, max_len) first.")
        index = attention.cache_index[...]
        index = index[0] if stacked else index
        full = [a for a, _ in attentions if not a.is_ring_cache]
        if num_tokens is not None and full:
            check_cache_room(index, num_tokens, full[0].cached_key.shape[-3])
        return index


def _period(kinds: Sequence[Hashable]) -> int:
    """The shortest P whose first L // P * P kinds repeat kinds[:P] (the layers after them form the tail)."""
    L = len(kinds)
    return next(p for p in range(1, L + 1) if all(kinds[i] == kinds[i % p] for i in range(L // p * p)))


class _Group(nnx.Module):
    """The P consecutive blocks of one period of a per-layer pattern: the unit a patterned stack scans over."""

    def __init__(self, blocks: list[nnx.Module]):
        self.blocks = nnx.List(blocks)

    def __call__(self, x: jax.Array, *args, layer_input: jax.Array | None = None, **kwargs) -> jax.Array:
        """Applies the P blocks in order; layer_input `[P, ...]` gives block j `layer_input[j]`."""
        for j, block in enumerate(self.blocks):
            extra = {} if layer_input is None else {"layer_input": layer_input[j]}
            x = constrain(block(x, *args, **kwargs, **extra), RESIDUAL_AXES)
        return x

    def init_cache(self, batch_size: int, max_len: int, dtype=None) -> None:
        for block in self.blocks:
            block.init_cache(batch_size, max_len, dtype)
