"""Adding LoRA adapters to a built model, listing them and merging them (the adapter itself: nn/lora.py).

Adapters attach to the weights of every `MultiHeadAttention` ("w_q", "w_k", "w_v", "w_o") and `FeedForward`
("w_gate", "w_up", "w_in", "w_out") in the model, by name; the output head and the embeddings are never adapted
("all-linear" in peft leaves the head out too). In a scanned stack (`scan_layers=True`) each adapter is stacked
like its weight, `[L, ...]`, so the scan applies layer i's adapter with layer i's weights.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from jaxformer import checks, sharding
from jaxformer.models.stack import BlockStack
from jaxformer.nn import FeedForward, MultiHeadAttention, logical_axes
from jaxformer.nn.lora import FUSED_QKV, LoRA

ATTENTION_TARGETS = ("w_q", "w_k", "w_v", "w_o")
FFN_TARGETS = ("w_gate", "w_up", "w_in", "w_out")
TARGETS = ATTENTION_TARGETS + FFN_TARGETS

# Each weight's input (contracted) axes, by module kind; its remaining axes are the output axes.
_IN_AXES = {"w_q": 1, "w_k": 1, "w_v": 1, "w_o": 2, "w_gate": 1, "w_up": 1, "w_in": 1, "w_out": 1}


def add_adapters(
    model: nnx.Module,
    *,
    rank: int,
    alpha: float,
    targets: str | Sequence[str] = "all-linear",
    dropout: float = 0.0,
    use_rslora: bool = False,
    rank_pattern: Mapping[str, int] | None = None,
    alpha_pattern: Mapping[str, float] | None = None,
    fused_qkv: bool = False,
    param_dtype=jnp.float32,
    rngs: nnx.Rngs,
) -> nnx.Module:
    """Gives `model` (in place; also returned) a LoRA adapter on each targeted weight, with B = 0 (the outputs are
    unchanged until trained).

    Args:
      rank, alpha: every adapter's rank and scale numerator (scale = alpha / rank, or alpha / sqrt(rank) with
        `use_rslora`), unless a pattern names the weight.
      targets: "all-linear" (every attention and feed-forward weight) or a sequence of keys, each a weight name
        from `TARGETS` or, as peft's target_modules, a regular expression matched against the end of a weight's
        path ("self_attention/w_q", "blocks/layers/0/ffn/w_out"). Each key must match some weight.
      dropout: dropout rate on each adapter's input (peft's lora_dropout).
      rank_pattern, alpha_pattern: per-weight exceptions, as peft spells them: keys matched like `targets`
        (in a scanned stack a path has no layer index). Each key must match some adapted weight.
      fused_qkv: when q, k and v are all targeted, one adapter over their concatenation (`FUSED_QKV`; one A
        shared by q, k and v, B's output heads q | k | v), as peft adapts GPT-2's fused c_attn.
      param_dtype: the adapters' dtype (float32 by default, whatever the base weights' dtype).
    """
    rank = checks.check_positive_int("rank", rank)
    alpha = checks.check_positive_real("alpha", alpha)
    dropout = checks.check_rate("dropout", dropout)
    checks.check_flag("use_rslora", use_rslora)
    checks.check_flag("fused_qkv", fused_qkv)
    keys = _check_targets(targets)
    rank_pattern, alpha_pattern = dict(rank_pattern or {}), dict(alpha_pattern or {})
    for key, value in rank_pattern.items():
        checks.check_positive_int(f"rank_pattern[{key!r}]", value)
    for key, value in alpha_pattern.items():
        checks.check_positive_real(f"alpha_pattern[{key!r}]", value)
    if list(adapters(model)):
        raise ValueError("The model has LoRA adapters already; merge them (lora.merge) before adding new ones.")
    matched = set()

    def matches(kind: str, key: str, path: str) -> bool:
        if re.fullmatch(rf"(.*/)?(?:{key})", path) is None:
            return False
        matched.add((kind, key))
        return True

    def settings(path: str) -> tuple[int, float] | None:
        """(rank, alpha) of the weight at `path`, None when it is not targeted."""
        if keys is not None and not [key for key in keys if matches("targets", key, path)]:
            return None
        ranks = [v for k, v in rank_pattern.items() if matches("rank_pattern", k, path)]
        alphas = [v for k, v in alpha_pattern.items() if matches("alpha_pattern", k, path)]
        return (ranks or [rank])[0], (alphas or [alpha])[0]  # the first matching key, as in peft

    # Plan every adapter first (and check the arguments against it), so that a bad argument changes nothing.
    stacks = [(path, node) for path, node in nnx.iter_graph(model) if isinstance(node, BlockStack) and node.scan]
    stacked = [(*path, "layers") for path, _ in stacks]
    plan = {}  # module path -> {name: adapter settings}
    for path, module in nnx.iter_graph(model):
        if new := _module_adapters(module, "/".join(str(k) for k in path), fused_qkv, settings):
            plan[path] = new
    if not plan:
        raise ValueError(f"No weight of this model matches targets={targets!r}.")
    every = [("targets", k) for k in keys or ()] + [("rank_pattern", k) for k in rank_pattern]
    every += [("alpha_pattern", k) for k in alpha_pattern]
    unused = [f"{kind}[{key!r}]" for kind, key in every if (kind, key) not in matched]
    if unused:
        raise ValueError(
            f"{', '.join(unused)} match no weight of this model (paths look like 'blocks/layers/0/ffn/w_out'; "
            f"the names are {TARGETS})."
        )

    def attach(root: nnx.Module, prefix: tuple, streams: nnx.Rngs) -> None:
        for sub, module in nnx.iter_graph(root):
            path = (*prefix, *sub)
            if path not in plan or (not prefix and any(path[: len(s)] == s for s in stacked)):
                continue
            module.lora = nnx.Dict({
                name: LoRA(in_shape, out_shape, rank=r, alpha=a, use_rslora=use_rslora, in_axes=in_axes,
                           out_axes=out_axes, dropout_rate=dropout, param_dtype=param_dtype, rngs=streams)
                for name, (in_shape, out_shape, in_axes, out_axes, r, a) in plan[path].items()
            })  # fmt: skip

    for (_, stack), prefix in zip(stacks, stacked, strict=True):  # in a vmap: adapters stacked [L // P, ...]
        attach_stacked = nnx.vmap(lambda layers, streams, prefix: attach(layers, prefix, streams), in_axes=(0, 0, None))
        attach_stacked(stack.layers, rngs.split(stack.num_layers // stack.period), prefix)
    attach(model, (), rngs)
    _place_like_weights(model)
    return model


def adapters(model: nnx.Module) -> Iterator[tuple[str, nnx.Module, str, LoRA]]:
    """(path of the weight, e.g. "blocks/layers/0/ffn/w_out", the module holding it, its name, its adapter) for
    every adapter in `model`; a fused adapter's path ends in `FUSED_QKV`."""
    for path, module in nnx.iter_graph(model):
        table = getattr(module, "lora", None)
        if isinstance(module, MultiHeadAttention | FeedForward) and table is not None:
            for name in sorted(table):
                yield "/".join(str(k) for k in (*path, name)), module, name, table[name]


