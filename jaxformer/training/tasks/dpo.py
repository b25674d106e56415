"""Direct preference optimisation (`config.task = "dpo"`, Rafailov et al. 2023): a decoder learns to prefer the
chosen reply of each pair over the rejected one, relative to a frozen reference.

    loss = -log sigmoid(beta * ((log pi(c) - log ref(c)) - (log pi(r) - log ref(r))))

log pi(y) is the sum of the policy's log-probabilities of the reply's tokens (the final assistant message and its
end-of-turn token: `ChatTemplate.encode(turns="last")`) after the prompt; ref is the same under the reference, the
starting model. When policy = reference the loss is log 2.

The reference: its log-probabilities of every pair (training and held-out) are computed once, from the starting
model in eval mode, before the first step (`prepare`), and written to `workdir/dpo_reference.npz`, which a resumed
run reads back. So no second copy of the model is held while training, with or without LoRA (a LoRA run starts
with B = 0: its starting model is the base without adapters), and each pair's reference costs one forward pass
in all rather than one per epoch.

Data (`defaults.chat_data`, `config.dpo.beta`): JSONL files of `{"prompt": messages, "chosen": message,
"rejected": message}` (`chat.read_preferences`), or `config.data.synthetic` (`synthetic_chat.preference_task`).
A pair is rendered by the chat template as prompt + reply and padded to `seq_len + 1` tokens; pairs where either
side is longer are dropped (the count is printed).

Metrics: `reward_margin` (the mean of beta * the bracket above), `reward_accuracy` (the share of pairs where it is
positive, also logged as `accuracy`), `chosen_reward` / `rejected_reward` (beta * (log pi - log ref)), `nll` (the
policy's mean per-token NLL of the chosen replies); validation: `val_loss`, `val_reward_accuracy`,
`val_reward_margin` over every held-out pair.
"""

from __future__ import annotations

import itertools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxformer import checks, data
from jaxformer.data import chat, synthetic_chat
from jaxformer.models import GPT
from jaxformer.training.tasks.base import Task, add_router_losses
from jaxformer.training.tasks.sft import data_files, greedy_replies, load_template, save_template

REFERENCE_FILE = "dpo_reference.npz"
SIDES = ("chosen", "rejected")


def encode_pairs(template: chat.ChatTemplate, pairs: list[dict], length: int) -> tuple[dict[str, np.ndarray], int]:
    """(arrays, dropped): `chosen` / `rejected` int32 `[N, length]` (prompt + reply, 0-padded), `chosen_mask` /
    `rejected_mask` bool `[N, length]` (the reply's tokens), for the pairs whose sides both fit `length`."""
    rows = {k: [] for k in ("chosen", "chosen_mask", "rejected", "rejected_mask")}
    dropped = 0
    for pair in pairs:
        sides = [template.encode([*pair["prompt"], pair[side]], turns="last") for side in SIDES]
        if max(len(ids) for ids, _ in sides) > length:
            dropped += 1
            continue
        for side, (ids, mask) in zip(SIDES, sides, strict=True):
            rows[side].append(np.pad(ids, (0, length - len(ids))))
            rows[f"{side}_mask"].append(np.pad(mask, (0, length - len(mask))))
    if not rows["chosen"]:
        raise ValueError(f"No preference pair fits seq_len + 1 = {length} tokens: raise config.data.seq_len.")
    return {k: np.stack(v) for k, v in rows.items()}, dropped


