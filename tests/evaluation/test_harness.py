"""jaxformer inside lm-evaluation-harness against lm_eval's own `hf` backend (transformers + torch) on the same tiny
checkpoints made by transformers: every metric, every request's log-likelihood and every generated string.

Slow, and skipped without lm_eval, torch and transformers (`pip install -e '.[eval,hf]'`). The default tests of
jaxformer.evaluation are in test_scoring.py; `jaxformer eval` without lm_eval in test_cli.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.utils import make_table  # noqa: E402

import jaxformer.evaluation  # noqa: E402  (registers "jaxformer")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PRETRAINED = os.path.join(ROOT, "tests", "fixtures", "pretrained")
LORA = os.path.join(ROOT, "tests", "fixtures", "lora", "llama_all", "adapter")
EVAL = os.path.join(ROOT, "tests", "fixtures", "eval")
TASKS = ["jaxformer_mc", "jaxformer_ppl", "jaxformer_gen", "jaxformer_gen_stops"]
RATIOS = ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none")


def evaluate(model: str, model_args: str) -> dict:
    os.chdir(ROOT)  # the task YAMLs name their data files relative to the repository root
    manager = TaskManager(include_path=EVAL, include_defaults=False)
    return lm_eval.simple_evaluate(
        model=model,
        model_args=model_args,
        tasks=TASKS,
        task_manager=manager,
        bootstrap_iters=0,
        log_samples=True,
        device="cpu",
    )


@pytest.fixture(scope="module", params=["llama", "gpt2", "llama+lora"])
def runs(request):
    name = request.param
    base = os.path.join(PRETRAINED, name.split("+")[0])
    ours = f"pretrained={base},batch_size=4"
    theirs = f"pretrained={base},batch_size=4,dtype=float32"
    if name.endswith("+lora"):
        ours += f",adapter={LORA}"
        theirs += f",peft={LORA}"
    return evaluate("jaxformer", ours), evaluate("hf", theirs)


def responses(sample):
    return [r[0] for r in sample["resps"]]


def test_every_metric_equals_lm_evals_hf_backend(runs):
    ours, theirs = runs
    for task in TASKS:
        got, want = ours["results"][task], theirs["results"][task]
        for metric, value in want.items():
            if metric.endswith(",none") and "stderr" not in metric:
                if metric in RATIOS:
                    assert got[metric] == pytest.approx(value, rel=1e-4), (task, metric)
                else:  # accuracies and exact matches: exactly
                    assert got[metric] == value, (task, metric)


def test_every_request_equals_lm_evals_hf_backend(runs):
    ours, theirs = runs
    for task in TASKS:
        assert len(ours["samples"][task]) == len(theirs["samples"][task]) > 0
        for got, want in zip(ours["samples"][task], theirs["samples"][task], strict=True):
            assert got["arguments"] == want["arguments"]
            if task.startswith("jaxformer_gen"):
                assert responses(got) == responses(want), task
                continue
            for a, b in zip(responses(got), responses(want), strict=True):
                a, b = (a, b) if task == "jaxformer_ppl" else (a[0], b[0])
                assert abs(a - b) <= 1e-4 + 1e-6 * abs(b), (task, a, b)
            if task == "jaxformer_mc":
                assert [r[1] for r in responses(got)] == [r[1] for r in responses(want)]
    stops = [responses(s)[0] for s in ours["samples"]["jaxformer_gen_stops"]]
    assert any(0 < len(s) for s in stops)  # something was generated before the stop strings


def test_jaxformer_eval_prints_lm_evals_table(runs, tmp_path, request):
    if "llama]" not in request.node.name:
        pytest.skip("one command line is enough")
    _, theirs = runs
    out = tmp_path / "results.json"
    command = [
        sys.executable,
        "-m",
        "jaxformer.cli",
        "eval",
        f"--pretrained={os.path.join(PRETRAINED, 'llama')}",
        f"--include_path={EVAL}",
        "--noinclude_defaults",
        f"--tasks={','.join(TASKS)}",
        "--batch_size=4",
        f"--output_path={out}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    # The table as lm_eval prints the hf backend's: the same rows and cells, numbers to relative 1e-4 (a perplexity
    # of 1e9 differs in its last printed digits).
    rows = lambda table: [line.split("|") for line in table.splitlines() if line.startswith("|")]
    got, want = rows(done.stdout), rows(make_table(theirs))
    assert len(got) == len(want) > 2
    for row, want_row in zip(got, want, strict=True):
        for cell, want_cell in zip(row, want_row, strict=True):
            try:
                assert float(cell) == pytest.approx(float(want_cell), rel=1e-4)
            except ValueError:
                assert cell == want_cell
    assert "programs compiled" in done.stdout
    saved = json.loads(out.read_text())
    assert saved["results"]["jaxformer_mc"]["acc,none"] == theirs["results"]["jaxformer_mc"]["acc,none"]


def test_a_training_runs_workdir_is_evaluated(tmp_path):
    """A char-level run trained here: no special tokens, so the perplexity prefix is given (a newline)."""
    corpus = tmp_path / "corpus.txt"
    # Every character the tasks use (a character-level model encodes no others).
    text = "".join(open(os.path.join(EVAL, name)).read() for name in ("texts.jsonl", "multiple_choice.jsonl"))
    corpus.write_text((text + "Question: Answer:\n") * 10)
    workdir = tmp_path / "run"
    train = [
        sys.executable,
        "-m",
        "jaxformer.train",
        "--config=shakespeare_char_cpu",
        f"--workdir={workdir}",
        "--config.data.source=text_file",
        f"--config.data.path={corpus}",
        "--config.num_steps=4",
        "--config.warmup_steps=1",
        "--config.eval_every=4",
        "--config.checkpoint_every=4",
        "--config.batch_size=4",
        "--config.data.seq_len=32",
        "--config.model.num_layers=1",
        "--config.model.d_model=32",
        "--config.model.d_ff=64",
        "--config.sample.num_tokens=4",
    ]
    done = subprocess.run(train, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    scorer = jaxformer.evaluation.load(workdir=workdir, batch_size=4, prefix_id=0)
    pairs = [("Question: What do bees make?\nAnswer:", " honey"), ("Question: What do bees make?\nAnswer:", " milk")]
    got = scorer.loglikelihood(pairs)
    assert all(np.isfinite(lp) and lp < 0 for lp, _ in got)
    os.chdir(ROOT)
    results = lm_eval.simple_evaluate(
        model="jaxformer",
        model_args=f"workdir={workdir},batch_size=4,prefix_token_id=0",
        tasks=["jaxformer_mc", "jaxformer_ppl"],
        task_manager=TaskManager(include_path=EVAL, include_defaults=False),
        bootstrap_iters=0,
        log_samples=True,
    )
    first = results["samples"]["jaxformer_mc"][0]
    context, continuation = first["arguments"][0]
    assert responses(first)[0][0] == pytest.approx(scorer.loglikelihood([(context, continuation)])[0][0], abs=1e-5)
    assert np.isfinite(results["results"]["jaxformer_ppl"]["bits_per_byte,none"])


MESH_SCRIPT = """
import json, sys
import jax
from jaxformer import evaluation
pairs, texts, gens = json.loads(sys.argv[1])
out = {}
for name, mesh in (("one", None), ("mesh", "data:4;tensor:2")):
    from jaxformer.evaluation.harness import _mesh
    scorer = evaluation.load(sys.argv[2], batch_size=8, mesh=_mesh(mesh))
    out[name] = [scorer.loglikelihood([tuple(p) for p in pairs]), scorer.loglikelihood_rolling(texts),
                 scorer.generate_until([(g, {"until": ["e"], "max_gen_toks": 20}) for g in gens])]
