"""Scoring text with a jaxformer language model: what lm-evaluation-harness asks of a model, computed in JAX.

    scorer = Scorer(model, tokenizer, batch_size=8)                 # a GPT and its tokenizer
    scorer.loglikelihood([("The capital of France is", " Paris")])  # [(log p(continuation | context), is_greedy)]
    scorer.loglikelihood_rolling(["a text longer than the context ..."])   # [log p(text)], windowed
    scorer.generate_until([("Q: 2+2=\\nA:", {"until": ["\\n"], "max_gen_toks": 8})])   # ["4"]

Each request kind follows lm_eval's `hf` backend (lm_eval/models/huggingface.py), so that scores are comparable:

- **Tokens.** A text is encoded with the tokenizer's own special tokens (a Llama-style tokenizer puts `<s>` first;
  not when the text already starts with it). A (context, continuation) pair is encoded whole and split where the
  context's encoding ends; trailing spaces of the context move to the continuation. An empty context is the prefix
  token (bos, else eos).
- **Log-likelihood.** The model reads `(context + continuation)[-(L+1):][:-1]` (L = `max_length`, the checkpoint's
  context length): the context is cut from the left to fit. The score is the sum of the continuation tokens'
  log-probabilities (float32 log-softmax), and `is_greedy` whether every one of them is the argmax.
- **Rolling log-likelihood** (perplexity): `rolling_windows`, scored as above and summed per text.
- **Generation**: the prompt cut from the left to `L - max_gen_toks` tokens, greedy (or sampled when the request
  says `do_sample`), at most `max_gen_toks` new tokens, stopping at the checkpoint's end-of-sequence ids; the
  text is decoded without special tokens and cut at the first stop string (`until`, plus the eos token's text).

Batching: requests are sorted by length and run `batch_size` rows at a time, each batch padded on the right to a
length bucket (16, 24, 32, 48, 64, 96, ...: powers of two and 1.5 times them, capped at L) and to a full batch, so
that a whole evaluation compiles a few programs (`Scorer.stats` counts them and their seconds). The choices of a
multiple-choice question share their context: it is prefilled once into a KV cache, which each choice extends
(4 choices cost about one context, not four). The output head runs only on
the positions that are scored (the last k of each row, k the longest continuation rounded up to a power of two),
not on the whole context. On a mesh (`mesh=`), each batch is split over its data axes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxformer import checks, data, sharding
from jaxformer.decoding import generate_stream
from jaxformer.decoding.generate import check_decoder_only
from jaxformer.evaluation import programs
from jaxformer.nn.blocks import ABSOLUTE_POSITIONAL

MIN_BUCKET = 16  # the shortest padded length: shorter buckets would only add compiles
STREAM_CHUNK = 16  # tokens generated between two looks for a stop string


def rolling_windows(
    tokens: Sequence[int], prefix_token: int, max_length: int, stride: int | None = None
) -> list[tuple[list[int], list[int]]]:
    """A text's tokens as (context, continuation) windows whose continuations, in order, are every token once.

    The first window reads the prefix token and predicts the first `min(L, N)` tokens (L = `max_length`); each
    later one predicts the next `stride` tokens (default L) reading the `L - stride` before them, so every window
    but the first reads L tokens; the last, partial window of p tokens reads the L - p before it. With the default
    stride these are lm_eval's windows (`get_rolling_token_windows` with context_len=1, then `make_disjoint_window`);
    a smaller stride gives each prediction more context (Hugging Face's "perplexity of fixed-length models") at
    L / stride times the compute.

    tokens: N >= 0 token ids. Returns the windows as (context, continuation) lists: scoring a window reads
    `(context + continuation)[:-1]` (at most L tokens) and scores the continuation.
    """
    max_length = checks.check_positive_int("max_length", max_length)
    stride = max_length if stride is None else checks.check_int("stride", stride, low=1, high=max_length)
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(max_length, len(tokens))
    windows = [([prefix_token], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        p = min(stride, len(tokens) - predicted)
        end = predicted + p
        windows.append((tokens[end - max_length - 1 : end - p], tokens[end - p : end]))
        predicted = end
    return windows


@dataclasses.dataclass
class Stats:
    """What a Scorer did: `compiles` (XLA programs compiled while it ran: scoring buckets, generation, and any
    small program run eagerly) and their `compile_seconds` (tracing + lowering + compiling), the `rows` run through
    the model, the `requests` they answered, and the `tokens` in those rows against the `slots` they were padded to.
    """

    compiles: int = 0
    compile_seconds: float = 0.0
    rows: int = 0
    requests: int = 0
    tokens: int = 0
    slots: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        fill = f", {self.tokens / self.slots:.0%} of padded slots real" if self.slots else ""
        return (
            f"{self.requests} requests in {self.seconds:.1f} s: {self.compiles} programs compiled "
            f"({self.compile_seconds:.1f} s), {self.rows} model rows{fill}"
        )


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_counting: list[Stats] = []  # the Stats of the Scorer call now running (the listener adds to it)
_listening = False


def _on_event(event: str, duration: float, **_) -> None:
    if _counting and event in _COMPILE_EVENTS:
        _counting[-1].compile_seconds += duration
        _counting[-1].compiles += event == _COMPILE_EVENTS[-1]


class _Counting:
    """Within it, jax's compile events are added to `stats`; the wall time too."""

    def __init__(self, stats: Stats):
        global _listening
        if not _listening:
            jax.monitoring.register_event_duration_secs_listener(_on_event)
            _listening = True
        self.stats = stats

    def __enter__(self):
        _counting.append(self.stats)
        self.start = time.perf_counter()

    def __exit__(self, *exc):
        _counting.pop()
        self.stats.seconds += time.perf_counter() - self.start


class Scorer:
    """A decoder-only jaxformer model (`GPT`) with its tokenizer, answering lm_eval's three request kinds.

    model: a `GPT` (e.g. `pretrained.from_pretrained(...)`, `training.trained.load_trained(...)[0]`); scored in
      evaluation mode (no dropout), on a copy: the model's own mode is left as it is.
    tokenizer: a jaxformer tokenizer (`data.HFTokenizer` for checkpoints; char / byte / SentencePiece for runs
      trained here).
    batch_size: rows per model call (a multiple of the mesh's data x fsdp x expert devices with `mesh`).
    max_length: the context length L (default: the model's `config.max_len`, the checkpoint's
      max_position_embeddings / n_positions, as lm_eval reads it).
    max_gen_toks: new tokens per generation request unless the request says otherwise (lm_eval's default 256).
    bos_id, eos_id: the tokenizer's special tokens (`load` reads them from tokenizer_config.json). The prefix of
      an empty context and of rolling windows is `prefix_id`, default bos, else eos.
    stop_ids: the token ids that end a generation (default: eos_id); a checkpoint's generation_config.json names
      them (`load`).
    add_special_tokens: None encodes with the tokenizer's own special tokens (Hugging Face tokenizers' default);
      False / True as transformers' `add_special_tokens` (lm_eval's `add_bos_token`).
    mesh: a device mesh the model lives on (`pretrained.from_pretrained(mesh=)`): batches are split over its
      data axes.
    seed: the key of sampled generations.
    """

    def __init__(
        self,
        model: nnx.Module,
        tokenizer: data.Tokenizer,
        *,
        batch_size: int = 8,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        bos_id: int | None = None,
        eos_id: int | None = None,
        prefix_id: int | None = None,
        stop_ids: Sequence[int] | None = None,
        add_special_tokens: bool | None = None,
        mesh: Mesh | None = None,
        seed: int = 0,
    ):
        check_decoder_only(model, "Scorer")
        if not isinstance(tokenizer, data.Tokenizer):
            raise TypeError(
                f"`tokenizer` must be a jaxformer tokenizer (data.Tokenizer); got {type(tokenizer).__name__}."
            )
        cfg = model.config
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = checks.check_positive_int("batch_size", batch_size)
        self.max_length = cfg.max_len if max_length is None else checks.check_positive_int("max_length", max_length)
        if cfg.positional in ABSOLUTE_POSITIONAL and self.max_length > cfg.max_len:
            raise ValueError(
                f"max_length={self.max_length} exceeds the model's max_len={cfg.max_len}, where its learned "
                f"positions end (positional={cfg.positional!r})."
            )
        self.max_gen_toks = checks.check_positive_int("max_gen_toks", max_gen_toks)
        vocab = tokenizer.vocab_size
        token = lambda name, value: None if value is None else checks.check_token_id(name, value, vocab)
        self.bos_id, self.eos_id = token("bos_id", bos_id), token("eos_id", eos_id)
        self.prefix_id = token("prefix_id", prefix_id)
        if self.prefix_id is None:
            self.prefix_id = self.bos_id if self.bos_id is not None else self.eos_id
        stops = (() if self.eos_id is None else (self.eos_id,)) if stop_ids is None else tuple(stop_ids)
        self.stop_ids = tuple(token("stop_ids", s) for s in stops)
        if add_special_tokens is not None and not isinstance(add_special_tokens, bool):
            raise TypeError(f"`add_special_tokens` must be None, True or False; got {add_special_tokens!r}.")
        self.add_special_tokens = add_special_tokens
        if mesh is not None:
            if not isinstance(mesh, Mesh):
                raise TypeError(f"`mesh` must be a jax.sharding.Mesh or None; got {type(mesh).__name__}.")
            sharding.check_batch_size(self.batch_size, mesh, "batch_size")
        self.mesh = mesh
        self.seed = checks.check_int("seed", seed)
        self.stats = Stats()
        evaluated = nnx.merge(*nnx.split(model))  # a copy in eval mode: the caller's model keeps its mode
        evaluated.eval()
        self._graphdef, self._state = nnx.split(evaluated)
        self._prefix_text = None if self.prefix_id is None else self._decode([self.prefix_id], skip_special=False)

    # -- text <-> tokens -------------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool | None = None) -> list[int]:
        """`text`'s token ids as lm_eval's hf backend encodes them (`tok_encode`): with the tokenizer's special
        tokens unless `add_special_tokens` (or the Scorer's) says otherwise, and without them when the text
        already starts with the prefix token's text."""
        if not isinstance(text, str):
            raise TypeError(f"`text` must be a str; got {type(text).__name__}.")
        add = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        if add_special_tokens is None and self._prefix_text and text.startswith(self._prefix_text):
            add = False
        if isinstance(self.tokenizer, data.HFTokenizer):
            return self.tokenizer.encode(text, add_special_tokens=True if add is None else add).tolist()
        return self.tokenizer.encode(text).tolist()  # no special tokens of its own

    def _decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        if isinstance(self.tokenizer, data.HFTokenizer):
            return self.tokenizer.decode(np.asarray(ids, np.int32), skip_special_tokens=skip_special)
        return self.tokenizer.decode(np.asarray(ids, np.int32))

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids) as lm_eval splits a pair: trailing spaces of the context move to the
        continuation, the two are encoded together and split where the context's own encoding ends; an empty
        context is the prefix token (or the continuation's first token when that is the prefix already)."""
        if not isinstance(context, str) or not isinstance(continuation, str):
            raise TypeError(
                f"A log-likelihood request is (context: str, continuation: str); got ({type(context).__name__}, "
                f"{type(continuation).__name__})."
            )
        if context == "":
            cont = self.encode(continuation, add_special_tokens=False)
            if not cont:
                raise ValueError("A log-likelihood request with an empty context needs a non-empty continuation.")
            prefix = self._prefix("a request with an empty context")
            return ([prefix], cont) if cont[0] != prefix else (cont[:1], cont[1:])
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.encode(context + continuation)
        context_ids = self.encode(context)
        return context_ids, whole[len(context_ids) :]

    def _prefix(self, what: str) -> int:
        if self.prefix_id is None:
            raise ValueError(
                f"{what} starts from the prefix token (bos, else eos), and this tokenizer has neither: pass "
                "prefix_id= (e.g. the id of a newline for a character-level model)."
            )
        return self.prefix_id

    # -- the three request kinds -----------------------------------------------------------------------------

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """[(log p(continuation | context), is_greedy)] for (context, continuation) text pairs."""
        pairs = [self.encode_pair(*_pair(request, i)) for i, request in enumerate(requests)]
        return self.loglikelihood_tokens(pairs)

    def loglikelihood_rolling(self, texts: Sequence[str], *, stride: int | None = None) -> list[float]:
        """[log p(text)] for whole texts (the prefix token first), over `rolling_windows` of the model's context."""
        prefix = self._prefix("Rolling log-likelihood") if texts else None
        windows, owner = [], []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str; got {type(text).__name__}.")
            for window in rolling_windows(self.encode(text), prefix, self.max_length, stride):
                windows.append(window)
                owner.append(i)
        totals = [0.0] * len(texts)
        for i, (logprob, _) in zip(owner, self.loglikelihood_tokens(windows), strict=True):
            totals[i] += logprob
        return totals

    def loglikelihood_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """[(sum of log p(continuation tokens), all greedy)] for (context ids, continuation ids) pairs: the model
        reads `(context + continuation)[-(L+1):][:-1]`.

        Requests whose contexts are equal and whole (the choices of a multiple-choice question) run their context
        once: it is prefilled into a KV cache, which each continuation then extends (`_score_choices`), instead of
        one full row per choice. Other requests run as rows, identical rows once (`_score`)."""
        L = self.max_length
        pairs = []
        for i, (context, continuation) in enumerate(requests):
            context, continuation = list(context), list(continuation)
            if not context or not continuation:
                raise ValueError(
                    f"requests[{i}] needs a non-empty context and continuation; got {len(context)} and "
                    f"{len(continuation)} tokens."
                )
            if len(continuation) > L:
                raise ValueError(
                    f"requests[{i}]'s continuation has {len(continuation)} tokens, more than max_length={L}."
                )
            pairs.append((context, continuation))
        contexts: dict[tuple[int, ...], list[int]] = {}  # a whole (uncut) context -> its requests
        for i, (context, continuation) in enumerate(pairs):
            if len(context) + len(continuation) <= L + 1 and len(continuation) <= programs.HEAD_CHUNK:
                contexts.setdefault(tuple(context), []).append(i)
        shared = {c: m for c, m in contexts.items() if len({tuple(pairs[i][1]) for i in m}) > 1}
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        with _Counting(self.stats):
            if shared:
                self._score_choices(shared, pairs, results)
            rest = [i for i in range(len(pairs)) if results[i] is None]
            self._score_rows(rest, pairs, results)
            self.stats.requests += len(requests)
        return results  # type: ignore[return-value]

    def _score_rows(self, members: list[int], pairs: list, results: list) -> None:
        """Each request as one row `(context + continuation)[-(L+1):][:-1]`; requests with equal rows share it."""
        L = self.max_length
        rows: dict[tuple[int, ...], list[int]] = {}  # model input -> the requests it answers
        targets = {}
        for i in members:
            context, continuation = pairs[i]
            whole = (context + continuation)[-(L + 1) :]
            rows.setdefault(tuple(whole[:-1]), []).append(i)
            targets[i] = (whole[-1], len(continuation))
        order = sorted(rows, key=len, reverse=True)  # longest first, as lm_eval: padding stays small
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            span = max(targets[i][1] for inputs in batch for i in rows[inputs])
            token_lp, greedy, last_lp, last_argmax = self._score(batch, span)
            k = token_lp.shape[1]
            for b, inputs in enumerate(batch):
                for i in rows[inputs]:
                    last, count = targets[i]
                    lp = float(np.sum(token_lp[b, k - count : k - 1], dtype=np.float64) + last_lp[b, last])
                    results[i] = (lp, bool(greedy[b, k - count : k - 1].all() and last_argmax[b] == last))

    def _score_choices(self, shared: dict[tuple[int, ...], list[int]], pairs: list, results: list) -> None:
        """Requests grouped by a shared whole context: `batch_size` contexts at a time, each prefilled once, then
        its continuations (padded to the batch's most choices and longest continuation) scored over its cache."""
        cfg = self.model.config
        order = sorted(shared, key=len, reverse=True)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            T = _bucket(len(batch[0]), self.max_length)
            C = max(len(shared[c]) for c in batch)
            K = 1 << (max(len(pairs[i][1]) for c in batch for i in shared[c]) - 1).bit_length()
            if cfg.positional in ABSOLUTE_POSITIONAL and T + K > cfg.max_len:
                continue  # learned positions end before the cache would: these run as rows (`_score_rows`)
            contexts, lengths = self._pad(batch, T)
            continuations = np.zeros((self.batch_size, C, K), np.int32)
            for b, context in enumerate(batch):
                for c, i in enumerate(shared[context]):
                    continuation = pairs[i][1]
                    continuations[b, c, : len(continuation)] = continuation
                    self.stats.tokens += len(continuation)
            self.stats.slots += continuations.size
            placed = self._place({"contexts": contexts, "lengths": lengths, "continuations": continuations})
            first_lp, first_argmax, token_lp, greedy = jax.device_get(
                programs.score_choices(self._graphdef, self._state, **placed, cache_len=T + K)
            )
            for b, context in enumerate(batch):
                for c, i in enumerate(shared[context]):
                    continuation = pairs[i][1]
                    n = len(continuation)
                    lp = float(first_lp[b, continuation[0]] + np.sum(token_lp[b, c, : n - 1], dtype=np.float64))
                    results[i] = (lp, bool(first_argmax[b] == continuation[0] and greedy[b, c, : n - 1].all()))

    def _score(self, batch: list[tuple[int, ...]], span: int):
        """Runs one batch of model inputs (each at most L tokens) padded to [batch_size, bucket]; the head runs on
        the last `span` positions of each row (rounded up to a power of two), where the continuations are."""
        T = _bucket(len(batch[0]), self.max_length)
        k = min(1 << (span - 1).bit_length(), T)
        placed = self._place(dict(zip(("tokens", "lengths"), self._pad(batch, T), strict=True)))
        return jax.device_get(programs.score_tokens(self._graphdef, self._state, **placed, k=k))

    def _pad(self, sequences: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
        """`sequences` right-padded into int32 [batch_size, length] and their lengths [batch_size] (rows past them:
        zeros of length 1), counted in `stats`."""
        tokens = np.zeros((self.batch_size, length), np.int32)
        lengths = np.ones((self.batch_size,), np.int32)
        for b, sequence in enumerate(sequences):
            tokens[b, : len(sequence)] = sequence
            lengths[b] = len(sequence)
        self.stats.rows += len(sequences)
        self.stats.tokens += sum(len(sequence) for sequence in sequences)
        self.stats.slots += tokens.size
        return tokens, lengths

    def _place(self, arrays: dict) -> dict:
        """A batch's arrays split over the mesh's data axes (as the parameters are over the mesh), if any."""
        return arrays if self.mesh is None else sharding.shard_batch(arrays, self.mesh)

    def generate_until(self, requests: Sequence[tuple[str, Mapping]]) -> list[str]:
        """[generated text] for (context, gen_kwargs) requests as lm_eval writes them: `until` (a str or a list
        of stop strings), `max_gen_toks` (or max_new_tokens / max_tokens), `do_sample`, `temperature`, `top_k`,
        `top_p`. Requests with the same settings are batched together."""
        groups: dict[tuple, list[int]] = {}
        settings = []
        for i, request in enumerate(requests):
            context, kwargs = _generation_request(request, i)
            setting = self._generation_settings(kwargs, i)
            settings.append((context, setting))
            groups.setdefault(setting, []).append(i)
        results: list[str | None] = [None] * len(requests)
        with _Counting(self.stats):
            for setting, members in groups.items():
                until, max_gen_toks, sampling = setting[0], setting[1], dict(setting[2])
                max_context = self.max_length - max_gen_toks
                if max_context < 1:
                    raise ValueError(
                        f"A generation request asks for max_gen_toks={max_gen_toks} new tokens, which leaves no room "
                        f"for a prompt in max_length={self.max_length}."
                    )
                prompts = {i: self.encode(settings[i][0])[-max_context:] for i in members}
                for i, prompt in prompts.items():
                    if not prompt:
                        prompts[i] = [self._prefix("A generation request with an empty prompt")]
                order = sorted(members, key=lambda i: len(prompts[i]), reverse=True)
                for start in range(0, len(order), self.batch_size):
                    batch = order[start : start + self.batch_size]
                    texts = self._generate([prompts[i] for i in batch], until, max_gen_toks, sampling)
                    for i, text in zip(batch, texts, strict=True):
                        results[i] = text
            self.stats.requests += len(requests)
        return results  # type: ignore[return-value]

    def _generation_settings(self, kwargs: Mapping, index: int) -> tuple:
        """(until, max_gen_toks, sampling items): lm_eval's normalize_gen_kwargs + handle_stop_sequences."""
        kwargs = dict(kwargs)
        until = kwargs.pop("until", None)
        until = [until] if isinstance(until, str) else list(until or [])
        if not all(isinstance(u, str) for u in until):
            raise TypeError(f"requests[{index}]'s `until` must be a str or a list of str; got {until!r}.")
        if self.eos_id is not None:
            eos = self._decode([self.eos_id], skip_special=False)
            if eos not in until:
                until.append(eos)
        max_gen_toks = self.max_gen_toks
        for alias in ("max_completion_tokens", "max_tokens", "max_new_tokens", "max_gen_toks"):  # lowest first
            if kwargs.get(alias) is not None:
                max_gen_toks = kwargs[alias]
            kwargs.pop(alias, None)
        max_gen_toks = checks.check_positive_int(f"requests[{index}]'s max_gen_toks", max_gen_toks)
        temperature = float(kwargs.pop("temperature", 0.0))
        do_sample = kwargs.pop("do_sample", None)
        if do_sample is None:  # lm_eval's rule: sampling when a temperature is given
            do_sample = temperature > 0
        top_k, top_p = kwargs.pop("top_k", None), kwargs.pop("top_p", None)
        if "max_length" in kwargs:
            raise ValueError(
                f"requests[{index}] sets max_length (prompt + new tokens in transformers); set max_gen_toks instead."
            )
        if kwargs:
            raise ValueError(f"requests[{index}] has generation settings jaxformer does not compute: {sorted(kwargs)}.")
        if not do_sample:
            return tuple(until), max_gen_toks, (("temperature", 0.0),)
        if temperature <= 0:  # as transformers' generate refuses it
            raise ValueError(f"requests[{index}] samples (do_sample) at temperature={temperature}; give one > 0.")
        sampling = (("temperature", temperature), ("top_k", top_k), ("top_p", top_p))
        return tuple(until), max_gen_toks, sampling

    def _generate(self, prompts: list[list[int]], until: tuple[str, ...], max_gen_toks: int, sampling: dict):
        # Prompts padded to a bucket, but never past L - max_gen_toks (which they fit): the cache then holds the
        # new tokens within the model's context.
        P = min(_bucket(max(len(p) for p in prompts), self.max_length), self.max_length - max_gen_toks)
        tokens, lengths = self._pad(prompts, P)
        rng = jax.random.key(self.seed + self.stats.rows)
        out: list[list[int]] = [[] for _ in prompts]
        finished = [False] * len(prompts)
        placed = self._place({"tokens": tokens, "lengths": lengths})
        tokens, lengths = placed["tokens"], placed["lengths"]
        stream = generate_stream(
            self.model,
            tokens,
            max_gen_toks,
            rng=rng,
            chunk_size=STREAM_CHUNK,
            eos_id=self.stop_ids or None,
            prompt_lengths=lengths,
            **sampling,
        )
        for chunk in stream:
            chunk = np.asarray(chunk)
            for b in range(len(prompts)):
                if finished[b]:
                    continue
                row = chunk[b].tolist()
                stop = next((k for k, t in enumerate(row) if t in self.stop_ids), None)
                out[b] += row if stop is None else row[:stop]
                finished[b] = stop is not None or any(u and u in self._decode(out[b]) for u in until)
            if all(finished):
                break
        texts = []
        for ids in out:
            text = self._decode(ids)
            for u in until:
                if u:
                    text = text.split(u)[0]
            texts.append(text)
        return texts


def _bucket(n: int, max_length: int) -> int:
    """The padded length of n tokens: the next of 16, 24, 32, 48, 64, 96, ... (powers of two and 1.5 times them:
    at most a third of a row is padding), at most max_length."""
    size = max(MIN_BUCKET, 1 << (n - 1).bit_length())
    if size * 3 // 4 >= max(n, MIN_BUCKET):
        size = size * 3 // 4
    return min(size, max_length)


def _pair(request, index: int) -> tuple[str, str]:
    if not isinstance(request, tuple | list) or len(request) != 2:
        raise TypeError(f"requests[{index}] must be a (context, continuation) pair; got {request!r:.80}.")
    return request[0], request[1]


def _generation_request(request, index: int) -> tuple[str, Mapping]:
    if not isinstance(request, tuple | list) or len(request) != 2 or not isinstance(request[0], str):
        raise TypeError(f"requests[{index}] must be a (context: str, gen_kwargs: dict) pair; got {request!r:.80}.")
    if not isinstance(request[1], Mapping):
        raise TypeError(f"requests[{index}]'s generation settings must be a dict; got {type(request[1]).__name__}.")
    return request[0], request[1]
