"""Helpers shared by the model tests."""

import math

import jax
import jax.numpy as jnp
from flax import nnx


def param_count(model, keep=lambda path: True) -> int:
    """Parameters of `model` (shared ones once), counting only those whose path `keep` accepts."""
    return sum(math.prod(v.shape) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param)) if keep(path))


def scanned_copy(model):
    """`model` rebuilt with `scan_layers=True` and given `model`'s state, its L blocks stacked on a leading axis.

    Built with `nnx.eval_shape`: compiling the vmapped initialisers would cost seconds and every value is
    replaced anyway.
    """
    cls, config = type(model), model.config.replace(scan_layers=True)
    scanned = nnx.eval_shape(lambda: cls(config, rngs=nnx.Rngs(0)))
    values = nnx.to_pure_dict(nnx.state(model))
    layers = values["blocks"]["layers"]
    values["blocks"]["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in sorted(layers)])
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, values)
    nnx.update(scanned, state)
    assert scanned.blocks.scan and param_count(scanned) == param_count(model)
    return scanned


def grouped_scanned_copy(model):
    """`model` (looped, with per-layer kinds: `layer_types`, `dense_layers`) rebuilt with `scan_layers=True` and
    its parameters: the scanned stack holds `blocks.layers.blocks[j]` stacked over the L // P groups (layer
    g * P + j in row g), then `blocks.tail[k]` (layer L // P * P + k)."""
    config = model.config.replace(scan_layers=True)
    scanned = nnx.eval_shape(lambda: type(model)(config, rngs=nnx.Rngs(0)))
    L, P = config.num_layers, scanned.blocks.period
    groups = L // P
    values = nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Cache)))
    layers = values["blocks"]["layers"]
    stack = lambda rows: jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in rows])
    values["blocks"] = {"layers": {"blocks": {j: stack(range(j, groups * P, P)) for j in range(P)}}}
    if L % P:
        values["blocks"]["tail"] = {k: layers[groups * P + k] for k in range(L % P)}
    state = nnx.state(scanned)
    nnx.replace_by_pure_dict(state, values)
    nnx.update(scanned, state)
    assert scanned.blocks.scan and param_count(scanned) == param_count(model)
    return scanned
