"""Supervised fine-tuning on conversations (`config.task = "sft"`): a decoder learns the assistant's replies.

Data (`defaults.chat_data`): conversations from `config.data.train_files` / `eval_files` (JSONL, one
`{"messages": [...]}` per line; comma-separated paths or globs), or `config.data.synthetic` (a task of
`data.synthetic_chat`, generated from the seed; its eval split holds problems training never sees), or
`config.data.prepared` (a corpus `jaxformer prepare --source chat:GLOB` encoded once; memory-mapped, with its own
template; its "validation" split is held out). Each is rendered by the chat template (`config.data.template`: "" =
`config.init_from`'s, "byte_chatml" for a model trained from scratch, or a checkpoint directory / hub id) and
encoded with its assistant mask (`chat.ChatTemplate.encode`): the loss falls on the assistant's tokens only,
end-of-turn tokens included.

Truncation never keeps a prompt without its answer: a conversation longer than `seq_len + 1` tokens keeps its
turns up to the last reply that fits whole (`chat.truncate`); one whose first reply does not fit is dropped (the
count is printed). The encoded conversations are packed whole into rows of `seq_len` (`data.pipeline
.packed_examples`: segment ids and restarted positions, so no attention or loss crosses conversations).

Metrics: `nll` / `accuracy` over assistant tokens, `tokens` (assistant targets), `prompt_tokens` (targets read
but not learned) and `pad_tokens` per batch. Validation: `val_loss` over every held-out conversation and
`val_exact_match`, the share of the first `config.data.eval_generate` held-out conversations (as truncated, and
whose prompt leaves `max_new_tokens` of room) whose last reply greedy decoding reproduces exactly from the tokens
before it (stopping at the template's end-of-turn token; compared as text, stripped).
"""

from __future__ import annotations

import glob
import itertools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxformer import checks, data
from jaxformer.data import chat, synthetic_chat
from jaxformer.decoding import generate
from jaxformer.models import GPT
from jaxformer.training.tasks.base import Task, evaluate_batches
from jaxformer.training.tasks.lm import lm_loss

TEMPLATE_FILE = "chat_template.json"  # a run's template and tokenizer (ChatTemplate.to_dict), for sampling


def load_template(config: ml_collections.ConfigDict) -> chat.ChatTemplate:
    """The chat template `config.data.template` names ("" = `config.init_from`'s)."""
    name = config.data.template or config.init_from
    if not name:
        raise ValueError(
            "config.data.template is empty and there is no config.init_from to take a chat template from: set "
            "config.data.template to a checkpoint directory or hub id, or 'byte_chatml' for a model trained from "
            "scratch."
        )
    return chat.byte_chatml() if name == "byte_chatml" else chat.ChatTemplate.from_pretrained(name)


def data_files(spec: str, key: str) -> list[str]:
    """The files of a comma-separated list of paths or glob patterns, each of which must match something."""
    files = []
    for pattern in (p.strip() for p in spec.split(",")):
        if not pattern:
            continue
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise FileNotFoundError(f"{key}={spec!r}: {pattern!r} matches no file.")
        files += matched
    if not files:
        raise ValueError(f"{key} is empty: name JSONL files, or set config.data.synthetic.")
    return files


def encode_conversations(template: chat.ChatTemplate, conversations: list[list[dict]]) -> data.pipeline.Examples:
    """The conversations encoded whole (`ChatTemplate.encode`: ids and the assistant mask), in memory."""
    if not conversations:
        raise ValueError("There are no conversations to encode.")
    return data.pipeline.Examples.from_list([template.encode(messages) for messages in conversations])


def truncate_examples(examples: data.pipeline.Examples, max_tokens: int) -> tuple[data.pipeline.Examples, int]:
    """(the examples cut to `max_tokens` by `chat.truncate` (whole turns up to the last reply that fits), how many
    were dropped because their first reply does not fit or they have none). Only the index arrays change."""
    keep, lengths = [], []
    for i in range(len(examples)):
        kept = chat.truncate(*examples.example(i), max_tokens)
        if kept is not None:
            keep.append(i)
            lengths.append(len(kept[0]))
    if not keep:
        raise ValueError(
            f"No conversation has a reply that fits in seq_len + 1 = {max_tokens} tokens (or none has a reply): "
            "raise config.data.seq_len."
        )
    return examples.truncated(np.asarray(keep), np.asarray(lengths)), len(examples) - len(keep)