def merge(model: nnx.Module) -> nnx.Module:
    """Folds every adapter into its weight, W <- W + scale * A B (computed in float32, stored in W's dtype), and
    removes the adapters (in place; also returned): no `nnx.LoRAParam` is left."""
    for _, module, name, adapter in list(adapters(model)):
        delta = adapter.weight_delta()
        if name == FUSED_QKV:
            N, K = module.num_heads, module.num_kv_heads
            parts = {"w_q": delta[..., :N, :], "w_k": delta[..., N : N + K, :], "w_v": delta[..., N + K :, :]}
        else:
            parts = {name: delta}
        for weight_name, part in parts.items():
            weight = getattr(module, weight_name)
            weight[...] = (weight[...].astype(jnp.float32) + part).astype(weight.dtype)
    for _, module, _, _ in list(adapters(model)):
        module.lora = None
    return model


def count(model: nnx.Module) -> int:
    """The number of adapter parameters (every A and B)."""
    return sum(a.a.size + a.b.size for *_, a in adapters(model))


def _check_targets(targets) -> tuple[str, ...] | None:
    """The target keys, None for "all-linear"."""
    if isinstance(targets, str):
        if targets != "all-linear":
            raise ValueError(f"`targets` must be 'all-linear' or a sequence of names / patterns; got {targets!r}.")
        return None
    keys = tuple(targets)
    if not keys or not all(isinstance(k, str) and k for k in keys):
        raise ValueError(
            f"`targets` must be 'all-linear' or a non-empty sequence of names from {TARGETS}; got {keys!r}."
        )
    for key in keys:
        try:
            re.compile(key)
        except re.error as e:
            raise ValueError(f"`targets` entry {key!r} is not a regular expression: {e}.") from None
    return keys


