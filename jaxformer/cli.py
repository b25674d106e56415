"""The `jaxformer` command.

    jaxformer train  --config experiments/configs/shakespeare_char_cpu.py --workdir DIR [--config.KEY=VALUE ...]
    jaxformer sample --workdir DIR [--prompt TEXT] [--num_tokens N] [--temperature T] [--top_k K] [--seed S]
    jaxformer memory --config FILE [--config.mesh.fsdp=8 ...] [--devices N]   (per-device bytes, nothing trained)

`python -m jaxformer.train ...` is the same as `jaxformer train ...`.
"""

from __future__ import annotations

import os
import sys

USAGE = __doc__


def _quiet() -> None:
    """absl logs at INFO under app.run; orbax then narrates every checkpoint operation. Keep warnings only."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)


def _train(argv: list[str]) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).", lock_config=True)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and samples.")
    flags.mark_flags_as_required(["config", "workdir"])

    def main(_):
        from jaxformer.training.loop import train_and_evaluate

        _quiet()
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        try:
            row = train_and_evaluate(config, workdir)
        except KeyboardInterrupt:
            sys.exit(130)  # the loop saved a checkpoint and said so
        print(f"\nFinished {config.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
        print(
            f"Results in {os.path.abspath(workdir)}: metrics.jsonl, tensorboard/, loss.png, samples.txt, checkpoints/"
        )

    app.run(main, argv=argv)


def _sample(argv: list[str]) -> None:
    from absl import app, flags

    flags.DEFINE_string("workdir", None, "A training run's workdir.")
    flags.DEFINE_string("prompt", "\n", "Text to continue.")
    flags.DEFINE_integer("num_tokens", 500, "Tokens to generate.")
    flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
    flags.DEFINE_integer("top_k", 200, "Keep the k most likely tokens (0 = all).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.mark_flags_as_required(["workdir"])

    def main(_):
        from jaxformer.training.loop import load_trained
        from jaxformer.training.tasks.lm import sample_text

        _quiet()
        f = flags.FLAGS
        model, tokenizer, _ = load_trained(f.workdir)
        top_k = min(f.top_k, tokenizer.vocab_size) if f.top_k else None
        print(
            sample_text(model, tokenizer, f.prompt, f.num_tokens, seed=f.seed, temperature=f.temperature, top_k=top_k)
        )

    app.run(main, argv=argv)


def _memory(argv: list[str]) -> None:
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config()).", lock_config=True)
    flags.DEFINE_integer("devices", 0, "Devices to size the run for (default: the devices jax sees).")
    flags.mark_flags_as_required(["config"])

    def main(_):
        from jaxformer.training.memory import format_report, memory_report

        _quiet()
        print(format_report(memory_report(flags.FLAGS.config, flags.FLAGS.devices or None)))

    app.run(main, argv=argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    commands = {"train": _train, "sample": _sample, "memory": _memory}
    if len(argv) < 2 or argv[1] not in commands:
        print(USAGE, file=sys.stderr)
        return 2
    commands[argv[1]]([f"{argv[0]} {argv[1]}", *argv[2:]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