def sequence_logps(model: nnx.Module, ids: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(logps `[B]`, counts `[B]`): logps[b] = sum over t >= 1 of mask[b, t] * log p(ids[b, t] | ids[b, :t]), the
    log-probability of the masked tokens of row b of `ids [B, L]`, and counts[b] the number of tokens summed.
    Rows are right-padded (causal attention: the padding changes nothing before it)."""
    logits = model(ids[:, :-1]).astype(jnp.float32)  # [B, L - 1, V]
    logp = jax.nn.log_softmax(logits, axis=-1)
    picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]  # [B, L - 1]
    weights = mask[:, 1:].astype(jnp.float32)
    return jnp.sum(picked * weights, axis=-1), jnp.sum(weights, axis=-1)


def dpo_loss(model: nnx.Module, batch: dict, *, beta: float) -> tuple[jax.Array, dict]:
    """The DPO loss of `batch` (`chosen`, `rejected` `[B, L]`, their `_mask`s, `ref_chosen` / `ref_rejected`
    `[B]`, optional `pair_valid` `[B]`): both sides go through the model as one batch of 2B rows."""
    b = batch["chosen"].shape[0]
    ids = jnp.concatenate([batch["chosen"], batch["rejected"]])
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
    logps, counts = sequence_logps(model, ids, mask)
    chosen_reward = beta * (logps[:b] - batch["ref_chosen"])
    rejected_reward = beta * (logps[b:] - batch["ref_rejected"])
    margin = chosen_reward - rejected_reward
    valid = batch.get("pair_valid", jnp.ones((b,), bool)).astype(jnp.float32)
    pairs = jnp.maximum(jnp.sum(valid), 1.0)
    mean = lambda x: jnp.sum(x * valid) / pairs
    loss = mean(-jax.nn.log_sigmoid(margin))
    accuracy = mean((margin > 0).astype(jnp.float32))
    return add_router_losses(
        model,
        loss,
        {
            "nll": -jnp.sum(logps[:b] * valid) / jnp.maximum(jnp.sum(counts[:b] * valid), 1.0),
            "accuracy": accuracy,
            "tokens": jnp.sum(counts * jnp.concatenate([valid, valid])),
            "pairs": jnp.sum(valid),
            "reward_accuracy": accuracy,
            "reward_margin": mean(margin),
            "chosen_reward": mean(chosen_reward),
            "rejected_reward": mean(rejected_reward),
        },
    )


class PreferenceOptimization(Task):
    model_class = GPT
    train_metrics = ("reward_margin", "reward_accuracy", "chosen_reward", "rejected_reward")
    sequences_per_example = 2  # chosen and rejected go through the model as one batch of 2B rows

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        cfg = config.data
        seq_len = checks.check_positive_int("config.data.seq_len", cfg.seq_len)
        self.beta = checks.check_real("config.dpo.beta", config.dpo.beta, low=0.0, low_open=True)
        checks.check_nonnegative_int("config.data.eval_generate", cfg.eval_generate)
        self.template = load_template(config)
        self.tokenizer = self.template.tokenizer
        train, held_out = self.read_pairs()
        self.train_pairs, dropped = encode_pairs(self.template, train, seq_len + 1)
        self.eval_pairs, eval_dropped = encode_pairs(self.template, held_out, seq_len + 1)
        self.eval_prompts = [p["prompt"] for p in held_out]
        if dropped or eval_dropped:
            print(
                f"dpo: dropped {dropped} training and {eval_dropped} held-out pairs longer than {seq_len + 1} tokens."
            )
        self.tokens_per_batch = 2 * config.batch_size * seq_len
        self.reference: dict[str, np.ndarray] | None = None

    def read_pairs(self) -> tuple[list[dict], list[dict]]:
        cfg = self.config.data
        if cfg.synthetic:
            make = lambda n, split: synthetic_chat.preference_task(
                cfg.synthetic, num_examples=n, split=split, seed=self.config.seed
            )
            return make(cfg.num_train, "train"), make(cfg.num_eval, "eval")
        read = lambda spec, key: [p for f in data_files(spec, key) for p in chat.read_preferences(f)]
        return read(cfg.train_files, "config.data.train_files"), read(cfg.eval_files, "config.data.eval_files")

    def prepare(self, workdir: str, starting_model) -> None:
        """The reference log-probabilities of every pair: computed from the starting model on a fresh run and
        saved to `workdir/dpo_reference.npz`; read back from there on a resume."""
        path = os.path.join(workdir, REFERENCE_FILE)
        if starting_model is None:
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is missing: a resumed DPO run needs its reference log-probabilities.")
            with np.load(path) as f:
                self.reference = {k: f[k] for k in f.files}
            want = {"train_chosen": len(self.train_pairs["chosen"]), "eval_chosen": len(self.eval_pairs["chosen"])}
            if {k: len(self.reference[k]) for k in want} != want:
                raise ValueError(f"{path} holds log-probabilities for other pairs than this run's data.")
            return
        rows = {
            f"{split}_{side}": (arrays[side], arrays[f"{side}_mask"])
            for split, arrays in (("train", self.train_pairs), ("eval", self.eval_pairs))
            for side in SIDES
        }
        self.reference = reference_logps(starting_model(), rows, batch_size=self.config.batch_size)
        if jax.process_index() == 0:
            np.savez(path, **self.reference)

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        if self.reference is None:
            raise RuntimeError("DPO needs its reference log-probabilities first: Task.prepare (the training loop).")
        pairs = self.train_pairs if split == "train" else self.eval_pairs
        return {**pairs, **{f"ref_{side}": self.reference[f"{split}_{side}"] for side in SIDES}}

    def train_data(self, rows=None):
        cfg = self.config
        return data.pipeline.shuffled_examples(
            self.arrays("train"), batch_size=cfg.batch_size, seed=cfg.seed, rows=rows
        )

    def model_fields(self) -> dict:
        return {"vocab_size": self.tokenizer.vocab_size, "max_len": self.config.data.seq_len}

    def activation_shape(self, model_cfg) -> tuple[int, int, int]:
        return self.config.data.seq_len, model_cfg.num_layers, model_cfg.vocab_size

    def loss(self, model, batch):
        return dpo_loss(model, batch, beta=self.beta)

    def evaluate(self, eval_step, state, model) -> dict:
        """`val_loss`, `val_reward_accuracy` and `val_reward_margin` over every held-out pair."""
        outputs = []
        for batch, valid in data.pipeline.padded_examples(self.arrays("eval"), batch_size=self.config.batch_size):
            outputs.append(eval_step(state, {**batch, "pair_valid": valid}))
        rows = jax.device_get(outputs)
        pairs = sum(float(m["pairs"]) for m in rows)
        mean = lambda key: sum(float(m[key]) * float(m["pairs"]) for m in rows) / pairs
        return {
            "val_loss": mean("loss"),
            "val_reward_accuracy": mean("reward_accuracy"),
            "val_reward_margin": mean("reward_margin"),
        }

    def samples(self, model) -> str:
        """Greedy replies to the first min(10, `config.data.eval_generate`) held-out prompts (those leaving
        `max_new_tokens` of room)."""
        if not self.config.data.eval_generate:
            return ""
        width = model.config.max_len - self.config.data.max_new_tokens
        fitting = (ids for ids in map(self.template.encode_prompt, self.eval_prompts) if len(ids) <= width)
        encoded = list(itertools.islice(fitting, min(10, self.config.data.eval_generate)))
        replies = greedy_replies(model, self.template, encoded, max_new_tokens=self.config.data.max_new_tokens)
        decode = self.template.tokenizer.decode
        return "\n".join(f"{decode(ids)}{r!r}\n" for ids, r in zip(encoded, replies, strict=True))

    def save_assets(self, workdir: str) -> None:
        save_template(self.template, workdir)


def reference_logps(
    model: nnx.Module, rows: dict[str, tuple[np.ndarray, np.ndarray]], *, batch_size: int
) -> dict[str, np.ndarray]:
    """{name: float32 `[N]`}: `sequence_logps` of every row of each (ids `[N, L]`, mask `[N, L]`) of `rows`,
    `batch_size` rows at a time through one compiled program (the entries share L)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, ids, mask):
        return sequence_logps(nnx.merge(graphdef, state), ids, mask)[0]

    out = {}
    for name, (ids, mask) in rows.items():
        parts = []
        for batch, valid in data.pipeline.padded_examples({"ids": ids, "mask": mask}, batch_size=batch_size):
            parts.append(np.asarray(run(state, batch["ids"], batch["mask"]))[valid])
        out[name] = np.concatenate(parts).astype(np.float32)
    return out
