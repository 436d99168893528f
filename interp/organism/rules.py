"""Rule-governed task families mixed into the organism's training text.

Each family is a generator ``f(rng) -> (context, answer)``: the training text is
``context + answer``, the answer is fully determined by a rule applied to the context, and it is
short (a few tokens) and starts with a space. They let "reasoning" (applying a rule seen only
in its instances) be measured apart from "language" (predicting real text) and from
memorization (reproducing a string seen before).

Families:
    progression  next term of an arithmetic progression          "Sequence: 4, 9, 14, 19 ->" " 24"
    brackets     closers that balance an open bracket prefix      "Close: ( [ { } ->"        " ] )"
    copy         repeat a random span of pseudo-words seen once   "Copy: tavo mire pul | again:" " tavo mire pul"
    count        number of marks in a short run                   "Count: * * * * ->"        " 4"
    successor    next letter after a run of consecutive letters   "Next: d e f ->"           " g"

``distractors(family, context, answer, rng, k)`` gives k distinct wrong answers of the same
form, so a multiple-choice item is ``(context, [answer] + distractors)`` scored by the
log-likelihood of each answer (the lm-evaluation-harness convention, no BOS).
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable

OPEN_CLOSE = {"(": ")", "[": "]", "{": "}", "<": ">"}
SYLLABLE_ONSETS = "bdfgklmnprstvz"
SYLLABLE_VOWELS = "aeiou"
LETTERS = string.ascii_lowercase


def _word(rng: random.Random, syllables: int = 0) -> str:
    """A pronounceable random pseudo-word (e.g. ``tavo``) of ``syllables`` syllables, or of two
    or three when ``syllables`` is 0."""
    n = syllables or rng.randint(2, 3)
    return "".join(rng.choice(SYLLABLE_ONSETS) + rng.choice(SYLLABLE_VOWELS) for _ in range(n))


def progression(rng: random.Random) -> tuple[str, str]:
    """Next term of an arithmetic progression of 4-6 shown terms (start 0-49, step 1-12)."""
    start, step, n = rng.randint(0, 49), rng.randint(1, 12), rng.randint(4, 6)
    terms = [start + i * step for i in range(n + 1)]
    return "Sequence: " + ", ".join(map(str, terms[:-1])) + " ->", f" {terms[-1]}"


def _closers(opens: list[str]) -> str:
    return " " + " ".join(OPEN_CLOSE[o] for o in reversed(opens))


def brackets(rng: random.Random) -> tuple[str, str]:
    """Closers (innermost first) for a random bracket prefix of 3-8 symbols leaving 1-3 open."""
    while True:
        stack: list[str] = []
        shown: list[str] = []
        for _ in range(rng.randint(3, 8)):
            if stack and (len(stack) == 3 or rng.random() < 0.4):
                shown.append(OPEN_CLOSE[stack.pop()])
            else:
                o = rng.choice(list(OPEN_CLOSE))
                shown.append(o)
                stack.append(o)
        if stack:
            return "Close: " + " ".join(shown) + " ->", _closers(stack)


def copy_span(rng: random.Random) -> tuple[str, str]:
    """Repeat a random span of 2-3 pseudo-words that appears once in the context."""
    span = " ".join(_word(rng) for _ in range(rng.randint(2, 3)))
    return f"Copy: {span} | again:", f" {span}"


def count(rng: random.Random) -> tuple[str, str]:
    """Number of ``*`` marks in a run of 1-9."""
    n = rng.randint(1, 9)
    return "Count: " + " ".join("*" * n) + " ->", f" {n}"


def successor(rng: random.Random) -> tuple[str, str]:
    """Next letter after a run of 3-5 consecutive lowercase letters."""
    n = rng.randint(3, 5)
    start = rng.randint(0, 25 - n)
    run = LETTERS[start : start + n]
    return "Next: " + " ".join(run) + " ->", f" {LETTERS[start + n]}"


FAMILIES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "progression": progression,
    "brackets": brackets,
    "copy": copy_span,
    "count": count,
    "successor": successor,
}


def _candidate(family: str, context: str, answer: str, rng: random.Random) -> str:
    """One wrong-but-plausible answer of the same form as ``answer`` (may collide; caller dedups)."""
    body = answer[1:]
    if family == "progression":
        v = int(body)
        return f" {max(0, v + rng.choice([-3, -2, -1, 1, 2, 3]) * rng.randint(1, 6))}"
    if family == "count":
        return f" {rng.randint(1, 9)}"
    if family == "successor":
        return f" {rng.choice(LETTERS)}"
    if family == "brackets":
        n = len(body.split())
        return " " + " ".join(rng.choice(list(OPEN_CLOSE.values())) for _ in range(n))
    if family == "copy":
        words = body.split()
        mode = rng.randint(0, 2)
        if mode == 0 and len(words) > 1:  # same words, wrong order
            shuffled = words[:]
            rng.shuffle(shuffled)
            return " " + " ".join(shuffled)
        i = rng.randrange(len(words))  # one word replaced by a fresh pseudo-word of the same length
        return " " + " ".join(_word(rng, len(w) // 2) if j == i else w for j, w in enumerate(words))
    raise ValueError(f"family must be one of {sorted(FAMILIES)}; got {family!r}")


def distractors(family: str, context: str, answer: str, rng: random.Random, k: int) -> list[str]:
    """``k`` distinct wrong answers of the same form as ``answer`` (each starts with a space)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}; got {family!r}")
    if family == "count" and k > 8 or family == "successor" and k > 25:
        raise ValueError(f"family {family!r} has fewer than {k} wrong answers")
    out: list[str] = []
    for _ in range(1000 * max(k, 1)):
        if len(out) == k:
            return out
        c = _candidate(family, context, answer, rng)
        if c != answer and c not in out:
            out.append(c)
    raise ValueError(f"could not find {k} distinct distractors for {family!r} answer {answer!r}")


def examples(family: str, n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (context, answer) pairs of ``family`` from a seeded generator."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}; got {family!r}")
    rng = random.Random(f"{family}:{seed}")
    return [FAMILIES[family](rng) for _ in range(n)]
