"""Synthetic instruction data for recipes that must learn on a CPU in minutes: conversations and preference pairs.

    chat_task("strings", num_examples=20_000, split="train", seed=0)      # [[{"role", "content"}, ...], ...]
    preference_task("case", num_examples=8_000, split="train", seed=0)     # [{"prompt", "chosen", "rejected"}]

strings: a user asks for a word of 3-8 random lowercase letters uppercased, reversed, or with its first letter
capitalised (several phrasings each), and the assistant answers with the result alone.
arithmetic: a user asks for a sum or a difference of two numbers below 100, the assistant answers the number.

In both, a third of the conversations open with a system prompt and a quarter ask a second question after the
first answer. The problems are split once: a problem whose hash falls in the held-out tenth appears only in split
"eval", so held-out exact match measures the skill, not memory.

Preference pairs (DPO), `preference_task`:
  case: a user asks for a word in capitals, in small letters or capitalised (the word given in the other case);
        chosen follows the instruction; rejected echoes the word unchanged (the instruction ignored) or, half the
        time, gives it in the case another instruction asks for, so that "anything but an echo" is not enough:
        only reading the instruction tells the replies apart. A model trained from scratch by DPO alone learns it
        in minutes on a CPU.
  strings, arithmetic: the chat tasks' questions; chosen is the right answer, rejected is wrong in one character
        (for strings, a letter the word does not have). Learning these from preferences alone is far slower: start
        from a model that has been fine-tuned on the task.
"""

from __future__ import annotations

import hashlib

import numpy as np

from jaxformer import checks

CHAT_TASKS = ("strings", "arithmetic")
PREFERENCE_TASKS = ("case", "strings", "arithmetic")
SPLITS = ("train", "eval")
SYSTEM_PROMPTS = ("Answer with the result only.", "You are a careful assistant.")
STRING_QUESTIONS = {
    "upper": ("Uppercase: {w}", "Write {w} in capital letters.", "Make {w} uppercase."),
    "reverse": ("Reverse: {w}", "Write {w} backwards.", "Spell {w} in reverse."),
    "title": ("Capitalize: {w}", "Capitalize the first letter of {w}.", "Title-case {w}."),
}
CASE_QUESTIONS = {
    "upper": ("Uppercase: {w}", "Write {w} in capital letters.", "Make {w} uppercase."),
    "lower": ("Lowercase: {w}", "Write {w} in small letters.", "Make {w} lowercase."),
    "title": ("Capitalize: {w}", "Capitalize the first letter of {w}.", "Title-case {w}."),
}
QUESTIONS = {
    "+": ("What is {a} + {b}?", "Add {a} and {b}.", "Compute {a} plus {b}."),
    "-": ("What is {a} - {b}?", "Subtract {b} from {a}.", "Compute {a} minus {b}."),
}


def chat_task(name: str, *, num_examples: int, split: str, seed: int) -> list[list[dict]]:
    """`num_examples` conversations of task `name` (CHAT_TASKS) from the problems of `split` ("train" or "eval",
    disjoint), deterministic in (seed, split)."""
    rng, n = _start(name, num_examples, split, seed)
    out = []
    for _ in range(n):
        messages = []
        if rng.random() < 1 / 3:
            messages.append({"role": "system", "content": str(rng.choice(SYSTEM_PROMPTS))})
        for _ in range(2 if rng.random() < 0.25 else 1):
            question, answer = _problem(name, rng, split)
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        out.append(messages)
    return out


def preference_task(name: str, *, num_examples: int, split: str, seed: int) -> list[dict]:
    """`num_examples` preference pairs `{"prompt": [user], "chosen": assistant, "rejected": assistant}` of task
    `name` (PREFERENCE_TASKS, see the module docstring) from the problems of `split`."""
    checks.check_choice("synthetic preference task", name, PREFERENCE_TASKS)
    rng, n = _start("strings" if name == "case" else name, num_examples, split, seed)
    out = []
    for _ in range(n):
        if name == "case":
            question, answer, wrong = _case_problem(rng, split)
        else:
            question, answer = _problem(name, rng, split)
            wrong = _corrupt(answer, rng)
        out.append(
            {
                "prompt": [{"role": "user", "content": question}],
                "chosen": {"role": "assistant", "content": answer},
                "rejected": {"role": "assistant", "content": wrong},
            }
        )
    return out


def _case_problem(rng: np.random.Generator, split: str) -> tuple[str, str, str]:
    """(question, the word as asked, a reply that does not do as asked) of a "case" preference pair: the rejected
    reply is the word echoed unchanged, or (half the time) the word in the case another instruction asks for, so
    that only reading the instruction tells the two replies apart."""
    while True:
        kind = str(rng.choice(list(CASE_QUESTIONS)))
        word = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(rng.integers(3, 9))))
        if is_held_out(f"case {kind} {word}") == (split == "eval"):
            break
    given = word.upper() if kind == "lower" else word
    forms = {"upper": word.upper(), "lower": word, "title": word.capitalize()}
    others = [form for k, form in forms.items() if k != kind and form not in (forms[kind], given)]
    wrong = str(rng.choice(others)) if rng.random() < 0.5 else given
    return str(rng.choice(CASE_QUESTIONS[kind])).format(w=given), forms[kind], wrong


def is_held_out(problem: str) -> bool:
    """Whether a problem (its canonical string, e.g. "+ 12 7" or "reverse abc") belongs to split "eval" (a fixed
    tenth of all problems, by a stable hash)."""
    return int(hashlib.sha256(problem.encode()).hexdigest(), 16) % 10 == 3


def _start(name, num_examples, split, seed) -> tuple[np.random.Generator, int]:
    checks.check_choice("synthetic chat task", name, CHAT_TASKS)
    checks.check_choice("split", split, SPLITS)
    n = checks.check_positive_int("num_examples", num_examples)
    seed = checks.check_nonnegative_int("seed", seed)
    return np.random.default_rng((seed, SPLITS.index(split), CHAT_TASKS.index(name))), n


def _problem(name: str, rng: np.random.Generator, split: str) -> tuple[str, str]:
    """(question, answer) of a problem of task `name` drawn from `split`'s share of the problems."""
    while True:
        if name == "strings":
            kind = str(rng.choice(list(STRING_QUESTIONS)))
            word = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), size=int(rng.integers(3, 9))))
            key = f"{kind} {word}"
        else:
            kind = "+" if rng.random() < 0.5 else "-"
            a, b = (int(x) for x in rng.integers(0, 100, size=2))
            if kind == "-" and b > a:
                a, b = b, a
            key = f"{kind} {a} {b}"
        if is_held_out(key) == (split == "eval"):
            break
    if name == "strings":
        answer = {"upper": word.upper(), "reverse": word[::-1], "title": word.capitalize()}[kind]
        return str(rng.choice(STRING_QUESTIONS[kind])).format(w=word), answer
    return str(rng.choice(QUESTIONS[kind])).format(a=a, b=b), str(a + b if kind == "+" else a - b)


def _corrupt(answer: str, rng: np.random.Generator) -> str:
    """`answer` with one character replaced by another of its kind (digit, lowercase or uppercase letter); a
    letter by one the answer does not contain (a letter that is not in the question's word)."""
    i = int(rng.integers(len(answer)))
    c = answer[i]
    if c.isdigit():
        pool = [d for d in "0123456789" if d != c]
    else:
        letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ" if c.isupper() else "abcdefghijklmnopqrstuvwxyz"
        pool = [p for p in letters if p.lower() not in answer.lower()]
    return answer[:i] + str(rng.choice(pool)) + answer[i + 1 :]
