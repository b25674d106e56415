"""Synthetic conversations and preference pairs (`data.synthetic_chat`): right answers, disjoint splits."""

import re

import pytest

from jaxformer.data import synthetic_chat


def parse(question: str) -> tuple[str, tuple]:
    """(kind, operands) of a question, by matching it against the task's own templates exactly."""
    templates = {**synthetic_chat.STRING_QUESTIONS, **synthetic_chat.QUESTIONS, **synthetic_chat.CASE_QUESTIONS}
    for kind, phrasings in templates.items():
        for phrasing in phrasings:
            pattern = re.escape(phrasing).replace(r"\{w\}", "([A-Za-z]+)").replace(r"\{a\}", r"(\d+)")
            match = re.fullmatch(pattern.replace(r"\{b\}", r"(\d+)"), question)
            if match:
                operands = match.groups()
                if "{b}" in phrasing and phrasing.index("{b}") < phrasing.index("{a}"):
                    operands = operands[::-1]  # "Subtract {b} from {a}."
                return kind, operands
    raise AssertionError(f"no template makes {question!r}")


ANSWERS = {
    "upper": lambda w: w.upper(),
    "reverse": lambda w: w[::-1],
    "title": lambda w: w.capitalize(),
    "+": lambda a, b: str(int(a) + int(b)),
    "-": lambda a, b: str(int(a) - int(b)),
}


@pytest.mark.parametrize("name", synthetic_chat.CHAT_TASKS)
def test_chat_tasks_answer_right_and_hold_out_problems_training_never_sees(name):
    train = synthetic_chat.chat_task(name, num_examples=2000, split="train", seed=0)
    held_out = synthetic_chat.chat_task(name, num_examples=300, split="eval", seed=0)
    assert train == synthetic_chat.chat_task(name, num_examples=2000, split="train", seed=0)  # deterministic
    seen = {}
    for split, conversations in (("train", train), ("eval", held_out)):
        for messages in conversations:
            turns = [m for m in messages if m["role"] != "system"]
            assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2)
            for question, answer in zip(turns[::2], turns[1::2], strict=True):
                kind, operands = parse(question["content"])
                assert answer["content"] == ANSWERS[kind](*operands)
                seen.setdefault(split, set()).add((kind, operands))
    assert not seen["train"] & seen["eval"]  # no held-out problem is trained on


def test_case_preferences_follow_the_instruction_against_ignoring_it():
    pairs = synthetic_chat.preference_task("case", num_examples=400, split="train", seed=1)
    echoes = 0
    for pair in pairs:
        kind, (given,) = parse(pair["prompt"][0]["content"])
        chosen, rejected = pair["chosen"]["content"], pair["rejected"]["content"]
        word = given.lower()
        forms = {"upper": word.upper(), "lower": word, "title": word.capitalize()}
        assert chosen == forms[kind] and rejected != chosen
        assert rejected == given or rejected in forms.values()  # an echo, or another instruction's answer
        echoes += rejected == given
    assert 0.35 < echoes / len(pairs) < 0.65  # half echo, half the wrong case: an echo detector is not enough
    held_out = synthetic_chat.preference_task("case", num_examples=100, split="eval", seed=1)
    words = lambda ps: {p["chosen"]["content"].lower() for p in ps}
    assert len(words(pairs) & words(held_out)) <= 2  # held-out (kind, word) problems; a word may recur by chance


def test_strings_preferences_differ_in_one_character_the_word_lacks():
    for pair in synthetic_chat.preference_task("strings", num_examples=200, split="train", seed=0):
        chosen, rejected = pair["chosen"]["content"], pair["rejected"]["content"]
        diff = [(a, b) for a, b in zip(chosen, rejected, strict=True) if a != b]
        assert len(diff) == 1 and diff[0][1].lower() not in chosen.lower()


def test_unknown_tasks_and_splits_are_named():
    with pytest.raises(ValueError, match="synthetic chat task"):
        synthetic_chat.chat_task("poetry", num_examples=1, split="train", seed=0)
    with pytest.raises(ValueError, match="synthetic preference task"):
        synthetic_chat.preference_task("poetry", num_examples=1, split="train", seed=0)
    with pytest.raises(ValueError, match="split"):
        synthetic_chat.chat_task("strings", num_examples=1, split="test", seed=0)