def last_reply(tokens: np.ndarray, learned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, reply) of an encoded conversation: the tokens before its last learned span, and that span's tokens
    without its end-of-turn token (the last of the span)."""
    starts, ends = chat.learned_spans(learned)
    return tokens[: starts[-1]], tokens[starts[-1] : ends[-1] - 1]


class SupervisedFineTuning(Task):
    model_class = GPT
    train_metrics = ("tokens", "prompt_tokens", "pad_tokens")

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        cfg = config.data
        seq_len = checks.check_positive_int("config.data.seq_len", cfg.seq_len)
        checks.check_nonnegative_int("config.data.eval_generate", cfg.eval_generate)
        checks.check_positive_int("config.data.max_new_tokens", cfg.max_new_tokens)
        train, held_out = self.read_examples()
        self.tokenizer = self.template.tokenizer
        self.train_examples, dropped = truncate_examples(train, seq_len + 1)
        self.eval_examples, eval_dropped = truncate_examples(held_out, seq_len + 1)
        if dropped or eval_dropped:
            print(
                f"sft: dropped {dropped} training and {eval_dropped} held-out conversations whose first reply does "
                f"not fit in seq_len + 1 = {seq_len + 1} tokens."
            )
        self.tokens_per_batch = config.batch_size * seq_len

    def read_examples(self) -> tuple[data.pipeline.Examples, data.pipeline.Examples]:
        """(train, held-out) encoded conversations, and `self.template`: a prepared corpus's (memory-mapped), or
        the template's encoding of the synthetic task's or the JSONL files' conversations."""
        cfg = self.config.data
        if cfg.prepared:
            if cfg.template or cfg.synthetic or cfg.train_files:
                raise ValueError(
                    "config.data.prepared holds its conversations and chat template: leave config.data.template, "
                    "synthetic and train_files empty."
                )
            corpus = data.open_prepared_chat(cfg.prepared)
            if "validation" not in corpus.split_names:
                raise ValueError(f"config.data.prepared={cfg.prepared!r} has no validation split to evaluate on.")
            self.template = corpus.template
            return corpus.examples("train"), corpus.examples("validation")
        self.template = load_template(self.config)
        if cfg.synthetic:
            make = lambda n, split: synthetic_chat.chat_task(
                cfg.synthetic, num_examples=n, split=split, seed=self.config.seed
            )
            train, held_out = make(cfg.num_train, "train"), make(cfg.num_eval, "eval")
        else:
            read = lambda spec, key: [c for f in data_files(spec, key) for c in chat.read_conversations(f)]
            train = read(cfg.train_files, "config.data.train_files")
            held_out = read(cfg.eval_files, "config.data.eval_files")
        return encode_conversations(self.template, train), encode_conversations(self.template, held_out)

    def train_data(self, rows=None):
        cfg = self.config
        return data.pipeline.packed_examples(
            self.train_examples, batch_size=cfg.batch_size, seq_len=cfg.data.seq_len, seed=cfg.seed, rows=rows
        )

    def model_fields(self) -> dict:
        return {"vocab_size": self.tokenizer.vocab_size, "max_len": self.config.data.seq_len}

    def activation_shape(self, model_cfg) -> tuple[int, int, int]:
        return self.config.data.seq_len, model_cfg.num_layers, model_cfg.vocab_size

    def loss(self, model, batch):
        loss, metrics = lm_loss(model, batch, label_smoothing=self.config.label_smoothing)
        real = batch["segment_ids"] > 0
        metrics["prompt_tokens"] = jnp.sum(real & ~batch["weights"]).astype(jnp.float32)
        metrics["pad_tokens"] = jnp.sum(~real).astype(jnp.float32)
        return loss, metrics

    def evaluate(self, eval_step, state, model) -> dict:
        cfg = self.config
        batches = data.pipeline.eval_packed_examples(
            self.eval_examples, batch_size=cfg.batch_size, seq_len=cfg.data.seq_len
        )
        result = evaluate_batches(eval_step, state, batches, with_perplexity=True)
        if cfg.data.eval_generate:
            result["val_exact_match"] = float(np.mean([ok for _, _, _, ok in self.replies(model)]))
        return result

    def replies(self, model) -> list[tuple[str, str, str, bool]]:
        """(prompt text, greedy reply, expected reply, equal after stripping) for the first `eval_generate`
        held-out conversations (as truncated for training) whose prompt leaves `max_new_tokens` of room in the
        model's context: the prompt is everything before the last reply."""
        cfg = self.config.data
        width = model.config.max_len - cfg.max_new_tokens
        every = (last_reply(*self.eval_examples.example(i)) for i in range(len(self.eval_examples)))
        pairs = list(itertools.islice(((p, r) for p, r in every if len(p) <= width), cfg.eval_generate))
        if not pairs:
            raise ValueError(
                f"No held-out prompt fits max_len - config.data.max_new_tokens = {width} tokens: lower max_new_tokens."
            )
        got = greedy_replies(model, self.template, [p for p, _ in pairs], max_new_tokens=cfg.max_new_tokens)
        out = []
        for (prompt, want), reply in zip(pairs, got, strict=True):
            want = self.tokenizer.decode(want).strip()
            out.append((self.tokenizer.decode(prompt), reply, want, reply == want))
        return out

    def samples(self, model) -> str:
        if not self.config.data.eval_generate:
            return ""
        lines = []
        for prompt, reply, want, ok in self.replies(model)[:20]:
            lines.append(f"{prompt}{reply!r}  (expected {want!r}{'' if ok else ', WRONG'})\n")
        return "\n".join(lines)

    def save_assets(self, workdir: str) -> None:
        save_template(self.template, workdir)


