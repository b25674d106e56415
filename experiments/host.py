"""What machine a measurement came from: the CPU's model and vector extensions, for every record and benchmark line.

Speed ratios against PyTorch, and even compiled numerics (docs/architecture.md, "Known compiler issues"), differ
between these 2-core machines: some AMD EPYCs have AVX-512 with BF16, others AVX2 only.

    python experiments/host.py      # prints e.g. "AMD EPYC 9R14, AVX-512 + BF16, 2 CPUs, jax 0.12.1"
"""

from __future__ import annotations

import os
import platform

# /proc/cpuinfo flag -> the name a reader knows, widest last.
VECTOR_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "BF16", "amx_tile": "AMX"}


def cpu_info() -> dict[str, str | list[str]]:
    """{"model": the CPU's model name, "flags": its vector flags of VECTOR_FLAGS} (Linux; elsewhere the platform)."""
    fields = {}  # the first CPU's "model name" and "flags" lines
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    present = set(fields.get("flags", "").split())
    model = fields.get("model name") or platform.processor() or platform.machine()
    return {"model": model, "flags": [flag for flag in VECTOR_FLAGS if flag in present]}


def vector_extensions(flags: list[str]) -> str:
    """ "AVX-512 + BF16", "AVX2 only", ...: the widest vector unit and its extras."""
    names = [VECTOR_FLAGS[f] for f in flags]
    if "AVX-512" in names:
        return " + ".join(n for n in names if n != "AVX2")
    if names == ["AVX2"]:
        return "AVX2 only"
    return " + ".join(names) or "no AVX2"


def describe(with_jax: bool = True) -> str:
    """One line for a record: CPU model, vector extensions, core count, and the jax version (with `with_jax`)."""
    info = cpu_info()
    text = f"{info['model']}, {vector_extensions(info['flags'])}, {os.cpu_count()} CPUs"
    if with_jax:
        import jax

        device = jax.devices()[0]
        accelerator = "" if device.platform == "cpu" else f", {device.platform} {device.device_kind}"
        text += f"{accelerator}, jax {jax.__version__}"
    return text


if __name__ == "__main__":
    print(describe())
