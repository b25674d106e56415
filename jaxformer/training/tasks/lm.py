"""Language modelling (`config.task = "lm"`): a decoder-only GPT predicts the next token of a text corpus.

Data (`defaults.text_data`): `config.data.prepared`, a corpus tokenized once by `jaxformer prepare` (ArrayRecord
shards read a window at a time: it never has to fit in memory); or, for small corpora, `config.data.source` "tfds"
(a text dataset such as tiny_shakespeare) or "text_file" (its last `validation_fraction` is the validation text),
tokenized in memory by `config.data.tokenizer` "char", "byte", "sentencepiece" (trained on the training text,
`config.data.vocab_size` pieces) or "hf:DIR_OR_ID" (`data.make_tokenizer`, as `jaxformer prepare`). Either way the
batches come from `data.pipeline` (grain): training `config.data.sampling` "random_windows" of `seq_len + 1` tokens
or "packed_documents" rows with segment ids; validation covers every token of the validation split once.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxformer import checks, data
from jaxformer.decoding import generate
from jaxformer.models import GPT
from jaxformer.training.tasks.base import Task, add_router_losses, classification_loss, evaluate_batches


def load_text(cfg: ml_collections.ConfigDict, split: str) -> str:
    """The raw text of `split` from the config's source: a tfds dataset or a local text file (split by share)."""
    if cfg.source == "tfds":
        return data.tfds_text(cfg.name, split, data_dir=cfg.data_dir or None)
    if cfg.source == "text_file":
        fraction = checks.check_real(
            "config.data.validation_fraction", cfg.validation_fraction, low=0.0, high=1.0, low_open=True, high_open=True
        )
        text = data.text_file(cfg.path)
        cut = int(len(text) * (1.0 - fraction))
        return text[:cut] if split == cfg.train_split else text[cut:]
    raise ValueError(f"config.data.source={cfg.source!r}; choose 'tfds' or 'text_file'.")


def load_corpus(cfg: ml_collections.ConfigDict) -> tuple[data.Tokenizer, data.TokenStore, data.TokenStore]:
    """(tokenizer, train tokens, eval tokens) of `config.data`: a prepared corpus's, or the source's text
    tokenized in memory by a tokenizer fitted to the training text."""
    if cfg.prepared:
        corpus = data.open_prepared(cfg.prepared)
        for split in (cfg.train_split, cfg.eval_split):
            if split not in corpus.split_names:
                raise ValueError(
                    f"config.data.train_split / eval_split name {split!r}, which the prepared corpus {cfg.prepared} "
                    f"does not have; it has {list(corpus.split_names)}."
                )
        return corpus.tokenizer, corpus.split(cfg.train_split), corpus.split(cfg.eval_split)
    train_text = load_text(cfg, cfg.train_split)
    tokenizer = data.make_tokenizer(
        cfg.tokenizer,
        train_text,
        vocab_size=cfg.vocab_size,
        sentencepiece_type=cfg.sentencepiece_type,
        argument="config.data.tokenizer",
    )
    encode = lambda text: data.ArrayTokens(tokenizer.encode(text))
    return tokenizer, encode(train_text), encode(load_text(cfg, cfg.eval_split))


SAMPLINGS = ("random_windows", "packed_documents")


def lm_train_data(config: ml_collections.ConfigDict, store: data.TokenStore, rows: slice | None):
    """The training batches of `config.data.sampling` over `store` (`data.pipeline`)."""
    sampling = checks.check_choice("config.data.sampling", config.data.sampling, SAMPLINGS)
    make = data.pipeline.random_windows if sampling == "random_windows" else data.pipeline.packed_documents
    return make(store, batch_size=config.batch_size, seq_len=config.data.seq_len, seed=config.seed, rows=rows)


