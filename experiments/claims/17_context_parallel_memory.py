"""Claim 17: splitting the sequence over c devices (context parallelism, ring attention) divides the activation
memory each device needs by c, so the longest context that fits grows c-fold.

    TFDS_DATA_DIR=... python experiments/claims/17_context_parallel_memory.py [--full]

Measured on 8 fake CPU devices (`--xla_force_host_platform_device_count=8`: the measurement runs in a subprocess
of this script, since jax reads the flag when it starts). For each context size c and sequence length T, the
library's own compiled train step (`training.runner`: forward, backward, AdamW update, the state donated) of a
rotary GPT on `config.mesh.context = c` (`config.sequence_layout = "zigzag"`), batch 1. Memory is XLA's compiled
memory analysis of that SPMD program, which is per device: `temp_size_in_bytes`, the scratch the step needs
besides its inputs and outputs (activations kept for the backward pass, the gradients, attention's working
buffers). Nothing is run, so T reaches lengths a CPU could not train at. One device is measured with blockwise
attention (already O(T) memory: the best one device does) and with dense XLA attention (O(T^2)). `jaxformer
memory`'s estimate of the same runs is recorded beside each measurement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lab

CLAIM = (
    "Context parallelism (the sequence split over c devices, attention as ring attention) divides the activation "
    "memory per device by c, so the longest context that fits grows c-fold (Liu et al. 2023, ring attention; "
    "MaxText's context parallelism)."
)
SETUP = (
    "Compiled, not run, on 8 fake CPU devices: the library's train step (AdamW, forward + backward, donated state) "
    "of a rotary GPT with 2 layers, d=256, 4 heads of 64, SwiGLU 1024 wide, character vocabulary, batch 1, float32, "
    "no remat, on config.mesh.context = c in {1, 2, 4, 8} (zigzag layout; ring attention in key blocks of up to "
    "512) at T = 1024 ... 16384. One device: blockwise attention (O(T) memory, 512-token blocks) and dense XLA "
    "attention. Per-device memory: XLA's compiled temp bytes of the SPMD program. Supported if at the longest T "
    "every c in {2, 4, 8} needs between 0.75/c and 1.33/c of one device's blockwise memory, and every c's memory "
    "grows with a log-log slope <= 1.2 in T (over the three longest lengths); partly supported if only one holds. "
    "--full: T up to 65536."
)

CONTEXTS = (1, 2, 4, 8)
RATIO_BAND = (0.75, 1.33)  # c x (per-device memory with c devices) / (one device's), at the longest T
LINEAR_SLOPE_MAX = 1.2


def sizes(size: str) -> dict:
    model = {
        "model.num_layers": 2,
        "model.d_model": 256,
        "model.num_heads": 4,
        "model.d_ff": 1024,
        "model.activation": "swiglu",
        "model.positional": "rope",
        "model.dropout_rate": 0.0,
        "batch_size": 1,
    }
    return lab.pick(
        size,
        tiny=dict(lengths=[64, 128, 256], contexts=(1, 2), dense_up_to=256, model={**model, "model.d_model": 32}),
        default=dict(lengths=[1024, 2048, 4096, 8192, 16384], contexts=CONTEXTS, dense_up_to=16384, model=model),
        full=dict(lengths=[4096, 8192, 16384, 32768, 65536], contexts=CONTEXTS, dense_up_to=32768, model=model),
    )


# -- the measurement (in a subprocess with 8 CPU devices) -----------------------------------------------------------


def measure(size: str) -> dict:
    """{variant: {T: {"temp": bytes, "estimate": bytes}}} for the variants "c=1 dense", "c=1 blockwise", "c=2",
    ... (this process must have 8 devices)."""
    import jax

    from jaxformer import sharding
    from jaxformer.training.memory import memory_report
    from jaxformer.training.run import build_run
    from jaxformer.training.runner import StepRunner, make_train_step

    s = sizes(size)
    assert jax.device_count() >= max(s["contexts"]), jax.device_count()
    variants = [("c=1 dense", 1, "xla"), ("c=1 blockwise", 1, "blockwise")]
    variants += [(f"c={c}", c, "auto") for c in s["contexts"] if c > 1]
    out = {name: {} for name, _, _ in variants}
    for T in s["lengths"]:
        for name, c, impl in variants:
            if impl == "xla" and T > s["dense_up_to"]:
                continue
            config = lab.lm_config(1, **s["model"], **{"data.seq_len": T, "model.attention_impl": impl})
            config.mesh.update(data=1, context=c)
            config.sequence_layout = "zigzag"
            run = build_run(config)
            mesh = sharding.make_mesh(data=1, context=c, devices=jax.devices()[:c])
            runner = StepRunner(
                "jit", run.make_model, run.optimizer, run.schedule, run.task.loss, mesh=mesh, sequence_layout="zigzag"
            )
            step = make_train_step(
                runner.graphs,
                run.optimizer,
                run.schedule,
                run.task.loss,
                state_shardings=runner.state_shardings,
                batch_sharding=sharding.batch_sharding(mesh),
                sequence_layout="zigzag",
            )
            tokens = jax.ShapeDtypeStruct((1, T), np.int32, sharding=sharding.batch_sharding(mesh, (1, T)))
            with sharding.use_mesh(mesh):
                compiled = step.lower(runner.initial_state, {"inputs": tokens, "targets": tokens}).compile()
            temp = int(compiled.memory_analysis().temp_size_in_bytes)
            estimate = int(memory_report(config, num_devices=c)["activation_bytes_per_device"])
            out[name][str(T)] = dict(temp=temp, estimate=estimate)
            print(f"T={T} {name}: {temp / 2**20:.1f} MiB (estimate {estimate / 2**20:.1f} MiB)", flush=True)
    return out


def run(size: str) -> lab.Outcome:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--measure", size], env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"the 8-device measurement failed:\n{done.stderr[-3000:]}")
    print(done.stdout, end="")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    s = sizes(size)
    lengths = s["lengths"]
    T = lengths[-1]
    mib = {name: {int(t): v["temp"] / 2**20 for t, v in d.items()} for name, d in measured.items()}
    one = mib["c=1 blockwise"][T]
    ratios = {c: c * mib[f"c={c}"][T] / one for c in s["contexts"] if c > 1}
    slopes = {name: slope(sorted(d), [d[t] for t in sorted(d)]) for name, d in mib.items()}
    checks = dict(
        divided_by_c=all(RATIO_BAND[0] <= r <= RATIO_BAND[1] for r in ratios.values()),
        linear_in_T=all(slopes[name] <= LINEAR_SLOPE_MAX for name in slopes if name != "c=1 dense"),
    )
    supported = True if all(checks.values()) else (None if any(checks.values()) else False)
    dense = mib["c=1 dense"]
    Td = max(dense)
    c_max = max(s["contexts"])
    estimate = {name: {int(t): v["estimate"] / 2**20 for t, v in d.items()} for name, d in measured.items()}
    result = (
        f"Per-device compiled temp memory at T={T}: one device with blockwise attention {one:.0f} MiB; "
        + ", ".join(f"c={c}: {mib[f'c={c}'][T]:.0f} MiB ({ratios[c]:.2f}/c of it)" for c in ratios)
        + f". One device with dense attention needs {dense[Td]:.0f} MiB at T={Td} (log-log slope "
        f"{slopes['c=1 dense']:.2f}); the blockwise and ring variants grow with slopes "
        + ", ".join(f"{name} {slopes[name]:.2f}" for name in mib if name != "c=1 dense")
        + f". So at a fixed memory per device, c={c_max} devices hold about {c_max / ratios[c_max]:.1f}x the "
        f"tokens one does. jaxformer memory's estimate at T={T}: "
        + ", ".join(f"{name} {estimate[name][T]:.0f} MiB" for name in mib if T in estimate[name])
        + f". Criteria met: {sum(checks.values())} of {len(checks)}"
        + ("." if all(checks.values()) else f" (failed: {', '.join(k for k, ok in checks.items() if not ok)}).")
    )
    numbers = dict(
        sizes={k: v for k, v in s.items() if k != "model"},
        model=s["model"],
        temp_mib={name: {str(t): v for t, v in d.items()} for name, d in mib.items()},
        estimate_mib={name: {str(t): v for t, v in d.items()} for name, d in estimate.items()},
        ratios_times_c={str(c): r for c, r in ratios.items()},
        slopes=slopes,
        checks=checks,
    )
    return lab.Outcome(result=result, supported=supported, numbers=numbers)


def slope(xs, ys) -> float:
    """Log-log slope of the last three points."""
    return float(np.polyfit(np.log(xs[-3:]), np.log(ys[-3:]), 1)[0])


STYLE = {
    "c=1 dense": dict(color="tab:red", marker="o", ls=":"),
    "c=1 blockwise": dict(color="black", marker="o"),
    "c=2": dict(color="tab:blue", marker="s"),
    "c=4": dict(color="tab:green", marker="^"),
    "c=8": dict(color="tab:purple", marker="D"),
}


def plot(numbers: dict, path: str):
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    for name, d in numbers["temp_mib"].items():
        Ts = sorted(int(t) for t in d)
        style = STYLE.get(name, {})
        left.plot(Ts, [d[str(t)] for t in Ts], label=f"{name} (slope {numbers['slopes'][name]:.2f})", **style)
        est = numbers["estimate_mib"][name]
        left.plot(Ts, [est[str(t)] for t in Ts], color=style.get("color"), ls="--", lw=0.8, alpha=0.5)
    left.set_xscale("log", base=2)
    left.set_yscale("log")
    left.set_xlabel("sequence length T")
    left.set_ylabel("compiled temp memory per device (MiB)")
    left.set_title("per device vs T (dashed: jaxformer memory's estimate)", fontsize=10)
    left.grid(True, which="major", alpha=0.3)
    left.legend(fontsize=8)

    T = str(max(int(t) for t in numbers["temp_mib"]["c=1 blockwise"]))
    contexts = [1] + [int(c) for c in numbers["ratios_times_c"]]
    one = numbers["temp_mib"]["c=1 blockwise"][T]
    measured = [one] + [numbers["temp_mib"][f"c={c}"][T] for c in contexts[1:]]
    right.plot(contexts, measured, "o-", color="tab:purple", label="measured (c=1: blockwise)")
    right.plot(contexts, [one / c for c in contexts], "k:", label="one device / c")
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xticks(contexts, [str(c) for c in contexts])
    right.set_xlabel("devices on the context axis c")
    right.set_ylabel("compiled temp memory per device (MiB)")
    right.set_title(f"per device vs c at T={T}", fontsize=10)
    right.grid(True, which="major", alpha=0.3)
    right.legend(fontsize=8)
    m = numbers["model"]
    fig.suptitle(
        f"Context parallelism (ring attention, zigzag): GPT {m['model.num_layers']} layers, d={m['model.d_model']}, "
        "batch 1, float32, train step compiled on 8 fake CPU devices",
        fontsize=11,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--measure"]:
        print(json.dumps(measure(sys.argv[2])))
    else:
        lab.main(sys.modules[__name__])