def _module_adapters(module, path, fused_qkv, settings) -> dict:
    """{name: (in_shape, out_shape, in_axes, out_axes, rank, alpha)} of the adapters `module` gets."""
    if not isinstance(module, MultiHeadAttention | FeedForward):
        return {}
    out = {}
    for name in ATTENTION_TARGETS if isinstance(module, MultiHeadAttention) else FFN_TARGETS:
        weight = getattr(module, name, None)
        if weight is None or (setting := settings(f"{path}/{name}")) is None:
            continue
        n_in, axes = _IN_AXES[name], logical_axes(weight)
        shape = weight.shape[-len(axes) :]  # without a scanned stack's leading axis
        out[name] = (shape[:n_in], shape[n_in:], axes[:n_in], axes[n_in:], *setting)
    qkv = ("w_q", "w_k", "w_v")
    # Fused only in self-attention: a cross-attention's k and v read the context, not x.
    if fused_qkv and all(n in out for n in qkv) and not path.endswith("cross_attention"):
        (in_shape, q_out, in_axes, _, r, a), k_out, v_out = out["w_q"], out["w_k"][1], out["w_v"][1]
        if len({out[n][4:] for n in qkv}) > 1:
            raise ValueError(f"fused_qkv: {path}'s q, k and v share one adapter, so one rank and alpha; got "
                             f"{[out[n][4:] for n in qkv]}.")  # fmt: skip
        heads = q_out[0] + k_out[0] + v_out[0]
        heads_axis = "heads" if q_out[0] == k_out[0] else None
        for n in qkv:
            del out[n]
        out[FUSED_QKV] = (in_shape, (heads, q_out[1]), in_axes, (heads_axis, "head_dim"), r, a)
    return out


def _place_like_weights(model: nnx.Module) -> None:
    """Puts each adapter (A, B and its dropout state) on the mesh of the weight it adapts, A split like the
    weight's input axes and B like its output axes, when that weight is a placed array with a NamedSharding (a
    model from `pretrained.from_pretrained`, or one built into its shards): so that a jitted step sees every
    input committed to one mesh and does not compile again once its outputs come back placed."""
    for _, module, name, adapter in adapters(model):
        value = getattr(module, "w_q" if name == FUSED_QKV else name)[...]
        if isinstance(value, jax.core.Tracer) or not isinstance(getattr(value, "sharding", None), NamedSharding):
            continue
        state, mesh = nnx.state(adapter), value.sharding.mesh
        if set(sharding.MESH_AXES) <= set(mesh.axis_names):
            specs = sharding.param_specs(state, mesh)
        else:  # another mesh (from_pretrained's one-device placement): replicated on it
            specs = jax.tree.map(lambda _: PartitionSpec(), state)
        nnx.update(adapter, jax.device_put(state, sharding.named(mesh, specs)))