def lm_loss(model: GPT, batch: dict, *, label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
    """Next-token cross-entropy of a decoder-only LM.

    batch: `inputs`, `targets` int `[B, T]`; optional `weights` `[B, T]` (0 = ignore, e.g. padding),
    `segment_ids` and `positions` `[B, T]` for packed rows. Returns (loss, metrics) as `classification_loss`, plus
    a mixture of experts' auxiliary loss and metrics (`add_router_losses`).
    """
    logits = model(batch["inputs"], segment_ids=batch.get("segment_ids"), positions=batch.get("positions"))
    loss, metrics = classification_loss(logits, batch["targets"], batch.get("weights"), label_smoothing=label_smoothing)
    return add_router_losses(model, loss, metrics)


def sample_text(model: GPT, tokenizer, prompt: str, num_tokens: int, *, seed: int, **sampling) -> str:
    """`num_tokens` sampled after `prompt`, in chunks whose prompt is the recent context (as nanoGPT crops to the
    block size), since learned positions stop at max_len. The prompt starts with the special tokens a Hugging Face
    tokenizer puts first (`HFTokenizer.prefix_ids`: Gemma's `<bos>`, which its models need), as transformers'
    tokenizer(prompt) would."""
    max_len = model.config.max_len
    context = [*getattr(tokenizer, "prefix_ids", ()), *tokenizer.encode(prompt)] or [0]
    out: list[int] = []
    key = jax.random.key(seed)
    while len(out) < num_tokens:
        window = context[-(max_len // 2) :]
        chunk = min(max_len - len(window), num_tokens - len(out))
        key, sub = jax.random.split(key)
        new = generate(model, jnp.asarray([window], jnp.int32), chunk, rng=sub, **sampling)
        new = [int(t) for t in np.asarray(new[0])]
        out += new
        context += new
    return prompt + tokenizer.decode(np.asarray(out, np.int32))


class LanguageModelling(Task):
    model_class = GPT

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        cfg = config.data
        checks.check_positive_int("config.data.seq_len", cfg.seq_len)  # before any text is read
        self.tokenizer, self.train_tokens, self.eval_tokens = load_corpus(cfg)
        self.tokens_per_batch = config.batch_size * cfg.seq_len

    def train_data(self, rows: slice | None = None):
        return lm_train_data(self.config, self.train_tokens, rows)

    def model_fields(self) -> dict:
        return lm_model_fields(self.config, self.tokenizer)

    def activation_shape(self, model_cfg) -> tuple[int, int, int]:
        return self.config.data.seq_len, model_cfg.num_layers, model_cfg.vocab_size

    def loss(self, model, batch):
        return lm_loss(model, batch, label_smoothing=self.config.label_smoothing)

    def evaluate(self, eval_step, state, model) -> dict:
        """`val_loss`: mean next-token loss over every target of the validation text (padding not counted)."""
        cfg = self.config
        batches = data.pipeline.eval_windows(self.eval_tokens, batch_size=cfg.batch_size, seq_len=cfg.data.seq_len)
        return evaluate_batches(eval_step, state, batches, with_perplexity=True)

    def samples(self, model) -> str:
        sample = self.config.sample
        return sample_text(
            model,
            self.tokenizer,
            sample.prompt,
            sample.num_tokens,
            seed=self.config.seed,
            temperature=sample.temperature,
            top_k=min(sample.top_k, model.config.vocab_size) if sample.top_k else None,  # nanoGPT clamps it too
        )

    def save_assets(self, workdir: str) -> None:
        save_tokenizer(self.tokenizer, workdir)


def save_tokenizer(tokenizer: data.Tokenizer, workdir: str) -> None:
    """`workdir/tokenizer.json`, which `trained.load_trained` reads back with `data.tokenizer_from_dict`."""
    with open(os.path.join(workdir, "tokenizer.json"), "w") as f:
        json.dump(tokenizer.to_dict(), f)


def lm_model_fields(config: ml_collections.ConfigDict, tokenizer: data.Tokenizer) -> dict:
    """The vocabulary comes from the tokenizer and the context from `config.data.seq_len`."""
    return {"vocab_size": tokenizer.vocab_size, "max_len": config.data.seq_len}
