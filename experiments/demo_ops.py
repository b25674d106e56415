"""A one-minute tour of jaxformer.ops (what `make run` does until the training loop lands).

    python experiments/demo_ops.py

Draws a few masks, checks that blockwise attention equals dense attention (values and gradients) on a causal
GQA problem, and shows the relative-position property of RoPE. Runs in a few seconds on a 2-core CPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxformer import ops


def draw(name: str, mask) -> None:
    rows = np.asarray(mask)[0, 0]
    print(f"{name} ({rows.shape[0]} queries x {rows.shape[1]} keys, # = may attend):")
    for row in rows:
        print("   " + "".join("#" if allowed else "." for allowed in row))
    print()


def main() -> None:
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}\n")
    T = 12
    draw("causal_mask(12)", ops.causal_mask(T))
    draw("sliding_window_mask(12, window=4)", ops.sliding_window_mask(T, window=4))
    draw("causal_mask(4, 12, offset=8): 4 new tokens after 8 cached", ops.causal_mask(4, T, offset=8))
    segments = jnp.array([[0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]])
    draw(
        "segment_mask & causal_mask: three packed sequences",
        ops.combine_masks(ops.segment_mask(segments), ops.causal_mask(T)),
    )
    draw(
        "block_sparse_mask(block_size=2, window_blocks=1, global_blocks=1, random_blocks=1)",
        ops.block_sparse_mask(
            T, T, block_size=2, window_blocks=1, global_blocks=1, random_blocks=1, rng=jax.random.key(0)
        ),
    )

    B, T, N, K, H = 2, 300, 8, 2, 32
    q, k, v = (
        jax.random.normal(key, shape)
        for key, shape in zip(
            jax.random.split(jax.random.key(0), 3), [(B, T, N, H), (B, T, K, H), (B, T, K, H)], strict=True
        )
    )
    dense = lambda q, k, v: ops.dot_product_attention(q, k, v, is_causal=True)
    blockwise = lambda q, k, v: ops.blockwise_attention(q, k, v, is_causal=True, block_size=64)
    loss = lambda fn: jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v))), argnums=(0, 1, 2)))
    (dense_loss, dense_grads), (block_loss, block_grads) = loss(dense)(q, k, v), loss(blockwise)(q, k, v)
    grad_err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(dense_grads, block_grads, strict=True))
    print(f"GQA causal attention, B={B} T={T} N={N} K={K} H={H}:")
    print(
        f"   dense loss {float(dense_loss):.6f}, blockwise loss {float(block_loss):.6f}, "
        f"max |gradient difference| {grad_err:.2e}\n"
    )

    x = jax.random.normal(jax.random.key(1), (1, 1, 1, 64))
    y = jax.random.normal(jax.random.key(2), (1, 1, 1, 64))
    print("RoPE: <rope(q, p + d), rope(k, p)> depends only on d:")
    for d in (0, 3):
        dots = [
            float(jnp.sum(ops.apply_rope(x, jnp.array([p + d])) * ops.apply_rope(y, jnp.array([p]))))
            for p in (0, 10, 100)
        ]
        print(f"   d={d}: " + ", ".join(f"{dot:+.5f}" for dot in dots) + "  (p = 0, 10, 100)")


if __name__ == "__main__":
    main()
