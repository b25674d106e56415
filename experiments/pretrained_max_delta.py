"""How far jaxformer's outputs are from transformers' on the committed checkpoint fixtures (float32, CPU).

    python experiments/pretrained_max_delta.py

For each fixture in tests/fixtures/pretrained/ (made by experiments/make_pretrained_fixtures.py with transformers),
loads it with `pretrained.from_pretrained` and prints max |jaxformer - transformers| of what its reference.npz
holds: logits (decoders, ViT classifier), MLM logits on real tokens (BERT), hidden states and pooler (ViTModel).
No torch needed. The table in docs/pretrained.md comes from this script.
"""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np

from jaxformer import pretrained

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "pretrained"


def deltas(name: str) -> dict[str, float]:
    ref = dict(np.load(FIXTURES / name / "reference.npz"))
    model = pretrained.from_pretrained(FIXTURES / name)
    gap = lambda got, want: float(np.abs(np.asarray(got) - want).max())
    if name.startswith("vit"):
        images = jnp.asarray(ref["pixel_values"]).transpose(0, 2, 3, 1)  # NCHW -> NHWC
        if name == "vit":
            return {"logits": gap(model(images), ref["logits"])}
        hidden = model.encode(images)
        return {"hidden": gap(hidden, ref["hidden"]), "pooled": gap(model.pool(hidden), ref["pooled"])}
    if name == "bert":
        valid = ref["attention_mask"].astype(bool)
        out = model(
            jnp.asarray(ref["input_ids"]), valid=jnp.asarray(valid), token_types=jnp.asarray(ref["token_type_ids"])
        )
        logits = np.asarray(model.mlm_logits(out.hidden))
        return {"MLM logits (real tokens)": gap(logits[valid], ref["logits"][valid])}
    return {"logits": gap(model(jnp.asarray(ref["input_ids"])), ref["logits"])}


def main() -> None:
    for d in sorted(p for p in FIXTURES.iterdir() if p.is_dir()):
        for what, value in deltas(d.name).items():
            print(f"{d.name:10s} {what:26s} {value:.1e}")


if __name__ == "__main__":
    main()
