"""Chat templates: a conversation rendered exactly as the model was trained, and the tokens it learns from.

    template = chat.ChatTemplate.from_pretrained(dir_or_id)   # the checkpoint's jinja2 template + tokenizer.json
    text = template.render(messages)                          # == transformers' apply_chat_template(tokenize=False)
    ids, mask = template.encode(messages)                     # int32 [T], bool [T]: True on the tokens learned
    prompt = template.encode_prompt(messages)                 # int32 [P]: ends with the assistant's header

`messages` is the list everyone uses: `[{"role": "system" | "user" | "assistant", "content": str}, ...]`.

Rendering follows `transformers` to the character (it is what the checkpoints were trained with): jinja2's
sandboxed environment with `trim_blocks` and `lstrip_blocks`, `raise_exception`, `strftime_now`, a `tojson` that
does not escape HTML, and the tokenizer's named special tokens (`bos_token`, `eos_token`, ...) as strings. Token
ids are the tokenizer's ids of the rendered text with no special tokens added (the template writes them).

Which tokens are learned (`encode`'s mask) is found from the template's structure, not by searching for the
reply's text (templates trim content, and a reply may repeat a user's words): see `ChatTemplate.assistant_spans`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.sandbox
import numpy as np

from jaxformer import checks, hub
from jaxformer.data.hf_tokenizer import HFTokenizer

ROLES = ("system", "user", "assistant")
TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"
# The named special tokens transformers passes to a template (`special_tokens_map`), as strings.
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


class ChatTemplateError(ValueError):
    """The template cannot be used as asked: it raised (`raise_exception`), or the assistant's tokens cannot be
    located in what it renders."""


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """A jinja2 chat template with the tokenizer and special tokens it is rendered with.

    source: the template's jinja2 text. tokenizer: the checkpoint's `HFTokenizer` (its offsets place the learned
    tokens). special_tokens: the strings the template reads as `bos_token`, `eos_token`, ... (absent ones are not
    defined in the template, as in transformers).
    """

    source: str
    tokenizer: HFTokenizer
    special_tokens: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.source, str):
            raise TypeError(f"`source` must be a jinja2 template string; got {type(self.source).__name__}.")
        if not self.source.strip():
            raise ValueError(f"`source` must be a non-empty jinja2 template; got {self.source!r}.")
        if not isinstance(self.tokenizer, HFTokenizer):
            raise TypeError(f"`tokenizer` must be a data.HFTokenizer; got {type(self.tokenizer).__name__}.")
        for key, value in dict(self.special_tokens).items():
            if key not in SPECIAL_TOKENS or not isinstance(value, str):
                raise ValueError(f"`special_tokens` maps {SPECIAL_TOKENS} to strings; got {key!r}: {value!r}.")
        object.__setattr__(self, "special_tokens", dict(self.special_tokens))
        object.__setattr__(self, "_compiled", _environment().from_string(self.source))

    # -- construction ------------------------------------------------------------------------------------------

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> ChatTemplate:
        """The template of a checkpoint directory: `chat_template.jinja` if present (transformers' priority too),
        else tokenizer_config.json's `"chat_template"` (a string, or a list of named templates: the one named
        "default"); with that directory's tokenizer.json and tokenizer_config.json's special tokens (an AddedToken
        dict is unwrapped to its `content`)."""
        directory = os.fspath(directory)
        config_path = os.path.join(directory, CONFIG_FILE)
        config = {}
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        template_path = os.path.join(directory, TEMPLATE_FILE)
        if os.path.isfile(template_path):
            with open(template_path, encoding="utf-8") as f:
                source = f.read()
        else:
            source = _template_from_config(config.get("chat_template"), config_path)
        return cls(source, HFTokenizer.from_directory(directory), special_tokens_of(config))

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike) -> ChatTemplate:
        """`from_directory` of a local directory or a hub id (its tokenizer and template files only, downloaded into
        huggingface_hub's cache: `hub.resolve`)."""
        return cls.from_directory(hub.resolve(path_or_id, files=hub.TOKENIZER_FILES))

    def save(self, directory: str | os.PathLike) -> None:
        """Writes `chat_template.jinja`, `tokenizer.json` and a tokenizer_config.json with the special tokens (the
        files `from_directory` reads, in transformers' layout)."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, TEMPLATE_FILE), "w", encoding="utf-8") as f:
            f.write(self.source)
        self.tokenizer.save(directory)
        config_path = os.path.join(directory, CONFIG_FILE)
        config = {}
        if os.path.isfile(config_path):
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        config.pop("chat_template", None)  # the .jinja file holds it
        config.update(self.special_tokens)
        with open(config_path, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, ensure_ascii=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: the template, the special tokens and the tokenizer (for a training run's assets)."""
        return {"source": self.source, "special_tokens": self.special_tokens, "tokenizer": self.tokenizer.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChatTemplate:
        if not isinstance(d, Mapping) or not {"source", "special_tokens", "tokenizer"} <= set(d):
            raise ValueError(f"Expected a ChatTemplate dict with source, special_tokens and tokenizer; got {d!r:.80}.")
        return cls(d["source"], HFTokenizer.from_dict(d["tokenizer"]), d["special_tokens"])

    # -- rendering ---------------------------------------------------------------------------------------------

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
        """The conversation as the template writes it: transformers' `apply_chat_template(messages,
        tokenize=False, add_generation_prompt=...)`. `add_generation_prompt` appends the assistant's header, the
        prompt a model replies to."""
        return self._render(check_messages(messages), add_generation_prompt)

    def encode(self, messages: Sequence[Mapping[str, Any]], *, turns: str = "all") -> tuple[np.ndarray, np.ndarray]:
        """(ids int32 `[T]`, mask bool `[T]`) of the rendered conversation.

        ids: the tokenizer's ids of `render(messages)`, no special tokens added.
        mask: True exactly on the tokens that transformers' `apply_chat_template(...,
          return_assistant_tokens_mask=True)` marks when the template has `{% generation %}...{% endgeneration %}`
          around each assistant message's content and the end-of-turn marker that closes it: the tokens whose
          character offsets overlap such a span at all (a token straddling a span edge counts). So a reply is
          learned with its end-of-turn token (the model learns to stop), never its role header or the newline
          after the marker; an empty reply marks only its end-of-turn token. The spans come from
          `assistant_spans`. turns: "all" (every assistant message, for SFT) or "last" (only the final one: the
          response DPO scores).

        Raises ChatTemplateError when the template's assistant turns cannot be located (never an all-False or
        all-True mask in silence).
        """
        if turns not in ("all", "last"):
            raise ValueError(f"`turns` must be 'all' or 'last'; got {turns!r}.")
        messages = check_messages(messages)
        text = self._render(messages, False)
        spans = self._spans(messages, text)
        if turns == "last":
            if not messages or messages[-1]["role"] != "assistant":
                raise ValueError("encode(turns='last') needs a conversation that ends with an assistant message.")
            spans = spans[-1:]
        encoding = self.tokenizer.tokenizer.encode(text, add_special_tokens=False)
        ids = np.asarray(encoding.ids, np.int32)
        mask = overlap_mask(encoding.offsets, spans)
        if spans and not mask.any():
            raise ChatTemplateError(
                f"The assistant spans {spans} of the rendered text cover no token (offsets {encoding.offsets[:8]}...)."
            )
        if mask.all():
            raise ChatTemplateError("Every token of the conversation is marked as learned: the prompt was not found.")
        return ids, mask

    def encode_prompt(self, messages: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """int32 `[P]`: the ids of `render(messages, add_generation_prompt=True)`, what a model replies to."""
        return self.tokenizer.encode(self.render(messages, add_generation_prompt=True))

    def assistant_spans(self, messages: Sequence[Mapping[str, Any]]) -> list[tuple[int, int]]:
        """Character spans `[start, end)` of `render(messages)` that the model learns: each assistant message's
        content and the end-of-turn marker after it.

        Found from the template's structure, not from the reply's text. For assistant message i, the template
        renders messages[:i] plus a reply "X", and again with "Y": the two agree up to the header H (the
        conversation so far and the assistant's role header) and from the closing C on (the end-of-turn marker,
        then e.g. a newline). Then, with R = render(messages[:i + 1]):
          start = len(H)                                    (where the reply's content begins)
          end = len(R) - (the length of C's trailing whitespace)   (after the marker, before its newline)
        R must start with H and end with C, R must be a prefix of the whole rendering (earlier turns are written
        the same whatever follows), and C must hold a marker (non-whitespace); otherwise ChatTemplateError says
        which. The generation prompt plays no part: a template whose prompt is only part of the header it writes
        in a conversation (Zephyr's "<|assistant|>" before "<|assistant|>\\n") is located all the same.
        """
        messages = check_messages(messages)
        return self._spans(messages, self._render(messages, False))

    @property
    def end_of_turn(self) -> str:
        """The marker the template writes after a reply (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`): where a
        generated reply stops."""
        probe = [{"role": "user", "content": "?"}]
        return self._turn_structure(probe, {"role": "assistant", "content": ""}, "a reply")[1].strip()

    @property
    def end_of_turn_id(self) -> int:
        """The token id of `end_of_turn` (ChatTemplateError if the tokenizer splits it into several tokens)."""
        ids = self.tokenizer.encode(self.end_of_turn)
        if len(ids) != 1:
            raise ChatTemplateError(f"The end-of-turn marker {self.end_of_turn!r} is {len(ids)} tokens, not one.")
        return int(ids[0])

    # -- internals ---------------------------------------------------------------------------------------------

    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        try:
            return self._compiled.render(
                messages=messages, add_generation_prompt=add_generation_prompt, **self.special_tokens
            )
        except jinja2.TemplateError as e:  # raise_exception(...) in the template, or a template bug
            raise ChatTemplateError(f"The chat template refused the conversation: {e}") from None

    def _spans(self, messages: list[dict], text: str) -> list[tuple[int, int]]:
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            where = f"assistant message {i}"
            header, closing = self._turn_structure(messages[:i], message, where)
            turn = self._render(messages[: i + 1], False)
            if not text.startswith(turn):
                raise ChatTemplateError(
                    f"Cannot locate {where}: the template writes the turns before it differently once later "
                    "messages follow (e.g. it rewrites earlier replies), so the reply's tokens cannot be found."
                )
            if not turn.startswith(header) or not turn.endswith(closing) or len(turn) < len(header) + len(closing):
                raise ChatTemplateError(
                    f"Cannot locate {where}: the template does not write this reply between the header and the "
                    f"closing it writes around other replies ({header[-30:]!r} ... {closing!r})."
                )
            spans.append((len(header), len(turn) - (len(closing) - len(closing.rstrip()))))
        return spans

    def _turn_structure(self, before: list[dict], message: dict, where: str) -> tuple[str, str]:
        """(header, closing): the text a reply after `before` starts with (the whole conversation so far and the
        assistant's role header) and the text the template writes after the reply's content (its end-of-turn
        marker, then e.g. a newline). Found by rendering two one-letter replies, "X" and "Y": they agree up to
        the header and again from the closing on."""
        x = self._render([*before, {**message, "content": "X"}], False)
        y = self._render([*before, {**message, "content": "Y"}], False)
        k = next((j for j, (a, b) in enumerate(zip(x, y, strict=False)) if a != b), None)
        if k is None or x[k + 1 :] != y[k + 1 :] or (x[k], y[k]) != ("X", "Y"):
            raise ChatTemplateError(f"Cannot locate {where}: the template does not write a reply's content as given.")
        header, closing = x[:k], x[k + 1 :]
        if not closing.strip():
            raise ChatTemplateError(
                f"Cannot locate {where}: the template writes no end-of-turn marker after a reply ({closing!r}), so "
                "where the reply ends cannot be found."
            )
        return header, closing


def overlap_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """bool `[T]`: token t is True when its character offsets `[s_t, e_t)` overlap a span `[a, b)` at all
    (s_t < b and e_t > a), transformers' rule. Spans are sorted and disjoint."""
    mask = np.zeros(len(offsets), bool)
    k = 0
    for t, (start, end) in enumerate(offsets):
        while k < len(spans) and start >= spans[k][1]:
            k += 1
        if k == len(spans):
            break
        mask[t] = end > spans[k][0]
    return mask


def check_messages(messages: Any) -> list[dict]:
    """`messages` as a list of dicts, each with a `role` in ROLES and a str `content` (ValueError / TypeError naming
    the message's index otherwise). Other keys are kept: templates may read them."""
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Sequence):
        raise TypeError(f"`messages` must be a list of {{'role', 'content'}} dicts; got {type(messages).__name__}.")
    if not messages:
        raise ValueError("`messages` is empty: a conversation needs at least one message.")
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise TypeError(f"messages[{i}] must be a dict with 'role' and 'content'; got {type(message).__name__}.")
        if "role" not in message or "content" not in message:
            raise ValueError(f"messages[{i}] must have 'role' and 'content'; got keys {sorted(message)}.")
        if message["role"] not in ROLES:
            raise ValueError(f"messages[{i}] has role {message['role']!r}; expected one of {ROLES}.")
        if not isinstance(message["content"], str):
            raise TypeError(f"messages[{i}]['content'] must be a str; got {type(message['content']).__name__}.")
        out.append(dict(message))
    return out


def special_tokens_of(config: Mapping[str, Any]) -> dict[str, str]:
    """The named special tokens of a tokenizer_config.json as strings (an AddedToken dict's `content`); absent
    or null ones are left out."""
    out = {}
    for key in SPECIAL_TOKENS:
        value = config.get(key)
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def _template_from_config(value: Any, path: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"name": ..., "template": ...}, ...]: transformers uses "default"
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, Mapping)}
        if isinstance(named.get("default"), str):
            return named["default"]
        raise ValueError(f"{path} has named chat templates {sorted(map(str, named))} but none named 'default'.")
    raise FileNotFoundError(
        f"No chat template: {os.path.dirname(path)} has no {TEMPLATE_FILE} and {path} has no 'chat_template' (a base "
        "model without one; use its instruction-tuned checkpoint's, or build a ChatTemplate with your own source)."
    )