def save_template(template: chat.ChatTemplate, workdir: str) -> None:
    """`workdir/chat_template.json`: the run's template and tokenizer, which `trained.load_trained` reads back."""
    with open(os.path.join(workdir, TEMPLATE_FILE), "w", encoding="utf-8") as f:
        json.dump(template.to_dict(), f)


def greedy_replies(
    model: GPT, template: chat.ChatTemplate, prompts: list[np.ndarray], *, max_new_tokens: int, batch_size: int = 32
) -> list[str]:
    """The greedy reply to each prompt (token ids ending with the assistant's header: `encode_prompt`), up to the
    template's end-of-turn token (not included) or `max_new_tokens` tokens, stripped of surrounding whitespace.
    Prompts are right-padded to one length (`model.config.max_len - max_new_tokens`) so one program compiles."""
    eos = template.end_of_turn_id
    width = model.config.max_len - max_new_tokens
    if width < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in max_len={width}.")
    out = []
    for lo in range(0, len(prompts), batch_size):
        encoded = prompts[lo : lo + batch_size]
        too_long = [len(ids) for ids in encoded if len(ids) > width]
        if too_long:
            raise ValueError(f"A prompt of {max(too_long)} tokens does not fit {width} = max_len - max_new_tokens.")
        batch = np.zeros((batch_size, width), np.int32)
        lengths = np.ones(batch_size, np.int32)
        for row, ids in enumerate(encoded):
            batch[row, : len(ids)], lengths[row] = ids, len(ids)
        new = generate(
            model, jnp.asarray(batch), max_new_tokens, rng=None, temperature=0.0, eos_id=eos, prompt_lengths=lengths
        )
        for row in np.asarray(jax.device_get(new))[: len(encoded)]:
            stop = np.flatnonzero(row == eos)
            out.append(template.tokenizer.decode(row[: stop[0] if len(stop) else len(row)]).strip())
    return out


def chat_reply(
    model: GPT,
    template: chat.ChatTemplate,
    messages: list[dict],
    max_new_tokens: int,
    *,
    seed: int = 0,
    **sampling,
) -> str:
    """The model's reply to `messages` (rendered with the generation prompt), sampled with `sampling`
    (`temperature`, `top_k`, `top_p`: `decoding.generate`) until the template's end-of-turn token (not included)
    or `max_new_tokens` tokens."""
    eos = template.end_of_turn_id
    prompt = template.encode_prompt(messages)
    new = generate(model, jnp.asarray(prompt[None]), max_new_tokens, rng=jax.random.key(seed), eos_id=eos, **sampling)
    row = np.asarray(new[0])
    stop = np.flatnonzero(row == eos)
    return template.tokenizer.decode(row[: stop[0] if len(stop) else len(row)])
