"""Supervised fine-tuning on conversations (`task="sft"`): packed loss = per-conversation loss, the task through
`train_and_evaluate`, its data and its errors."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxformer import lora
from jaxformer.configs import load_config
from jaxformer.data import chat, pipeline, synthetic_chat
from jaxformer.models import GPT, ModelConfig
from jaxformer.training import build_run, trained
from jaxformer.training.loop import train_and_evaluate
from jaxformer.training.tasks.lm import lm_loss
from jaxformer.training.tasks.sft import chat_reply, encode_conversations, greedy_replies, truncate_examples

TINY_MODEL = dict(num_layers=1, num_heads=2, d_model=32, d_ff=64)


def tiny_sft(**data):
    config = load_config("chat_sft_cpu")
    config.model.update(TINY_MODEL)
    config.update(num_steps=4, eval_every=2, log_every=2, checkpoint_every=4, warmup_steps=1, batch_size=4)
    config.data.update({"num_train": 40, "num_eval": 6, "eval_generate": 3, "seq_len": 96, **data})
    return config


def test_packed_loss_equals_the_per_conversation_loss():
    template = chat.byte_chatml()
    conversations = synthetic_chat.chat_task("arithmetic", num_examples=12, split="train", seed=0)
    examples, dropped = truncate_examples(encode_conversations(template, conversations), 193)
    assert dropped == 0 and len(examples) == 12
    cfg = ModelConfig.variant(
        "gpt2-tiny", vocab_size=259, max_len=192, positional="rope", dropout_rate=0.0, **TINY_MODEL
    )
    model = GPT(cfg, rngs=nnx.Rngs(0))
    model.eval()
    (batch,) = pipeline.eval_packed_examples(examples, batch_size=12, seq_len=192)  # every conversation
    assert batch["segment_ids"].max() > 1  # several conversations share a row
    packed, metrics = jax.jit(lambda b: lm_loss(model, b))(batch)

    # Each conversation alone in its own row, right-padded, no segment ids: causal attention never sees the padding.
    alone = np.zeros((len(examples), 192), np.int32)
    weights = np.zeros((len(examples), 192), bool)
    for i in range(len(examples)):
        tokens, learned = examples.example(i)
        alone[i, : len(tokens)], weights[i, : len(tokens)] = tokens, learned
    logits = nnx.jit(lambda m, x: m(x))(model, jnp.asarray(alone[:, :-1]))
    logits = np.asarray(logits, np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))  # float64 log-softmax
    nll = -np.take_along_axis(logp, alone[:, 1:, None], axis=-1)[..., 0]
    total, count = float(np.sum(nll * weights[:, 1:])), float(weights[:, 1:].sum())
    assert float(metrics["tokens"]) == count
    assert abs(float(packed) - total / count) < 1e-6, (float(packed), total / count)


def test_sft_trains_and_reports_assistant_token_metrics(tmp_path):
    final = train_and_evaluate(tiny_sft(), str(tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and final == rows[-1]
    for key in ("train_loss", "val_loss", "val_exact_match", "train_tokens", "train_prompt_tokens", "train_pad_tokens"):
        assert np.isfinite(final[key]), key
    # tokens of each kind add up to the batch: 4 rows of 96 slots
    assert final["train_tokens"] + final["train_prompt_tokens"] + final["train_pad_tokens"] == 4 * 96
    assert 0 < final["train_tokens"] < final["train_prompt_tokens"]
    saved = chat.ChatTemplate.from_dict(json.loads((tmp_path / "chat_template.json").read_text()))
    assert saved.render([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n"
    assert "<|im_start|>assistant" in (tmp_path / "samples.txt").read_text()
    # what `jaxformer sample --chat` runs: the trained model back from its workdir, its template, a greedy reply
    model, _, _ = trained.load_trained(str(tmp_path))
    template = trained.load_chat_template(str(tmp_path))
    prompt = [{"role": "user", "content": "Reverse: abc"}]
    reply = chat_reply(model, template, prompt, 6, temperature=0.0)
    assert reply.strip() == greedy_replies(model, template, [template.encode_prompt(prompt)], max_new_tokens=6)[0]


@pytest.mark.slow  # a subprocess that loads and compiles again; chat_reply itself runs above
def test_jaxformer_sample_chat_prints_the_reply(tmp_path):
    config = tiny_sft()
    config.num_steps = 2
    train_and_evaluate(config, str(tmp_path))
    model, _, _ = trained.load_trained(str(tmp_path))
    template = trained.load_chat_template(str(tmp_path))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Uppercase: abc"}]
    want = chat_reply(model, template, messages, 6, temperature=0.0)
    command = [sys.executable, "-m", "jaxformer.cli", "sample", f"--workdir={tmp_path}", "--chat"]
    flags = ["--system=Be brief.", "--prompt=Uppercase: abc", "--num_tokens=6", "--temperature=0"]
    out = subprocess.run([*command, *flags], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.rstrip("\n") == want.rstrip("\n")


def test_sft_reads_jsonl_conversations_and_drops_those_whose_first_reply_does_not_fit(tmp_path, capsys):
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    long_prompt = [{"role": "user", "content": "x" * 200}, {"role": "assistant", "content": "ok"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"messages": m}) for m in [short, long_prompt] * 3))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"messages": short}) + "\n\n")
    config = tiny_sft(synthetic="", train_files=str(tmp_path / "train*.jsonl"), eval_files=str(tmp_path / "eval.jsonl"))
    task = build_run(config).task
    assert len(task.train_examples) == 3 and len(task.eval_examples) == 1
    assert "dropped 3 training and 0 held-out conversations" in capsys.readouterr().out


def test_truncation_keeps_whole_turns_and_never_a_prompt_without_its_answer():
    template = chat.byte_chatml()
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b" * 10},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d" * 10},
    ]
    ids, mask = template.encode(messages)
    # the first exchange's tokens up to its <|im_end|> (not the newline after it)
    first_end = len(template.tokenizer.encode(template.render(messages[:2]))) - 1
    for budget in range(len(ids) + 2):
        kept = chat.truncate(ids, mask, budget)
        if budget < first_end:
            assert kept is None
        elif budget < len(ids) - 1:
            assert len(kept[0]) == first_end and kept[1][-1]  # ends on the first reply's <|im_end|>
            assert template.tokenizer.decode(kept[0][-1:]) == "<|im_end|>"
        else:
            assert len(kept[0]) == len(ids) - 1  # the whole conversation up to its last <|im_end|>


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (dict(synthetic="", train_files=""), ValueError, "config.data.train_files is empty"),
        (dict(synthetic="", train_files="/nonexistent/*.jsonl"), FileNotFoundError, "matches no file"),
        (dict(template=""), ValueError, "config.data.template is empty and there is no config.init_from"),
        (dict(synthetic="poetry"), ValueError, "synthetic chat task"),
        (dict(seq_len=8), ValueError, "No conversation has a reply that fits in seq_len"),
    ],
)
def test_sft_config_errors_name_the_key(data, error, match):
    with pytest.raises(error, match=match):
        build_run(tiny_sft(**data))


def test_bad_jsonl_lines_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [{"role": "robot", "content": ""}]}\n'
    )
    with pytest.raises(ValueError, match=r"bad.jsonl, record 2: messages\[0\] has role 'robot'"):
        chat.read_conversations(path)
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1 is not valid JSON"):
        chat.read_conversations(path)


@pytest.mark.slow
def test_chat_sft_cpu_reaches_95_percent_exact_match_on_held_out_problems(tmp_path):
    config = load_config("chat_sft_cpu")
    final = train_and_evaluate(config, str(tmp_path))
    assert final["step"] == config.num_steps
    assert final["val_exact_match"] >= 0.95, final


ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}"
)
LLAMA = "tests/fixtures/pretrained/llama"


@pytest.mark.parametrize("task", ["sft", pytest.param("dpo", marks=pytest.mark.slow)])  # dpo: a second compile
def test_chat_tasks_train_lora_adapters_on_a_pretrained_checkpoint(task, tmp_path):
    """init_from a Hugging Face checkpoint (the tiny Llama fixture) with a Zephyr-style template over its own
    tokenizer (end of turn `</s>`), LoRA rank 2: the base stays as loaded, the adapters train."""
    import shutil

    from jaxformer import pretrained

    template_dir = tmp_path / "template"
    template_dir.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{LLAMA}/{name}", template_dir / name)
    (template_dir / "chat_template.jinja").write_text(ZEPHYR)
    config = load_config(f"chat_{task}_cpu")
    for field in list(config.model.keys()):  # with init_from the architecture is the checkpoint's
        if field not in ("variant", "dtype"):
            del config.model[field]
    config.init_from = LLAMA
    config.lora.rank, config.lora.alpha = 2, 4.0
    config.update(num_steps=2, eval_every=2, log_every=1, checkpoint_every=2, warmup_steps=1, batch_size=4)
    config.data.update(template=str(template_dir), num_train=24, num_eval=4, seq_len=63, eval_generate=0)
    final = train_and_evaluate(config, str(tmp_path / "run"))
    assert np.isfinite(final["val_loss"])
    model, _, _ = trained.load_trained(str(tmp_path / "run"))
    found = list(lora.adapters(model))
    assert found and all(np.abs(np.asarray(a.b[...])).max() > 0 for *_, a in found)  # B starts at 0: it trained
    base = nnx.to_flat_state(nnx.state(pretrained.from_pretrained(LLAMA), nnx.Param))
    kept = nnx.to_flat_state(nnx.state(model, nnx.Not(nnx.LoRAParam)).filter(nnx.Param))
    assert len(base) == len(kept)
    for (path, got), (_, want) in zip(kept, base, strict=True):
        np.testing.assert_array_equal(got[...], want[...], err_msg=str(path))


def test_sft_reads_a_prepared_chat_corpus_like_the_same_jsonl(tmp_path):
    """`config.data.prepared` (memory-mapped, truncated at training time) gives the examples the JSONL path gives."""
    from jaxformer import data

    conversations = synthetic_chat.chat_task("strings", num_examples=30, split="train", seed=3)
    lines = [json.dumps({"messages": m}) for m in conversations]
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:25]))
    (tmp_path / "eval.jsonl").write_text("\n".join(lines[25:]))
    (tmp_path / "all.jsonl").write_text("\n".join(lines))
    source, out = f"chat:{tmp_path / 'all.jsonl'}", tmp_path / "prepared"
    data.prepare_chat(source, "template:byte_chatml", out, validation_fraction=0.16, progress=False)  # the last 5
    files = tiny_sft(synthetic="", train_files=str(tmp_path / "train.jsonl"), eval_files=str(tmp_path / "eval.jsonl"))
    prepared = tiny_sft(synthetic="", template="", prepared=str(tmp_path / "prepared"))
    prepared.data.seq_len = files.data.seq_len = 64  # some conversations are cut to their first turn, some dropped
    a, b = build_run(files).task, build_run(prepared).task
    assert isinstance(b.train_examples.tokens, np.memmap)
    for split in ("train_examples", "eval_examples"):
        x, y = getattr(a, split), getattr(b, split)
        assert len(x) == len(y) > 0
        for i in range(len(x)):
            for u, v in zip(x.example(i), y.example(i), strict=True):
                np.testing.assert_array_equal(u, v)
    with pytest.raises(ValueError, match=r"leave config\.data\.template, synthetic and train_files empty"):
        build_run(tiny_sft(prepared=str(tmp_path / "prepared")))
