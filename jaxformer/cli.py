"""The `jaxformer` command.

    jaxformer train   --config CONFIG --workdir DIR [--config.KEY=VALUE ...]
    jaxformer sample  --workdir DIR | --pretrained DIR_OR_HUB_ID [--adapter DIR_OR_HUB_ID]
                      [--prompt TEXT] [--num_tokens N] [--temperature T] [--top_k K] [--seed S]
                      [--chat [--system TEXT] [--template DIR_OR_HUB_ID]]   (the prompt as a user turn in the
                      model's chat template; prints the reply, up to the end-of-turn token)
    jaxformer memory  --config CONFIG [--config.mesh.fsdp=8 ...] [--devices N]  (per-device bytes, nothing trained)
    jaxformer memory  --model VARIANT|DIR|HUB_ID --cache_len N [--batch_size B] [--dtype D]   (KV-cache bytes)
    jaxformer eval    --pretrained DIR_OR_HUB_ID [--adapter DIR_OR_HUB_ID] | --workdir DIR --tasks NAME[,NAME]
                      [--include_path DIR [--noinclude_defaults]] [--limit N] [--num_fewshot K] [--batch_size B]
                      [--output_path FILE] [--apply_chat_template] [--mesh data:N;tensor:M] [--dtype D]
                      (lm-evaluation-harness tasks scored by jaxformer; needs `pip install 'jaxformer[eval]'`)
    jaxformer configs                                                           (the recipes, one line each)
    jaxformer prepare --source tfds:NAME[:SPLIT] | text:GLOB --tokenizer char|byte|sentencepiece|hf:DIR_OR_ID
                      --out DIR [--validation_fraction F] [--vocab_size V] [--workers N] [--shard_mb M]
                      [--chunk_tokens C] [--tokenizer_sample_mb S] [--feature NAME] [--data_dir DIR]
                      (tokenize a corpus once into ArrayRecord shards; rerun the same command to resume)
    jaxformer prepare --source chat:GLOB --tokenizer template:DIR_OR_ID|template:byte_chatml --out DIR
                      [--validation_fraction F]   (encode JSONL conversations once, for task="sft")

CONFIG is a recipe's name (`jaxformer train --config shakespeare_char_cpu --workdir workdir/shakespeare_char_cpu`;
`jaxformer configs` lists them) or the path of a .py file with a `get_config()`; either may end in `:arg`, passed to
`get_config(arg)`. `python -m jaxformer.train ...` is the same as `jaxformer train ...`. `jaxformer prepare --help`
lists its flags; docs/data.md describes what it writes.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

USAGE = __doc__

# Exit codes of `jaxformer train` (docs/training.md, "Faults and recovery"): 0 finished; 1 an unexpected error (its
# traceback is the last thing printed); 2 a bad command line or flag value; 3 the loss or the parameters became
# non-finite (the newest checkpoint predates it: change the config before rerunning); 130 Ctrl-C and 143 SIGTERM,
# each after saving the step it stopped at (run the same command to resume).
EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED, EXIT_TERMINATED = 2, 3, 130, 143


def _quiet() -> None:
    """absl logs at INFO under app.run; orbax then narrates every checkpoint operation. Keep warnings only."""
    from absl import logging

    logging.set_verbosity(logging.WARNING)


CONFIG_HELP = "A recipe's name (`jaxformer configs` lists them) or a .py file with a get_config(); [:arg]."


def _fail(program: str, message: object) -> NoReturn:
    print(f"{program}: {message}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def _resolve_config(argv: list[str]) -> list[str]:
    """`argv` with the value of `--config` (`--config NAME`, `--config=NAME`, one dash or two) resolved by
    `jaxformer.configs.resolve`: a recipe's name becomes its file, so that ml_collections' config_flags loads it
    and applies the `--config.KEY=VALUE` overrides as for any config file. Stops at `--`, as absl does."""
    from jaxformer import configs

    out = list(argv[:1])
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":
            out += [arg, *args]
            break
        flag, eq, value = arg.partition("=")
        if flag in ("--config", "-config"):
            if not eq:
                value = next(args, None)
                if value is None:  # absl says that the flag needs a value
                    out.append(arg)
                    break
            try:
                arg = f"{flag}={configs.resolve(value)}"
            except (ValueError, FileNotFoundError) as e:  # an unknown name or a missing file: say which, list names
                _fail(argv[0], e)
        out.append(arg)
    return out


def _define_config(argv: list[str]) -> None:
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, CONFIG_HELP, lock_config=True, sys_argv=argv)


def _train(argv: list[str]) -> None:
    from absl import app, flags

    argv = _resolve_config(argv)
    _define_config(argv)
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, plots and samples.")
    flags.mark_flags_as_required(["config", "workdir"])

    def main(_):
        from jaxformer.training.loop import NonFiniteLossError, Terminated, train_and_evaluate

        _quiet()
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        try:
            row = train_and_evaluate(config, workdir)
        except KeyboardInterrupt:
            sys.exit(EXIT_INTERRUPTED)  # the loop saved a checkpoint and said so
        except Terminated:
            sys.exit(EXIT_TERMINATED)  # likewise
        except NonFiniteLossError as e:
            print(f"\njaxformer train: {e}", file=sys.stderr)
            sys.exit(EXIT_DIVERGED)
        print(f"\nFinished {config.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "step"))
        lora = [f", {d}/" for d in ("adapter", "merged") if os.path.isdir(os.path.join(workdir, d))]  # LoRA runs
        print(
            f"Results in {os.path.abspath(workdir)}: metrics.jsonl, tensorboard/, loss.png, samples.txt, "
            f"checkpoints/{''.join(lora)}"
        )

    app.run(main, argv=argv)


def _define_model_flags(flags) -> None:
    """The model of `sample` and `eval`: --workdir, or --pretrained with an optional --adapter."""
    flags.DEFINE_string("workdir", None, "A training run's workdir.")
    flags.DEFINE_string("pretrained", None, "Instead of --workdir: a Hugging Face checkpoint directory or hub id.")
    flags.DEFINE_string("adapter", None, "With --pretrained: a LoRA adapter (peft's layout) directory or hub id.")
    flags.register_multi_flags_validator(
        ["workdir", "pretrained"],
        lambda v: (v["workdir"] is None) != (v["pretrained"] is None),
        message="pass exactly one of --workdir (a training run) and --pretrained (a checkpoint directory or hub id)",
    )
    flags.register_multi_flags_validator(
        ["adapter", "pretrained"],
        lambda v: v["adapter"] is None or v["pretrained"] is not None,
        message="--adapter needs --pretrained (the base model the adapter was trained on)",
    )


def _sample(argv: list[str]) -> None:
    from absl import app, flags

    _define_model_flags(flags)
    flags.DEFINE_string("prompt", "\n", "Text to continue.")
    flags.DEFINE_integer("num_tokens", 500, "Tokens to generate.")
    flags.DEFINE_float("temperature", 0.8, "0 = greedy.")
    flags.DEFINE_integer("top_k", 200, "Keep the k most likely tokens (0 = all).")
    flags.DEFINE_integer("seed", 0, "Sampling seed.")
    flags.DEFINE_bool("chat", False, "Send --prompt as a user message in the model's chat template; print the reply.")
    flags.DEFINE_string("system", None, "With --chat: a system message before the prompt.")
    flags.DEFINE_string(
        "template",
        None,
        "With --chat: the checkpoint (directory or hub id) whose chat template to use (default: "
        "--pretrained's, or the --workdir run's).",
    )

    def main(_):
        from jaxformer.training.tasks.lm import sample_text
        from jaxformer.training.trained import load_trained

        _quiet()
        f = flags.FLAGS
        if f.pretrained is not None:
            from jaxformer import pretrained

            model = pretrained.from_pretrained(f.pretrained, adapter=f.adapter)
            tokenizer = pretrained.load_tokenizer(f.pretrained)
        else:
            model, tokenizer, _ = load_trained(f.workdir)
        top_k = min(f.top_k, tokenizer.vocab_size) if f.top_k else None
        if f.chat:
            from jaxformer.data.chat import ChatTemplate
            from jaxformer.training.tasks.sft import chat_reply
            from jaxformer.training.trained import load_chat_template

            if f.template or f.pretrained:
                template = ChatTemplate.from_pretrained(f.template or f.pretrained)
            else:
                template = load_chat_template(f.workdir)
            messages = [{"role": "system", "content": f.system}] if f.system else []
            messages.append({"role": "user", "content": f.prompt})
            reply = chat_reply(
                model, template, messages, f.num_tokens, seed=f.seed, temperature=f.temperature, top_k=top_k
            )
            print(reply)
            return
        if f.system or f.template:
            raise app.UsageError("--system and --template need --chat.")
        print(
            sample_text(model, tokenizer, f.prompt, f.num_tokens, seed=f.seed, temperature=f.temperature, top_k=top_k)
        )

    app.run(main, argv=argv)


def _eval(argv: list[str]) -> None:
    from absl import app, flags

    _define_model_flags(flags)
    flags.DEFINE_list("tasks", None, "lm_eval task (or group) names, comma-separated.")
    flags.DEFINE_string("include_path", None, "A directory of your own task YAMLs (docs/evaluation.md).")
    flags.DEFINE_bool("include_defaults", True, "Also index lm_eval's built-in tasks (slower to start).")
    flags.DEFINE_float("limit", None, "At most this many documents per task (a fraction if < 1).")
    flags.DEFINE_integer("num_fewshot", None, "Few-shot examples per prompt (default: each task's).")
    flags.DEFINE_integer("batch_size", 8, "Rows per model call (one compiled program per length bucket).")
    flags.DEFINE_integer("max_length", None, "The context length (default: the checkpoint's).")
    flags.DEFINE_integer("max_gen_toks", 256, "New tokens per generation request unless its task says otherwise.")
    flags.DEFINE_string("dtype", None, "float32, bfloat16 or float16 (default: the checkpoint's).")
    flags.DEFINE_string("mesh", None, "Devices to split over, e.g. 'data:4;tensor:2' (default: one device).")
    flags.DEFINE_bool("apply_chat_template", False, "Write prompts in the model's chat template.")
    flags.DEFINE_integer("seed", 0, "Seed of sampled generations and of lm_eval's few-shot choices.")
    flags.DEFINE_integer("bootstrap_iters", 0, "lm_eval's bootstrap resamples for standard errors (0: none).")
    flags.DEFINE_string("output_path", None, "Write the results (and each request's answers) here as JSON.")
    flags.mark_flag_as_required("tasks")

    def main(_):
        _quiet()
        from jaxformer import evaluation

        if not evaluation.harness_available():
            message = "needs lm-evaluation-harness, an optional extra: pip install 'jaxformer[eval]' (or lm_eval)."
            _fail(argv[0], message)
        from jaxformer.evaluation.harness import evaluate

        f = flags.FLAGS
        try:
            table, lm = evaluate(
                pretrained=f.pretrained,
                adapter=f.adapter,
                workdir=f.workdir,
                tasks=f.tasks,
                include_path=f.include_path,
                include_defaults=f.include_defaults,
                limit=int(f.limit) if f.limit is not None and f.limit >= 1 else f.limit,
                num_fewshot=f.num_fewshot,
                batch_size=f.batch_size,
                max_length=f.max_length,
                max_gen_toks=f.max_gen_toks,
                dtype=f.dtype,
                mesh=f.mesh,
                apply_chat_template=f.apply_chat_template,
                seed=f.seed,
                bootstrap_iters=f.bootstrap_iters,
                output_path=f.output_path,
            )
        except (ValueError, FileNotFoundError, KeyError) as e:  # a bad argument, a missing checkpoint, a task
            _fail(argv[0], e)
        print(table)
        print(f"jaxformer: {lm.scorer.stats.summary()}")

    app.run(main, argv=argv)


def _memory(argv: list[str]) -> None:
    from absl import app, flags

    argv = _resolve_config(argv)
    _define_config(argv)
    flags.DEFINE_integer("devices", 0, "Devices to size the run for (default: the devices jax sees).")
    flags.DEFINE_string(
        "model",
        None,
        "A ModelConfig variant, checkpoint directory or hub id: with --cache_len, its KV cache; with --config, the "
        "run of --config with this architecture (e.g. llama3.2-1b at a long seq_len).",
    )
    flags.DEFINE_integer("cache_len", 0, "With --model alone: the KV cache's length in tokens.")
    flags.DEFINE_integer("batch_size", 1, "With --model: the sequences the KV cache holds.")
    flags.DEFINE_string("dtype", "bfloat16", "With --model: the cache's dtype.")
    flags.register_multi_flags_validator(
        ["config", "model", "cache_len"],
        lambda v: (v["config"] is not None and v["cache_len"] == 0) or (v["config"] is None and v["model"] is not None),
        message="pass --config (a training run, optionally with --model: its architecture) or --model with "
        "--cache_len (an architecture's KV cache)",
    )
    flags.register_multi_flags_validator(
        ["config", "model", "cache_len"],
        lambda v: v["config"] is not None or v["cache_len"] > 0,
        message="--model without --config needs --cache_len N > 0",
    )

    def main(_):
        from jaxformer.training.memory import (
            format_kv_report,
            format_report,
            kv_cache_report,
            memory_report,
            with_architecture,
        )

        _quiet()
        f = flags.FLAGS
        if f.config is None:
            print(format_kv_report(kv_cache_report(f.model, f.cache_len, batch_size=f.batch_size, dtype=f.dtype)))
            return
        config = f.config if f.model is None else with_architecture(f.config, f.model)
        print(format_report(memory_report(config, f.devices or None)))

    app.run(main, argv=argv)


def _configs(argv: list[str]) -> None:
    from jaxformer import configs

    if len(argv) > 1:
        _fail(argv[0], f"takes no arguments, got {' '.join(argv[1:])}")
    described = configs.describe()
    width = max(map(len, described))
    for name, line in described.items():
        print(f"{name:<{width}}  {line}")


def _prepare(argv: list[str]) -> None:
    """Flags in a FlagValues of their own (not absl's global FLAGS, not app.run): a bad flag is a one-line error with
    exit code 2, and `main` can run `prepare` more than once in a process (as the tests do)."""
    from absl import flags

    from jaxformer.data import chat_corpus, prepared, writer

    fv = flags.FlagValues()
    for define, name, default, help_ in (
        (flags.DEFINE_string, "source", None, "tfds:NAME (every split), tfds:NAME:SPLIT (as train), text:GLOB, or "
         "chat:GLOB (JSONL files of {\"messages\": [...]} lines, encoded by a chat template)."),
        (flags.DEFINE_string, "tokenizer", None, "char, byte, sentencepiece or hf:DIR_OR_ID; for chat:GLOB, "
         "template:DIR_OR_ID (a checkpoint's chat template) or template:byte_chatml (the built-in one)."),
        (flags.DEFINE_string, "out", None, "The directory to write; rerun the same command to resume (chat: to redo "
         "an unfinished one)."),
        (flags.DEFINE_float, "validation_fraction", None,
         f"Share of the train text (chat: of the conversations, the last ones) cut off as validation; 0 = none. "
         f"Default: {prepared.DEFAULT_VALIDATION_FRACTION}, or none for tfds:NAME (the dataset's own splits)."),
        (flags.DEFINE_integer, "vocab_size", None, "The sentencepiece vocabulary (sentencepiece only)."),
        (flags.DEFINE_integer, "workers", None, "Tokenizing processes (default: the CPU count)."),
        (flags.DEFINE_float, "shard_mb", prepared.DEFAULT_SHARD_MB, "MB of text per shard, about."),
        (flags.DEFINE_integer, "chunk_tokens", prepared.DEFAULT_CHUNK_TOKENS, "Tokens per ArrayRecord record."),
        (flags.DEFINE_float, "tokenizer_sample_mb", prepared.DEFAULT_TOKENIZER_SAMPLE_MB,
         "MB of train text that sentencepiece is trained on."),
        (flags.DEFINE_string, "feature", prepared.DEFAULT_FEATURE, "The text feature of a TFDS record."),
        (flags.DEFINE_string, "data_dir", None, "The TFDS data directory (default: $TFDS_DATA_DIR)."),
    ):  # fmt: skip
        define(name, default, help_, flag_values=fv)
    if any(a in ("--help", "-help", "-h", "--helpshort") for a in argv[1:]):
        print(f"{argv[0]}: tokenize a corpus into ArrayRecord shards, or encode conversations (chat:GLOB) into .npy "
              "arrays (docs/data.md).")  # fmt: skip
        print(fv.get_help(include_special_flags=False))
        return
    try:
        rest = fv(argv)
        missing = [f"--{name}" for name in ("source", "tokenizer", "out") if fv[name].value is None]
        if missing:
            raise flags.Error(f"missing {', '.join(missing)} (see --help)")
        if len(rest) > 1:
            raise flags.Error(f"unexpected arguments {' '.join(rest[1:])}")
    except flags.Error as e:
        _fail(argv[0], e)
    if fv.source.startswith(chat_corpus.SOURCE_PREFIX):
        text_only = [f"--{n}" for n in ("vocab_size", "workers", "shard_mb", "chunk_tokens", "tokenizer_sample_mb",
                                        "feature", "data_dir") if fv[n].present]  # fmt: skip
        if text_only:
            _fail(argv[0], f"{', '.join(text_only)} apply to text and tfds sources, not to --source={fv.source}")
        try:
            chats = chat_corpus.prepare_chat(
                fv.source, fv.tokenizer, fv.out, validation_fraction=fv.validation_fraction
            )
        except (ValueError, FileNotFoundError) as e:  # a bad argument, a refused rerun, a bad record, no template
            _fail(argv[0], e)
        except KeyboardInterrupt:
            print("\nInterrupted: run the same command again to prepare the corpus from the start.", file=sys.stderr)
            sys.exit(130)
        count = lambda n, what: f"{n:,} {what}{'' if n == 1 else 's'}"
        splits = ", ".join(
            f"{name} {count(split['conversations'], 'conversation')} ({count(split['tokens'], 'token')}, "
            f"{split['learned_tokens']:,} learned, the longest {split['max_tokens']:,})"
            for name, split in chats.metadata["splits"].items()
        )
        print(f"Prepared {chats.directory}: {splits}.")
        return
    if fv.tokenizer.startswith(chat_corpus.TOKENIZER_PREFIX):
        _fail(argv[0], f"--tokenizer={fv.tokenizer} (a chat template) needs --source chat:GLOB; got {fv.source}")
    try:
        corpus = writer.prepare(
            fv.source,
            fv.tokenizer,
            fv.out,
            validation_fraction=fv.validation_fraction,
            vocab_size=fv.vocab_size,
            workers=fv.workers,
            shard_mb=fv.shard_mb,
            chunk_tokens=fv.chunk_tokens,
            tokenizer_sample_mb=fv.tokenizer_sample_mb,
            feature=fv.feature,
            data_dir=fv.data_dir,
        )
    except (ValueError, FileNotFoundError) as e:  # a bad argument, a refused rerun, a dataset not prepared
        _fail(argv[0], e)
    except KeyboardInterrupt:
        print("\nInterrupted: the finished shards are kept; run the same command again to finish.", file=sys.stderr)
        sys.exit(130)
    count = lambda n, what: f"{n:,} {what}{'' if n == 1 else 's'}"
    splits = ", ".join(
        f"{name} {count(split['tokens'], 'token')} ({count(len(split['shards']), 'shard')}, "
        f"{count(split['documents'], 'document')})"
        for name, split in corpus.metadata["splits"].items()
    )
    print(f"Prepared {corpus.directory}: {splits}; vocabulary {corpus.vocab_size:,} ({corpus.metadata['dtype']}).")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    commands = {
        "train": _train,
        "sample": _sample,
        "eval": _eval,
        "memory": _memory,
        "configs": _configs,
        "prepare": _prepare,
    }
    if len(argv) < 2 or argv[1] not in commands:
        print(USAGE, file=sys.stderr)
        return 2
    commands[argv[1]]([f"{argv[0]} {argv[1]}", *argv[2:]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
