"""Build Hugging Face ``peft`` LoRA adapters for the tiny pretrained fixtures + reference outputs as test fixtures.

What it makes
-------------
``tests/fixtures/lora/<name>/`` for seven adapters and ``tests/fixtures/lora/README.md``.  No new base models: each
adapter sits on one of the existing tiny random checkpoints in ``tests/fixtures/pretrained/<base>/`` (made by
``experiments/make_pretrained_fixtures.py``), loaded with ``AutoModelForCausalLM.from_pretrained(dir,
dtype=torch.float32)``.  Each fixture directory holds

``adapter/``       exactly what ``peft_model.save_pretrained(adapter/)`` writes: ``adapter_config.json`` and
                   ``adapter_model.safetensors`` (peft's model card ``README.md`` is deleted).  Tensor names are
                   ``base_model.model.<module path in the base checkpoint>.lora_A.weight`` [r, in] and
                   ``...lora_B.weight`` [out, r] (nn.Linear layout, also for GPT-2's Conv1D modules, whose base
                   weights are [in, out]); DoRA adds ``...lora_magnitude_vector`` [out]
``reference.npz``  see below

============================  ========  ======================================================================
name                          base      LoraConfig (all ``lora_dropout=0``, ``bias="none"``)
============================  ========  ======================================================================
``gpt2_all``                  gpt2      r 4, alpha 8, ``"all-linear"`` (= every c_attn, c_proj, c_fc: Conv1D
                                        modules; peft warns and switches ``fan_in_fan_out`` to True)
``llama_all``                 llama     r 4, alpha 8, ``"all-linear"`` (q, k, v, o, gate, up, down projections)
``llama_qv_rslora``           llama     r 2, alpha 4, ``["q_proj", "v_proj"]``, ``use_rslora`` (scaling
                                        alpha / sqrt(r) = 2.83, not alpha / r = 2); ``task_type`` None (the others
                                        are CAUSAL_LM), so adapter_config.json has peft's ``auto_mapping``
``llama_patterns``            llama     r 4, alpha 8, the 7 projections by name, ``rank_pattern``
                                        ``{"down_proj": 2}``, ``alpha_pattern`` ``{"o_proj": 16}``
``gemma2_all``                gemma2    r 4, alpha 8, ``"all-linear"`` (3 layers: 21 modules, so peft saves
                                        ``target_modules`` as the 7 suffixes, not full paths)
``qwen2_all``                 qwen2     r 4, alpha 8, ``"all-linear"`` (q/k/v have biases; LoRA leaves them)
``llama_dora``                llama     r 2, alpha 4, ``["q_proj"]``, ``use_dora``: a BAD adapter for jaxformer,
                                        which must refuse DoRA
============================  ========  ======================================================================

peft creates the adapters (``get_peft_model``, default init: A kaiming-uniform, B zero, DoRA magnitude = the row
norms of W), then every ``lora_A`` / ``lora_B`` weight is overwritten with ``LORA_STD * N(0, 1)`` (torch seed
2000 + the fixture's index in ``NAMES``; module order) so that the adapter is far from the identity (asserted:
max |logits - base_logits| > 1e-2).  The DoRA magnitude vector keeps peft's init (the norms of the BASE rows), so
with the new A/B it no longer equals ||W + scale B A|| row-wise and matters.  peft stores the config's
``target_modules`` as a set (from "all-linear" or a list), so adapter_config.json would list them in hash order;
the script sets them to a sorted list before saving so that reruns give identical files.

The script also asserts: every adapted module is a ``<path>.weight`` of the base checkpoint (``lm_head`` is
never adapted) and each A / B shape is [r, in] / [out, r] with the per-module r of ``rank_pattern`` (so
``llama_patterns``' down_proj tensors have rank 2); ``PeftModel.from_pretrained(base, adapter/)`` reproduces
``logits``; ``merge_and_unload`` agrees with it to 1e-4; and each knob a fixture is about changes the logits by
> 1e-2 when removed from adapter_config.json and the adapter reloaded (``use_rslora``, ``alpha_pattern``,
``use_dora``), while ``fan_in_fan_out: false`` on gpt2 changes nothing (peft forces it back to True for Conv1D).

reference.npz
-------------
``input_ids``      int32 [2, 7]: fixed random ids in ``[0, vocab)`` of the base
``logits``         float32 [2, 7, vocab]: the PeftModel's logits (adapter active, no merge)
``merged_logits``  float32 [2, 7, vocab]: logits of ``peft_model.merge_and_unload()``
``base_logits``    float32 [2, 7, vocab]: the base model's logits, before the adapter is attached
``meta``           0-d unicode array, JSON: ``base`` (fixture name, e.g. "gpt2"), ``base_dir``
                   ("tests/fixtures/pretrained/gpt2"), ``lora_config`` (the LoraConfig arguments given),
                   ``modules`` ({module path: {"r", "lora_alpha", "scaling", "fan_in_fan_out"}} as peft built
                   them), ``warnings`` (what get_peft_model warned), ``knob_checks`` (the adapter_config.json
                   edits tried and their max |logits diff|), ``seed``, ``lora_std``, ``versions``

Requirements / regenerating
---------------------------
Needs the ``hf`` extra (``pip install transformers torch==2.13.0 peft``); never needed by the default tests, which
only read the files.  Made with peft 0.21.2, transformers 5.25.0, torch 2.13.0 (CPU, float32).  Regenerate all
(replaces ``tests/fixtures/lora/``'s fixtures; run from anywhere)::

    .venv/bin/python experiments/make_lora_fixtures.py

or only the named fixtures (their directories are replaced, the others left as they are; README.md always lists
all that exist)::

    .venv/bin/python experiments/make_lora_fixtures.py gpt2_all llama_dora

The output is deterministic (fixed torch seeds, CPU float32).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np
import peft
import torch
import transformers
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors import safe_open
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "lora"
BASES = Path("tests") / "fixtures" / "pretrained"  # relative to ROOT: peft saves it as base_model_name_or_path

BATCH, SEQ = 2, 7
LORA_STD = 0.1  # every lora_A / lora_B entry is LORA_STD * N(0, 1)
MAX_TOTAL_KIB = 600  # size limit of tests/fixtures/lora
PREFIX = "base_model.model."  # peft's prefix of the base model's module paths in adapter_model.safetensors
ALL = "all-linear"
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# name -> (base fixture, LoraConfig arguments); fixture i gets seed 2000 + i, whichever fixtures a run rebuilds
FIXTURES: dict[str, tuple[str, dict]] = {
    "gpt2_all": ("gpt2", {"r": 4, "lora_alpha": 8, "target_modules": ALL}),
    "llama_all": ("llama", {"r": 4, "lora_alpha": 8, "target_modules": ALL}),
    "llama_qv_rslora": (
        "llama",
        {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "use_rslora": True, "task_type": None},
    ),
    "llama_patterns": (
        "llama",
        {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": PROJ,
            "rank_pattern": {"down_proj": 2},
            "alpha_pattern": {"o_proj": 16},
        },
    ),
    "gemma2_all": ("gemma2", {"r": 4, "lora_alpha": 8, "target_modules": ALL}),
    "qwen2_all": ("qwen2", {"r": 4, "lora_alpha": 8, "target_modules": ALL}),
    "llama_dora": ("llama", {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "use_dora": True}),
}
NAMES = list(FIXTURES)
# adapter_config.json edits that must change the logits (> 1e-2) or, for "inert" ones, must not (< 1e-6)
KNOBS: dict[str, list[tuple[str, dict, bool]]] = {
    "gpt2_all": [("fan_in_fan_out false (inert: peft forces True for Conv1D)", {"fan_in_fan_out": False}, False)],
    "llama_qv_rslora": [("use_rslora", {"use_rslora": False}, True)],
    "llama_patterns": [("alpha_pattern", {"alpha_pattern": {}}, True)],
    "llama_dora": [("use_dora", {"use_dora": False}, True)],
}


def load_base(base: str) -> torch.nn.Module:
    # relative path (cwd = ROOT): peft records it as base_model_name_or_path, the same on every machine
    return AutoModelForCausalLM.from_pretrained(str(BASES / base), dtype=torch.float32).eval()


@torch.no_grad()
def logits_of(model: torch.nn.Module, input_ids: np.ndarray) -> np.ndarray:
    return model(input_ids=torch.from_numpy(input_ids).long()).logits.float().numpy()


def checkpoint_shapes(base: str) -> dict[str, list[int]]:
    """Every tensor name -> shape in the base checkpoint's safetensors (llama's are sharded)."""
    shapes = {}
    for path in sorted((ROOT / BASES / base).glob("*.safetensors")):
        with safe_open(str(path), "np") as f:
            shapes |= {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    return shapes


def lora_modules(pm: torch.nn.Module) -> dict[str, dict]:
    """What peft built: {base module path: r, lora_alpha, scaling, fan_in_fan_out}."""
    out = {}
    for name, mod in pm.named_modules():
        if isinstance(mod, LoraLayer):
            assert name.startswith(PREFIX), name
            out[name[len(PREFIX) :]] = {
                "r": mod.r["default"],
                "lora_alpha": mod.lora_alpha["default"],
                "scaling": float(mod.scaling["default"]),
                "fan_in_fan_out": bool(getattr(mod, "fan_in_fan_out", False)),
            }
    return dict(sorted(out.items()))


def check_tensors(name: str, adapter: Path, modules: dict[str, dict], base_shapes: dict[str, list[int]]) -> list:
    """Adapter tensors: names, [r, in] / [out, r] shapes against the base weights, rank_pattern ranks applied."""
    with safe_open(str(adapter / "adapter_model.safetensors"), "np") as f:
        tensors = {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    expected = set()
    for path, info in modules.items():
        assert not path.endswith("lm_head"), f"{name}: lm_head adapted"
        w = base_shapes[f"{path}.weight"]  # KeyError: the module is not a weight of the base checkpoint
        d_out, d_in = (w[1], w[0]) if info["fan_in_fan_out"] else (w[0], w[1])  # Conv1D weights are [in, out]
        r = info["r"]
        assert tensors[f"{PREFIX}{path}.lora_A.weight"] == ([r, d_in], "F32"), (name, path)
        assert tensors[f"{PREFIX}{path}.lora_B.weight"] == ([d_out, r], "F32"), (name, path)
        expected |= {f"{PREFIX}{path}.lora_A.weight", f"{PREFIX}{path}.lora_B.weight"}
        if name == "llama_dora":
            assert tensors[f"{PREFIX}{path}.lora_magnitude_vector"] == ([d_out], "F32"), (name, path)
            expected.add(f"{PREFIX}{path}.lora_magnitude_vector")
        if name == "llama_patterns":
            assert r == (2 if path.endswith("down_proj") else 4), (path, r)
            assert info["lora_alpha"] == (16 if path.endswith("o_proj") else 8), (path, info)
    assert set(tensors) == expected, (name, sorted(set(tensors) ^ expected))
    return [(k, *tensors[k]) for k in sorted(tensors)]


def knob_notes(name: str, base: str, adapter: Path, input_ids: np.ndarray, logits: np.ndarray) -> str:
    """Reload the adapter with one adapter_config.json field changed; it must move the logits (or, inert, not)."""
    notes = []
    for label, changes, matters in KNOBS.get(name, []):
        with tempfile.TemporaryDirectory() as tmp:
            alt = Path(tmp) / "adapter"
            shutil.copytree(adapter, alt)
            cfg = json.loads((alt / "adapter_config.json").read_text()) | changes
            (alt / "adapter_config.json").write_text(json.dumps(cfg))
            with warnings.catch_warnings():  # use_dora false: "unexpected keys" (the magnitude vector)
                warnings.simplefilter("ignore")
                diff = float(
                    np.abs(logits_of(PeftModel.from_pretrained(load_base(base), alt), input_ids) - logits).max()
                )
        assert diff > 1e-2 if matters else diff < 1e-6, f"{name}: {label}: max |logits diff| {diff}"
        notes.append(f"without {label}: {diff:.3f}" if matters else f"{label}: {diff:.1e}")
    return "; ".join(notes)


def build(name: str, seed: int) -> dict:
    base, kwargs = FIXTURES[name]
    kwargs = {"task_type": "CAUSAL_LM"} | kwargs
    torch.manual_seed(seed)
    model = load_base(base)
    vocab = model.config.vocab_size
    input_ids = torch.randint(0, vocab, (BATCH, SEQ), dtype=torch.int32).numpy()
    base_logits = logits_of(model, input_ids)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pm = get_peft_model(model, LoraConfig(lora_dropout=0.0, bias="none", **kwargs)).eval()
    warned = sorted({str(w.message) for w in caught if "is_gradient_checkpointing" not in str(w.message)})
    with torch.no_grad():
        for pname, p in pm.named_parameters():
            if ".lora_A." in pname or ".lora_B." in pname:
                p.copy_(LORA_STD * torch.randn(p.shape))
    logits = logits_of(pm, input_ids)
    cfg = pm.peft_config["default"]
    if isinstance(cfg.target_modules, set):  # a set is saved in hash order: sort, for reproducible files
        cfg.target_modules = sorted(cfg.target_modules)

    d = OUT / name
    adapter = d / "adapter"
    pm.save_pretrained(str(adapter))
    (adapter / "README.md").unlink(missing_ok=True)  # peft's model card
    assert sorted(f.name for f in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]

    modules = lora_modules(pm)
    tensors = check_tensors(name, adapter, modules, checkpoint_shapes(base))
    reloaded = PeftModel.from_pretrained(load_base(base), str(adapter)).eval()
    reload_diff = float(np.abs(logits_of(reloaded, input_ids) - logits).max())
    assert reload_diff < 1e-6, f"{name}: reloaded adapter differs by {reload_diff}"
    note = knob_notes(name, base, adapter, input_ids, logits)

    merged_logits = logits_of(pm.merge_and_unload(), input_ids)
    delta = float(np.abs(logits - base_logits).max())
    merge_diff = float(np.abs(logits - merged_logits).max())
    assert delta > 1e-2, f"{name}: the adapter does not change the logits ({delta})"
    assert merge_diff < 1e-4, f"{name}: merged logits differ by {merge_diff}"

    meta = {
        "name": name,
        "base": base,
        "base_dir": str(BASES / base),
        "lora_config": kwargs,
        "modules": modules,
        "warnings": warned,
        "knob_checks": note,
        "seed": seed,
        "lora_std": LORA_STD,
        "versions": {"peft": peft.__version__, "transformers": transformers.__version__, "torch": torch_version()},
    }
    ref = {
        "input_ids": input_ids,
        "logits": logits,
        "merged_logits": merged_logits,
        "base_logits": base_logits,
        "meta": np.array(json.dumps(meta, sort_keys=True)),
    }
    for key, val in ref.items():
        assert val.dtype.kind == "U" or np.isfinite(val).all(), (name, key)
    assert ref["input_ids"].dtype == np.int32 and logits.dtype == merged_logits.dtype == base_logits.dtype == np.float32
    np.savez(d / "reference.npz", **ref)
    for f in d.rglob("*"):
        if f.is_file():
            f.chmod(0o644)  # safetensors writes 0600
    return {
        "name": name,
        "base": base,
        "kwargs": kwargs,
        "delta": delta,
        "merge_diff": merge_diff,
        "n_modules": len(modules),
        "n_tensors": len(tensors),
        "saved_targets": json.loads((adapter / "adapter_config.json").read_text())["target_modules"],
        "warned": warned,
        "note": note,
        "kib": dir_size(d) / 1024,
    }


def torch_version() -> str:
    return torch.__version__.split("+")[0]


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def readme_row(info: dict) -> str:
    kw = ", ".join(f"{k}={v!r}" for k, v in info["kwargs"].items())
    targets = info["saved_targets"]
    saved = f"{len(targets)} full module paths" if any("." in t for t in targets) else f"suffixes {targets}"
    lines = [
        f"- `{info['name']}` (base `{info['base']}`): LoraConfig({kw}).",
        f"{info['n_modules']} adapted modules, {info['n_tensors']} tensors;",
        f"adapter_config.json target_modules: {saved}.",
        f"max |logits-base_logits| = {info['delta']:.3f}, max |logits-merged_logits| = {info['merge_diff']:.1e}.",
    ]
    if info["note"]:
        lines.append(f"Reloaded with adapter_config.json changed, max |logits diff|: {info['note']}.")
    if info["warned"]:
        lines.append("peft warns: " + " / ".join(f'"{w}"' for w in info["warned"]))
    if info["name"] == "llama_dora":
        lines.append("DoRA: jaxformer must refuse this adapter.")
    return textwrap.fill(" ".join(lines), width=116, subsequent_indent="  ", break_on_hyphens=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"fixtures to (re)build (default: all): {NAMES}")
    selected = parser.parse_args(argv).names or NAMES
    if unknown := [name for name in selected if name not in NAMES]:
        parser.error(f"unknown fixtures {unknown}; choose from {NAMES}")
    os.chdir(ROOT)  # base models are loaded by relative path (see load_base)
    # transformers' own deprecation, triggered by peft's gradient-checkpointing probe: not about the adapter
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()
    OUT.mkdir(parents=True, exist_ok=True)
    for name in selected:  # only the fixtures being rebuilt; the others stay as they are
        if (OUT / name).exists():
            shutil.rmtree(OUT / name)

    for name in [n for n in NAMES if n in selected]:
        info = build(name, 2000 + NAMES.index(name))
        print(
            f"{name:16s} base={info['base']:7s} modules={info['n_modules']:2d} tensors={info['n_tensors']:2d} "
            f"max|logits-base|={info['delta']:.3f} max|logits-merged|={info['merge_diff']:.1e}"
            + (f" ({info['note']})" if info["note"] else "")
            + f"  {info['kib']:.1f} KiB"
        )
        for w in info["warned"]:
            print(f"{'':17s}warning: {w}")

    rows = []
    for name in NAMES:  # README lists every fixture present, rebuilt now or earlier (from its reference.npz)
        if not (OUT / name / "reference.npz").exists():
            continue
        with np.load(OUT / name / "reference.npz") as ref:
            meta = json.loads(str(ref["meta"]))
            logits, base_logits, merged = ref["logits"], ref["base_logits"], ref["merged_logits"]
        cfg = json.loads((OUT / name / "adapter" / "adapter_config.json").read_text())
        with safe_open(str(OUT / name / "adapter" / "adapter_model.safetensors"), "np") as f:
            n_tensors = len(list(f.keys()))
        info = {
            "name": name,
            "base": meta["base"],
            "kwargs": meta["lora_config"],
            "n_modules": len(meta["modules"]),
            "n_tensors": n_tensors,
            "saved_targets": cfg["target_modules"],
            "delta": float(np.abs(logits - base_logits).max()),
            "merge_diff": float(np.abs(logits - merged).max()),
            "warned": meta["warnings"],
            "note": meta["knob_checks"],
        }
        rows.append((readme_row(info), meta["versions"]))
    versions = sorted({", ".join(f"{k} {v}" for k, v in sorted(vs.items())) for _, vs in rows})
    intro = textwrap.fill(INTRO.format(versions="; ".join(versions), std=LORA_STD), width=116, break_on_hyphens=False)
    (OUT / "README.md").write_text(README.format(intro=intro, rows="\n".join(r for r, _ in rows)))
    (OUT / "README.md").chmod(0o644)
    total = dir_size(OUT)
    print(f"total size of {OUT.relative_to(ROOT)}: {total} bytes ({total / 1024:.1f} KiB)")
    if total > MAX_TOTAL_KIB * 1024:
        sys.exit("fixtures too large")


INTRO = """\
LoRA adapters made by Hugging Face `peft` ({versions}; CPU, float32) for the tiny random checkpoints in
`tests/fixtures/pretrained/<base>/`. Each `<name>/adapter/` is exactly what `PeftModel.save_pretrained` writes
(`adapter_config.json` + `adapter_model.safetensors`; peft's model card README.md removed), with every lora_A / lora_B
entry drawn {std} * N(0, 1) so the adapter is far from the identity. `<name>/reference.npz` holds `input_ids` (int32
[2, 7]), `logits` (the PeftModel's), `merged_logits` (after `merge_and_unload()`), `base_logits` (the base model
alone) and `meta` (JSON: base fixture, LoraConfig arguments, per-module r / alpha / scaling as peft built them,
peft's warnings, versions).
"""

README = """\
# Tiny peft LoRA adapter fixtures

{intro}

{rows}

Made by `experiments/make_lora_fixtures.py` (its docstring describes every file and check). Regenerate all with

    .venv/bin/python experiments/make_lora_fixtures.py

or only some (the others stay untouched), e.g.

    .venv/bin/python experiments/make_lora_fixtures.py gpt2_all llama_dora

Loading these files needs neither peft nor torch.
"""


if __name__ == "__main__":
    main()
