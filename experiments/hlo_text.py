"""An optimized HLO module's text, read: its instructions, the dots among them and which ops contain a matmul.

For the studies that split a compiled step by op kind (profile_loop_step.py) or by the dtypes of its dots
(bench_bf16_cpu.py); the text is `jax.jit(f).lower(...).compile().as_text()`.
"""

from __future__ import annotations

import re


def hlo_instructions(hlo_text: str) -> dict[str, dict]:
    """Every instruction of an optimized HLO module by name: {"opcode", "type", "operands", "calls",
    "computation"}; and "__computations__": {computation: [instruction names]}."""
    out: dict[str, dict] = {}
    computations: dict[str, list[str]] = {}
    current = None
    header = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s+\(.*\)\s+->\s+.*\{\s*$")
    line_re = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s+=\s+(.*)$")
    for line in hlo_text.splitlines():
        m = header.match(line)
        if m:
            current = m.group(1)
            computations[current] = []
            continue
        m = line_re.match(line)
        if not m or current is None:
            continue
        name, rest = m.groups()
        if rest.startswith("("):  # a tuple type: skip to its closing parenthesis
            depth, end = 0, len(rest)
            for index, ch in enumerate(rest):
                depth += ch == "("
                depth -= ch == ")"
                if depth == 0:
                    end = index + 1
                    break
            type_str, tail = rest[:end], rest[end:].lstrip()
        else:
            type_str, _, tail = rest.partition(" ")
        opcode = tail.split("(", 1)[0].strip()
        args = tail[len(opcode) + 1 :].split(")", 1)[0]
        out[name] = {
            "opcode": opcode,
            "type": type_str,
            "operands": re.findall(r"%([\w.\-]+)", args),
            "calls": re.findall(r"(?:calls|to_apply|body|condition|branch_computations)=\{?%([\w.\-]+)", tail),
            "computation": current,
        }
        computations[current].append(name)
    out["__computations__"] = computations
    return out


def _dtype(type_str: str) -> str:
    return type_str.split("[", 1)[0]


def dots_of(instructions: dict) -> list[dict]:
    """Every dot / convolution (including those inside fusions): operand and result dtypes, and the top-level
    instruction that runs it (a `__ynn_fusion`, a plain `dot`, ...)."""
    caller = {}  # fused computation -> the fusion (or custom call) instruction that runs it
    for name, inst in instructions.items():
        if name != "__computations__" and inst["opcode"] in ("fusion", "custom-call"):
            for comp in inst["calls"]:
                caller[comp] = name
    dots = []
    for name, inst in instructions.items():
        if name == "__computations__" or inst["opcode"] not in ("dot", "convolution"):
            continue
        operand_types = [_dtype(instructions[o]["type"]) for o in inst["operands"] if o in instructions]
        runner = caller.get(inst["computation"], name)
        dots.append(
            {
                "name": name,
                "signature": f"{inst['opcode']}({', '.join(operand_types)}) -> {_dtype(inst['type'])}",
                "run_by": runner,
            }
        )
    return dots


def op_kinds(instructions: dict) -> dict[str, str]:
    """Instruction name -> "matmul" (a dot or convolution, or a fusion / call containing one), "control" (while,
    call, conditional: their own time is loop bookkeeping) or "other"."""
    computations = instructions["__computations__"]

    def has_dot(comp: str, seen=()) -> bool:
        for n in computations.get(comp, []):
            inst = instructions[n]
            if inst["opcode"] in ("dot", "convolution"):
                return True
            if inst["opcode"] in ("fusion", "custom-call") and any(
                has_dot(c, (*seen, comp)) for c in inst["calls"] if c not in seen
            ):
                return True
        return False

    kinds = {}
    for name, inst in instructions.items():
        if name == "__computations__":
            continue
        if inst["opcode"] in ("dot", "convolution") or (
            inst["opcode"] in ("fusion", "custom-call") and any(has_dot(c) for c in inst["calls"])
        ):
            kinds[name] = "matmul"
        elif inst["opcode"] in ("while", "call", "conditional"):
            kinds[name] = "control"
        else:
            kinds[name] = "other"
    return kinds