print(json.dumps(out))
"""


def test_a_mesh_scores_as_one_device():
    with open(os.path.join(EVAL, "multiple_choice.jsonl")) as f:
        docs = [json.loads(line) for line in f][:4]
    pairs = [(f"Question: {d['question']}\nAnswer:", " " + c) for d in docs for c in d["choices"]]
    with open(os.path.join(EVAL, "texts.jsonl")) as f:
        texts = [json.loads(line)["text"] for line in f]
    gens = [f"Word: {w}\n" for w in ("apple", "house", "river")]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    args = [json.dumps([pairs, texts, gens]), os.path.join(PRETRAINED, "llama")]
    done = subprocess.run([sys.executable, "-c", MESH_SCRIPT, *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    (one_ll, one_roll, one_gen), (mesh_ll, mesh_roll, mesh_gen) = out["one"], out["mesh"]
    np.testing.assert_allclose([x[0] for x in mesh_ll], [x[0] for x in one_ll], rtol=1e-5, atol=1e-5)
    assert [x[1] for x in mesh_ll] == [x[1] for x in one_ll]
    np.testing.assert_allclose(mesh_roll, one_roll, rtol=1e-5)
    assert mesh_gen == one_gen


def test_chat_templates_render_as_transformers_applies_them():
    from transformers import AutoTokenizer

    from jaxformer.evaluation.harness import JaxformerLM

    template_dir = os.path.join(ROOT, "tests", "fixtures", "chat", "chatml")
    scorer = jaxformer.evaluation.load(os.path.join(PRETRAINED, "llama"))
    lm = JaxformerLM(pretrained=template_dir, scorer=scorer)  # the template's directory, the llama fixture's model
    tokenizer = AutoTokenizer.from_pretrained(template_dir)
    history = [
        {"role": "system", "content": "Answer with one word."},
        {"role": "user", "content": "Question: What do bees make?"},
        {"role": "assistant", "content": "Answer: honey"},
    ]
    for messages, prompt in ((history[:2], True), (history, False)):
        want = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt, continue_final_message=not prompt
        )
        assert lm.apply_chat_template(messages, add_generation_prompt=prompt) == want
    assert lm.chat_template(True) == lm._template().source and lm.chat_template(False) is None
