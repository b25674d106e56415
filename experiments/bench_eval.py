"""Multiple-choice requests per second: jaxformer's lm_eval model ("jaxformer") against lm_eval's own `hf` backend,
on the same checkpoint, the same task and the same machine, in one run.

    python experiments/bench_eval.py --json experiments/results/eval_cpu.json     # GPT-2-small shape, minutes
    python experiments/bench_eval.py --smoke                                      # a tiny model, seconds

The checkpoint: random weights (seeded) built in `transformers` and written with `save_pretrained`, a GPT-2-small
shape (12 layers, d 768, 12 heads, 1024 positions, vocabulary 50257), with the tiny gpt2 fixture's tokenizer
(tests/fixtures/pretrained/gpt2: a 300-token byte-level BPE; its ids fit the larger vocabulary, and the output head
still computes all 50257 logits). No checkpoint can be downloaded here; random weights cost what trained ones do.

The task: lm_eval multiple choice over a JSONL written to a temporary directory: `--questions` questions, each a
passage of a few sentences and a question (about 100-150 tokens) with 4 choices of 1-3 words (as ARC or a
reading-comprehension task looks), so lm_eval makes 4 loglikelihood requests per question.

Measured: the wall time of each backend's `loglikelihood` call (lm_eval's task building and metrics excluded), in
`--rounds` rounds, the order of the two backends alternating. jaxformer's first round includes its compiles, which
its `Scorer.stats` reports separately; later rounds are compiled. Both backends use float32 and batch size
`--batch_size`; torch runs with 2 threads (the machine's cores). Accuracies must be equal and the log-likelihoods
within 1e-4 (+1e-6 of their size) of each other; the script says when they are not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from host import describe  # noqa: E402

TOKENIZER = os.path.join(ROOT, "tests", "fixtures", "pretrained", "gpt2")
SHAPES = {
    "gpt2-small": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024, "vocab_size": 50257},
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 256, "vocab_size": 512},
}
SENTENCES = [
    "The village stood at the edge of a wide river.",
    "Every morning the baker opened his shop before the sun came up.",
    "The children walked to school along the old stone wall.",
    "In winter the river froze and the people crossed it on foot.",
    "A merchant arrived one day with a cart full of cloth and spices.",
    "The mayor called a meeting in the hall beside the church.",
    "Nobody could remember a summer as dry as that one.",
    "The farmers carried water from the well to their fields.",
    "At night the watchman lit the lamps on the bridge.",
    "The old teacher told stories about the founding of the town.",
]
QUESTIONS = [
    ("Where did the village stand?", ["by a river", "on a mountain", "in a desert", "under the sea"]),
    ("Who opened the shop?", ["the baker", "the mayor", "the watchman", "a merchant"]),
    ("What happened to the river in winter?", ["it froze", "it flooded", "it dried up", "it turned red"]),
    ("What did the merchant bring?", ["cloth and spices", "wood", "iron tools", "fresh fish"]),
    ("Who lit the lamps?", ["the watchman", "the teacher", "the children", "the farmers"]),
]


def write_task(directory: str, questions: int, seed: int) -> None:
    rng = random.Random(seed)
    path = os.path.join(directory, "mc.jsonl")
    with open(path, "w") as f:
        for i in range(questions):
            question, choices = QUESTIONS[i % len(QUESTIONS)]
            passage = " ".join(rng.sample(SENTENCES, 4))
            order = rng.sample(range(4), 4)
            f.write(
                json.dumps(
                    {
                        "passage": passage,
                        "question": question,
                        "choices": [choices[k] for k in order],
                        "answer": order.index(0),
                    }
                )
                + "\n"
            )
    with open(os.path.join(directory, "bench_mc.yaml"), "w") as f:
        f.write(
            "task: bench_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {path}\ntest_split: test\noutput_type: multiple_choice\n"
            'doc_to_text: "{{passage}}\\nQuestion: {{question}}\\nAnswer:"\n'
            'doc_to_choice: "{{choices}}"\ndoc_to_target: "{{answer}}"\n'
            "metric_list:\n  - metric: acc\n  - metric: acc_norm\nmetadata:\n  version: 1.0\n"
        )


def write_checkpoint(directory: str, shape: dict, seed: int) -> None:
    import shutil

    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**shape, bos_token_id=0, eos_token_id=0)).eval()
    model.save_pretrained(directory)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(os.path.join(TOKENIZER, name), directory)
    # The fixture tokenizer's model_max_length is its own model's 64; lm_eval reads the config's n_positions first.


class Timed:
    """Wraps an lm_eval LM's loglikelihood: the seconds of each call and its results."""

    def __init__(self, lm):
        self.lm, self.seconds, self.results = lm, [], []
        inner = lm.loglikelihood

        def loglikelihood(requests, *args, **kwargs):
            start = time.perf_counter()
            out = inner(requests, *args, **kwargs)
            self.seconds.append(time.perf_counter() - start)
            self.results.append(out)
            return out

        lm.loglikelihood = loglikelihood


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="gpt2-small")
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="the tiny shape, 8 questions, 2 rounds")
    parser.add_argument("--json", help="write the record here")
    args = parser.parse_args()
    if args.smoke:
        args.shape, args.questions, args.rounds = "tiny", 8, 2

    import lm_eval
    import torch
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from jaxformer.evaluation.harness import JaxformerLM  # importing it registers "jaxformer"

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, tasks = os.path.join(tmp, "checkpoint"), os.path.join(tmp, "tasks")
        os.makedirs(tasks)
        write_checkpoint(checkpoint, SHAPES[args.shape], args.seed)
        write_task(tasks, args.questions, args.seed)
        manager = TaskManager(include_path=tasks, include_defaults=False)
        start = time.perf_counter()
        jf = Timed(JaxformerLM(pretrained=checkpoint, batch_size=args.batch_size))
        jf_load = time.perf_counter() - start
        start = time.perf_counter()
        hf = Timed(get_model("hf")(pretrained=checkpoint, batch_size=args.batch_size, device="cpu", dtype="float32"))
        hf_load = time.perf_counter() - start
        accuracy = {"jaxformer": [], "hf": []}
        compiles = []
        for r in range(args.rounds):
            for name, timed in [("hf", hf), ("jaxformer", jf)] if r % 2 else [("jaxformer", jf), ("hf", hf)]:
                before = (jf.lm.scorer.stats.compiles, jf.lm.scorer.stats.compile_seconds)
                out = lm_eval.simple_evaluate(
                    model=timed.lm, tasks=["bench_mc"], task_manager=manager, bootstrap_iters=0, log_samples=False
                )
                accuracy[name].append(out["results"]["bench_mc"]["acc,none"])
                if name == "jaxformer":
                    stats = jf.lm.scorer.stats
                    compiles.append((stats.compiles - before[0], stats.compile_seconds - before[1]))
                print(f"round {r + 1} {name:9s} {timed.seconds[-1]:7.2f} s  acc {accuracy[name][-1]:.4f}", flush=True)
        requests = len(jf.results[0])
        worst = max(abs(a[0] - b[0]) - 1e-6 * abs(b[0]) for a, b in zip(jf.results[-1], hf.results[-1], strict=True))
        stats = jf.lm.scorer.stats
    steady = lambda seconds: min(seconds[1:]) if len(seconds) > 1 else seconds[0]
    record = {
        "machine": describe(),
        "torch": torch.__version__,
        "lm_eval": lm_eval.__version__,
        "shape": args.shape,
        "questions": args.questions,
        "requests": requests,
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "load_seconds": {"jaxformer": jf_load, "hf": hf_load},
        "seconds": {"jaxformer": jf.seconds, "hf": hf.seconds},
        "jaxformer_compiles_per_round": [c for c, _ in compiles],
        "jaxformer_compile_seconds_per_round": [s for _, s in compiles],
        "padded_slots_real": stats.tokens / stats.slots if stats.slots else None,
        "requests_per_s_first": {"jaxformer": requests / jf.seconds[0], "hf": requests / hf.seconds[0]},
        "requests_per_s_compiled": {"jaxformer": requests / steady(jf.seconds), "hf": requests / steady(hf.seconds)},
        "accuracy_equal": accuracy["jaxformer"] == accuracy["hf"],
        "max_loglikelihood_excess_over_1e-6_rel": worst,
    }
    first = record["requests_per_s_first"]
    compiled = record["requests_per_s_compiled"]
    print(f"{record['machine']}; torch {record['torch']}, lm_eval {record['lm_eval']}")
    print(
        f"{args.shape}, {requests} requests, batch {args.batch_size}: jaxformer {first['jaxformer']:.1f} req/s with "
        f"compiles ({compiles[0][0]} programs, {compiles[0][1]:.1f} s), {compiled['jaxformer']:.1f} compiled; hf "
        f"{first['hf']:.1f} / {compiled['hf']:.1f}. Ratio {first['jaxformer'] / first['hf']:.2f}x first round, "
        f"{compiled['jaxformer'] / compiled['hf']:.2f}x compiled."
    )
    print(f"accuracies equal: {record['accuracy_equal']}; worst |ll diff| - 1e-6 |ll|: {worst:.2e} (bound 1e-4)")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)


if __name__ == "__main__":
    main()
