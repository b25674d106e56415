"""jaxformer: the Transformer in JAX / Flax NNX, done properly.

`jaxformer.ops` holds the pure functional primitives (attention, masks, positions, norms, losses) and imports
nothing from the rest of the package but `jaxformer.checks` (input validation). The layers and where each concept
lives: docs/architecture.md.
"""

__version__ = "0.1.0"