class _GenerationTags(jinja2.ext.Extension):
    """Accepts transformers' `{% generation %}...{% endgeneration %}` (its assistant-mask markers) and renders the
    body unchanged: jaxformer locates the learned tokens itself (ChatTemplate.assistant_spans)."""

    tags = {"generation"}  # noqa: RUF012 (jinja2's API)

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    # transformers' tojson: jinja2's own escapes HTML characters, which would change the rendered text
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _environment() -> jinja2.sandbox.ImmutableSandboxedEnvironment:
    """jinja2 as transformers sets it up for chat templates (untrusted code from the Hub: sandboxed)."""
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTags, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


# -- training data ---------------------------------------------------------------------------------------------------


def learned_spans(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) int64 `[S]`: the runs of True in a bool `mask [T]` (an encoded conversation's replies, each
    with its end-of-turn token), run s covering tokens `[starts[s], ends[s])`."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 1:
        raise ValueError(f"`mask` must be a bool vector [T]; got shape {mask.shape}.")
    starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
    ends = np.flatnonzero(mask & ~np.append(mask[1:], False)) + 1
    return starts, ends


def truncate(ids: np.ndarray, mask: np.ndarray, max_tokens: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The longest prefix of an encoded conversation that fits `max_tokens` and ends where a learned span ends
    (after an end-of-turn token): later turns are dropped whole, so no prompt is ever kept without its answer
    and no answer is cut short. None when even the first learned span does not fit (drop the conversation), or
    when nothing is learned."""
    max_tokens = checks.check_nonnegative_int("max_tokens", max_tokens)
    if np.shape(ids) != np.shape(mask):
        raise ValueError(f"`ids` and `mask` must have one shape [T]; got {np.shape(ids)} and {np.shape(mask)}.")
    _, ends = learned_spans(mask)
    fits = ends[ends <= max_tokens]
    if not len(fits):
        return None
    return ids[: fits[-1]], mask[: fits[-1]]


def read_jsonl(path: str | os.PathLike, *, keys: Sequence[str]) -> list[dict]:
    """The records of a JSONL file (one JSON object per line; blank lines skipped), each checked to have `keys`
    (ValueError naming the file and line otherwise)."""
    path = os.fspath(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n} is not valid JSON ({e.msg}).") from None
            if not isinstance(record, dict) or not set(keys) <= set(record):
                got = sorted(record) if isinstance(record, dict) else type(record).__name__
                raise ValueError(f"{path}:{n} must be a JSON object with keys {list(keys)}; got {got}.")
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records.")
    return records


def read_conversations(path: str | os.PathLike) -> list[list[dict]]:
    """The conversations of a JSONL file of `{"messages": [...]}` lines (each checked by `check_messages`, the
    line named on error)."""
    out = []
    for n, record in enumerate(read_jsonl(path, keys=("messages",)), start=1):
        try:
            out.append(check_messages(record["messages"]))
        except (ValueError, TypeError) as e:
            raise type(e)(f"{os.fspath(path)}, record {n}: {e}") from None
    return out


def read_preferences(path: str | os.PathLike) -> list[dict]:
    """The preference pairs of a JSONL file of `{"prompt": messages, "chosen": message, "rejected": message}`
    lines: `prompt` a conversation ending with a user turn, `chosen` / `rejected` assistant messages."""
    out = []
    for n, record in enumerate(read_jsonl(path, keys=("prompt", "chosen", "rejected")), start=1):
        try:
            out.append(check_preference(record))
        except (ValueError, TypeError) as e:
            raise type(e)(f"{os.fspath(path)}, record {n}: {e}") from None
    return out


def check_preference(record: Mapping[str, Any]) -> dict:
    """{"prompt": messages ending with a user turn, "chosen": / "rejected": an assistant message}, checked."""
    prompt = check_messages(record["prompt"])
    if not prompt or prompt[-1]["role"] != "user":
        raise ValueError("`prompt` must be a conversation that ends with a user message.")
    pair = {}
    for key in ("chosen", "rejected"):
        (message,) = check_messages([record[key]])
        if message["role"] != "assistant":
            raise ValueError(f"`{key}` must be an assistant message; got role {message['role']!r}.")
        pair[key] = message
    return {"prompt": prompt, **pair}


# -- a template for models trained from scratch ----------------------------------------------------------------------

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + "
    "'\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""The plain ChatML template (OpenAI's format, Qwen's without its default system prompt)."""


def byte_chatml() -> ChatTemplate:
    """ChatML over a byte-level tokenizer with no merges: ids 0-255 are the UTF-8 bytes (GPT-2's byte alphabet),
    then `<|endoftext|>` 256, `<|im_start|>` 257, `<|im_end|>` 258. For models trained from scratch on small
    synthetic chats (no tokenizer to fit, any text encodes)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = sorted(alphabet, key=lambda c: _BYTE_ORDER[c])
    vocab = {c: i for i, c in enumerate(byte_to_char)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")])
    special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    return ChatTemplate(CHATML, HFTokenizer(tokenizer), special)


def _gpt2_byte_order() -> dict[str, int]:
    """GPT-2's byte -> printable character map, inverted: the character standing for each byte value."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


_BYTE_ORDER = _gpt2_byte_order()
