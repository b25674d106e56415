"""A Scorer for a checkpoint (a directory or hub id, with a LoRA adapter) or a jaxformer training run's workdir."""

from __future__ import annotations

import json
import os

import jax
from flax import nnx
from jax.sharding import Mesh

from jaxformer import data, hub, pretrained, sharding
from jaxformer.data.chat import CONFIG_FILE, special_tokens_of
from jaxformer.evaluation.scoring import Scorer
from jaxformer.training import trained

GENERATION_CONFIG = "generation_config.json"


def load(
    pretrained_path: str | os.PathLike | None = None,
    *,
    adapter: str | os.PathLike | None = None,
    workdir: str | os.PathLike | None = None,
    dtype=None,
    mesh: Mesh | None = None,
    **scorer_args,
) -> Scorer:
    """A `Scorer` for exactly one of `pretrained_path` (a Hugging Face checkpoint directory or hub id, optionally
    with a LoRA `adapter` in peft's layout) and `workdir` (a jaxformer language-model run: its newest intact
    checkpoint and its tokenizer).

    From a checkpoint, the special tokens are tokenizer_config.json's `bos_token` / `eos_token`, and generation
    stops at generation_config.json's `eos_token_id` (else config.json's), as transformers' `generate` does: a
    checkpoint that names none is not stopped by its eos token (its text is cut at the eos string still).
    From a chat run (task "sft" / "dpo"), they are its chat template's; a run with a character, byte or
    SentencePiece tokenizer has none (pass `prefix_id=` for rolling log-likelihoods).
    dtype: parameters and computation in this dtype (checkpoints only; None keeps the checkpoint's).
    mesh: the model's parameters split over it by the logical-axis rules, and each batch over its data axes.
    scorer_args: `Scorer`'s (batch_size, max_length, max_gen_toks, prefix_id, add_special_tokens, seed).
    """
    if (pretrained_path is None) == (workdir is None):
        raise ValueError("Pass exactly one of `pretrained_path` (a checkpoint directory or hub id) and `workdir`.")
    if adapter is not None and pretrained_path is None:
        raise ValueError("`adapter` needs `pretrained_path`: the base model the adapter was trained on.")
    if workdir is not None:
        if dtype is not None:
            raise ValueError("`dtype` applies to checkpoints; a workdir's model computes in its training config's.")
        model, tokenizer, _ = trained.load_trained(os.fspath(workdir))
        if mesh is not None:
            _place(model, mesh)
        special = _run_special_tokens(os.fspath(workdir))
        ids = {key: _token_id(tokenizer, special.get(key)) for key in ("bos_token", "eos_token")}
        return Scorer(model, tokenizer, bos_id=ids["bos_token"], eos_id=ids["eos_token"], mesh=mesh, **scorer_args)
    directory = hub.resolve(pretrained_path)
    model = pretrained.from_pretrained(directory, dtype=dtype, mesh=mesh, adapter=adapter)
    tokenizer = data.HFTokenizer.from_directory(directory)
    special = special_tokens_of(_read_json(os.path.join(directory, CONFIG_FILE)))
    bos_id = _token_id(tokenizer, special.get("bos_token"))
    eos_id = _token_id(tokenizer, special.get("eos_token"))
    return Scorer(
        model,
        tokenizer,
        bos_id=bos_id,
        eos_id=eos_id,
        stop_ids=generation_stop_ids(directory),
        mesh=mesh,
        **scorer_args,
    )


def generation_stop_ids(directory: str) -> tuple[int, ...]:
    """The token ids that end `generate` for a checkpoint: generation_config.json's `eos_token_id` if it names any,
    else config.json's (an int or a list; none when neither does)."""
    for name in (GENERATION_CONFIG, "config.json"):
        value = _read_json(os.path.join(directory, name)).get("eos_token_id")
        if value is not None:
            return tuple(value) if isinstance(value, list) else (value,)
    return ()


def _run_special_tokens(workdir: str) -> dict[str, str]:
    try:
        return dict(trained.load_chat_template(workdir).special_tokens)
    except FileNotFoundError:  # not a chat run: a text run's tokenizer names no special tokens
        return {}


def _token_id(tokenizer, token: str | None) -> int | None:
    if token is None or not isinstance(tokenizer, data.HFTokenizer):
        return None
    return tokenizer.token_id(token)


def _read_json(path: str) -> dict:
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _place(model: nnx.Module, mesh: Mesh) -> None:
    """Splits a model's state over `mesh` by the logical-axis rules (what `from_pretrained(mesh=)` does as it
    reads a checkpoint)."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, sharding.named(mesh, sharding.param_specs(state, mesh))))
