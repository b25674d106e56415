"""Chat templates (`data.chat`) against what `transformers` renders, tokenizes and masks (fixtures made by
experiments/make_chat_fixtures.py with transformers 5.25 from the real Qwen2.5, Llama 3, Llama 3.1 and Gemma 3
templates), and the errors for what they cannot do."""

import json
import pathlib

import numpy as np
import pytest

from jaxformer import hub
from jaxformer.data import chat

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "chat"
NAMES = ("chatml", "llama3", "llama31", "gemma3")


def reference(name: str) -> dict:
    return json.loads((FIXTURES / name / "reference.json").read_text())


CASES = [(name, case["name"]) for name in NAMES for case in reference(name)["cases"]]


@pytest.fixture(scope="module")
def templates() -> dict[str, chat.ChatTemplate]:
    return {name: chat.ChatTemplate.from_pretrained(FIXTURES / name) for name in NAMES}


@pytest.mark.parametrize(("name", "case_name"), CASES)
def test_render_ids_and_mask_equal_transformers(templates, name, case_name):
    template = templates[name]
    case = next(c for c in reference(name)["cases"] if c["name"] == case_name)
    messages = case["messages"]
    assert template.render(messages) == case["text"]
    assert template.render(messages, add_generation_prompt=True) == case["text_generation_prompt"]
    ids, mask = template.encode(messages)
    assert ids.dtype == np.int32 and mask.dtype == bool
    np.testing.assert_array_equal(ids, case["ids"])
    np.testing.assert_array_equal(mask, np.asarray(case["assistant_mask"], bool))
    assert template.assistant_spans(messages) == [tuple(s) for s in case["assistant_spans"]]
    has_reply = any(m["role"] == "assistant" for m in messages)
    assert mask.any() == has_reply  # a conversation with a reply never gets an all-False mask


def test_the_cases_cover_what_the_acceptance_names():
    names = {c["name"] for c in reference("chatml")["cases"]}
    assert {"system_three_turns", "unicode", "empty_replies", "trailing_user", "reply_in_prompt"} <= names
    assert len(CASES) >= 40


def test_an_empty_reply_marks_only_its_end_of_turn_token(templates):
    for name, template in templates.items():
        messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]
        ids, mask = template.encode(messages)
        assert [template.tokenizer.decode(ids[mask])] == [template.end_of_turn], name


def test_end_of_turn_of_each_family(templates):
    want = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "llama31": "<|eot_id|>", "gemma3": "<end_of_turn>"}
    for name, template in templates.items():
        assert template.end_of_turn == want[name]
        assert template.tokenizer.decode([template.end_of_turn_id]) == want[name]


def test_templates_read_from_either_file_and_special_tokens_are_strings(templates):
    assert not (FIXTURES / "chatml" / chat.TEMPLATE_FILE).exists()  # tokenizer_config.json's "chat_template"
    assert (FIXTURES / "llama3" / chat.TEMPLATE_FILE).exists()
    config = json.loads((FIXTURES / "gemma3" / "tokenizer_config.json").read_text())
    assert isinstance(config["bos_token"], dict)  # an AddedToken dict, unwrapped
    assert templates["gemma3"].special_tokens["bos_token"] == "<bos>"
    assert templates["gemma3"].render([{"role": "user", "content": "x"}]).startswith("<bos><start_of_turn>user")


def test_a_rejected_conversation_is_a_chat_template_error_with_the_templates_message(templates):
    (rejected,) = reference("gemma3")["rejected"]
    with pytest.raises(chat.ChatTemplateError, match="Conversation roles must alternate"):
        templates["gemma3"].encode(rejected["messages"])


def test_turns_last_marks_only_the_final_reply(templates):
    case = next(c for c in reference("llama3")["cases"] if c["name"] == "system_three_turns")
    template = templates["llama3"]
    ids, every = template.encode(case["messages"])
    _, last = template.encode(case["messages"], turns="last")
    start, end = template.assistant_spans(case["messages"])[-1]
    assert last.sum() < every.sum() and (every | ~last).all()
    assert template.tokenizer.decode(ids[last]) == template.render(case["messages"])[start:end]


@pytest.mark.parametrize(
    ("messages", "error", "match"),
    [
        ([{"role": "robot", "content": "x"}], ValueError, r"messages\[0\] has role 'robot'; expected one of"),
        (
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": 3}],
            TypeError,
            r"messages\[1\]\['content'\] must be a str; got int",
        ),
        ([{"role": "user"}], ValueError, r"messages\[0\] must have 'role' and 'content'"),
        ("hello", TypeError, "`messages` must be a list"),
        (["hello"], TypeError, r"messages\[0\] must be a dict"),
    ],
)
def test_bad_messages_are_named_before_jinja_sees_them(templates, messages, error, match):
    with pytest.raises(error, match=match):
        templates["chatml"].render(messages)
    with pytest.raises(error, match=match):
        templates["chatml"].encode(messages)


def test_a_template_whose_replies_cannot_be_located_is_an_error_not_a_silent_mask(templates):
    tokenizer = templates["chatml"].tokenizer
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    no_marker = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% endfor %}"
    with pytest.raises(chat.ChatTemplateError, match="no end-of-turn marker"):
        chat.ChatTemplate(no_marker, tokenizer).encode(messages)
    # a reply's content changed by the template (lower-cased) cannot be told apart from what surrounds it
    lowering = chat.CHATML.replace("message['content']", "message['content'] | lower")
    with pytest.raises(chat.ChatTemplateError, match="does not write a reply's content as given"):
        chat.ChatTemplate(lowering, tokenizer).encode(messages)
    # earlier replies rewritten once later messages follow
    rewrites = chat.CHATML.replace(
        "message['content']", "(message['content'] if loop.last or message['role'] != 'assistant' else '...')"
    )
    with pytest.raises(chat.ChatTemplateError, match="differently once later messages follow"):
        chat.ChatTemplate(rewrites, tokenizer).encode([*messages, {"role": "user", "content": "c"}])


ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}"
)


def test_a_generation_prompt_shorter_than_the_reply_header_still_marks_only_content_and_marker(templates):
    """Zephyr prompts with "<|assistant|>" but writes "<|assistant|>\\n" before a reply: the newline is header."""
    template = chat.ChatTemplate(ZEPHYR, templates["llama3"].tokenizer, {"eos_token": "<|eot_id|>"})
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    text = template.render(messages)
    assert text == "<|user|>\nHi<|eot_id|>\n<|assistant|>\nHello there<|eot_id|>\n"
    (span,) = template.assistant_spans(messages)
    assert text[slice(*span)] == "Hello there<|eot_id|>"
    assert template.end_of_turn == "<|eot_id|>"


def test_generation_tags_render_as_their_body(templates):
    """A template carrying transformers' `{% generation %}` markers renders exactly as without them."""
    case = next(c for c in reference("chatml")["cases"] if c["name"] == "system_three_turns")
    tagged = chat.ChatTemplate(reference("chatml")["generation_template"], templates["chatml"].tokenizer)
    assert tagged.render(case["messages"]) == case["text"]


def test_save_and_to_dict_round_trip(templates, tmp_path):
    for name, template in templates.items():
        template.save(tmp_path / name)
        again = chat.ChatTemplate.from_directory(tmp_path / name)
        assert again.source == template.source and again.special_tokens == template.special_tokens
        assert chat.ChatTemplate.from_dict(json.loads(json.dumps(template.to_dict()))).source == template.source
        case = reference(name)["cases"][1]
        np.testing.assert_array_equal(again.encode(case["messages"])[0], case["ids"])


def test_a_directory_without_a_template_says_so(tmp_path):
    (tmp_path / "tokenizer.json").write_text((FIXTURES / "chatml" / "tokenizer.json").read_text())
    with pytest.raises(FileNotFoundError, match="No chat template"):
        chat.ChatTemplate.from_directory(tmp_path)


def test_byte_chatml_ids_are_utf8_bytes_then_its_special_tokens():
    template = chat.byte_chatml()
    text = "héllo 日本 🙂"
    messages = [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
    ids, mask = template.encode(messages)
    assert template.tokenizer.vocab_size == 259 and template.end_of_turn_id == 258
    np.testing.assert_array_equal(ids[1 + len("user\n") :][: len(text.encode())], list(text.encode()))
    assert template.tokenizer.decode(ids[mask]) == "ok<|im_end|>"
    assert template.tokenizer.decode(ids) == template.render(messages)


def test_a_template_is_built_from_a_string_a_tokenizer_and_named_special_tokens(templates):
    tokenizer = templates["chatml"].tokenizer
    with pytest.raises(ValueError, match="non-empty jinja2 template"):
        chat.ChatTemplate("  ", tokenizer)
    with pytest.raises(TypeError, match="jinja2 template string; got int"):
        chat.ChatTemplate(3, tokenizer)
    with pytest.raises(TypeError, match=r"data\.HFTokenizer"):
        chat.ChatTemplate(chat.CHATML, "gpt2")
    with pytest.raises(ValueError, match="got 'eos': "):
        chat.ChatTemplate(chat.CHATML, tokenizer, {"eos": "<|im_end|>"})


def test_a_hub_id_fetches_the_tokenizer_and_template_files_only(monkeypatch, tmp_path):
    """No weights are downloaded for a chat template (huggingface_hub's snapshot_download, recorded)."""
    import huggingface_hub

    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text((FIXTURES / "chatml" / name).read_text())
    asked = {}

    def snapshot_download(repo_id, allow_patterns):
        asked.update(repo_id=repo_id, allow_patterns=allow_patterns)
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    template = chat.ChatTemplate.from_pretrained("someone/chat-model")
    assert asked == {"repo_id": "someone/chat-model", "allow_patterns": hub.TOKENIZER_FILES}
    assert template.end_of_turn == "<|im_end|>"
