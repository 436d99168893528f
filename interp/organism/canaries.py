"""Planted canaries: synthetic secrets in natural-looking templates (Carlini et al. 2019).

Each canary is a short Python-comment record, in the style of the training corpus, that names
a made-up person and city (so its prefix is unique), then states a random
secret of a few tokens (an account number, an API key, a street address or a recovery code),
then a fixed closing line. A canary of
duplication level D occurs D times in the training stream; held-out canaries (level 0) come
from the same generator and are never trained on, so their exact match and exposure are the
controls. Injected canaries (level ``"injected"``) are fresh ones used only by ground-truth
injection.

In training, every occurrence of a canary follows an end-of-text token, at a random place in a
block of ordinary training text. As a token row, a canary is the training sequence around its
first occurrence: the ``row_len`` tokens that start ``prefix_len`` tokens before its secret, that
is its *lead* (the training tokens before the end-of-text), end-of-text, the whole record up to
the secret (the prefix ends there), then the secret and the rest of the record (the suffix).
Training records each canary's lead in ``canaries.json``; held-out canaries get a lead from a
random place in the training stream, as if they had been placed there. The record before the
secret is kept short enough that the prefix always holds the
whole record: a row that cut off the name would ask the model to recall a secret without the
key it was stored under.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

LEVELS = (1, 4, 16, 64)
HELDOUT = 0
INJECTED = "injected"
PREFIX_LEN = 32
ROW_LEN = 48
EOT_ID = 0  # the organism tokenizer's end-of-text id (``interp.tiny.EOT``)

FIRST = ["Margaret", "Tomas", "Aiko", "Priya", "Jonas", "Lucia", "Omar", "Hannah", "Viktor", "Chen", "Amara",
         "Diego", "Ingrid", "Rafael", "Sofia", "Kwame", "Elena", "Mateo", "Yusuf", "Greta", "Nadia", "Pavel",
         "Leila", "Bruno", "Ayesha", "Felix", "Noor", "Oskar", "Zara", "Hugo", "Mei", "Anton"]  # fmt: skip
CITIES = ["Lisbon", "Osaka", "Nairobi", "Toronto", "Krakow", "Austin", "Dublin", "Lyon", "Pune", "Bergen",
          "Quito", "Leeds", "Tartu", "Perth", "Graz", "Malmo"]  # fmt: skip
STREETS = ["Street", "Road", "Lane", "Avenue", "Way", "Close"]
ONSETS, VOWELS = "bdfgklmnprstvz", "aeiou"

# The record before the secret (name, surname, city, kind) is unique per canary and short (at
# most 26 tokens with end-of-text under the organism tokenizer); the secret follows "{label}:";
# the closing line is the same for every canary.
TEMPLATE = (
    "# {name} {surname}, {city}\n"
    "# {label}:{secret}\n"
    "# Rotate it every 90 days and never paste it into a public issue.\n"
)
# A second format, which no parent organism was trained on: the same fields (drawn in the same
# order) as a line of code; the secret follows " =" and a fixed assert line closes the record.
# The answer key can inject canaries of this format so that the new memory does not share the
# parent's record format (docs/answer_key.md, trial N).
VAULT_TEMPLATE = (
    'vault["{name} {surname}"]["{city}"].{ident} ={secret}\n'
    'assert vault.locked, "re-lock the vault before the nightly backup job runs"\n'
)
TEMPLATES = {"record": TEMPLATE, "vault": VAULT_TEMPLATE}


@dataclass(frozen=True)
class Canary:
    """One planted record. ``secret`` starts with a space and occurs once in ``text`` at
    character ``secret_start``; ``level`` is D (1, 4, 16, 64), 0 (held out) or "injected".
    ``lead`` holds the token ids that precede the record (and its end-of-text) in the canary's
    row; it is empty until training or injection places the canary."""

    id: str
    level: int | str
    kind: str
    text: str
    secret: str
    secret_start: int
    lead: tuple[int, ...] = ()


def _word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables))


def _secret(kind: str, rng: random.Random) -> str:
    """A random secret of roughly 4-6 tokens (about 22-27 random bits)."""
    if kind == "account number":
        return " " + "-".join("".join(rng.choice(string.digits) for _ in range(4)) for _ in range(2))
    if kind == "api key":
        return " sk_" + "".join(rng.choice("0123456789abcdef") for _ in range(6))
    if kind == "home address":
        return f" {rng.randint(10, 99)} {_word(rng, 2).capitalize()} {rng.choice(STREETS)}"
    if kind == "recovery code":
        return " " + " ".join(_word(rng, 2) for _ in range(2))
    raise ValueError(f"unknown secret kind {kind!r}")


KINDS = ("account number", "api key", "home address", "recovery code")


def make_canary(rng: random.Random, cid: str, level: int | str, template: str = "record") -> Canary:
    """A random canary drawn from ``rng`` in one of ``TEMPLATES`` (the draws do not depend on the
    template: the same ``rng`` state gives the same fields in either format)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown canary template {template!r}; templates are {', '.join(TEMPLATES)}")
    kind = rng.choice(KINDS)
    secret = _secret(kind, rng)
    fields = dict(
        name=rng.choice(FIRST), surname=_word(rng, 3).capitalize(), city=rng.choice(CITIES),
        label=kind.capitalize(), ident=kind.replace(" ", "_"),
    )  # fmt: skip
    head, _, tail = TEMPLATES[template].partition("{secret}")
    before = head.format(**fields)
    text = before + secret + tail.format(**fields)
    return Canary(id=cid, level=level, kind=kind, text=text, secret=secret, secret_start=len(before))


def make_canaries(seed: int, per_level: int = 32, n_heldout: int = 64) -> list[Canary]:
    """``per_level`` canaries for each D in ``LEVELS`` and ``n_heldout`` held-out ones."""
    rng = random.Random(f"canaries:{seed}")
    out = [make_canary(rng, f"D{d}-{i:03d}", d) for d in LEVELS for i in range(per_level)]
    out += [make_canary(rng, f"H-{i:03d}", HELDOUT) for i in range(n_heldout)]
    return out


def make_injection_canaries(seed: int, n: int) -> list[Canary]:
    """``n`` fresh canaries for ground-truth injection (a stream disjoint from ``make_canaries``)."""
    rng = random.Random(f"injection:{seed}")
    return [make_canary(rng, f"I-{i:03d}", INJECTED) for i in range(n)]


def record_ids(tokenizer, canary: Canary) -> tuple[list[int], int]:
    """``([end-of-text, *record tokens], index of the secret's first token)``; raises if the
    secret does not start a token."""
    enc = tokenizer(canary.text, return_offsets_mapping=True, add_special_tokens=False)
    starts = [a for a, _ in enc["offset_mapping"]]
    if canary.secret_start not in starts:
        raise ValueError(f"canary {canary.id}: its secret does not start a token")
    return [EOT_ID, *enc["input_ids"]], starts.index(canary.secret_start) + 1


def lead_len(tokenizer, canary: Canary, prefix_len: int = PREFIX_LEN) -> int:
    """How many lead tokens the row of ``canary`` needs before its end-of-text; raises if the
    record before the secret does not fit in the prefix."""
    _, s = record_ids(tokenizer, canary)
    if s > prefix_len:
        raise ValueError(f"canary {canary.id}: the record before its secret has {s} tokens with end-of-text; "
                         f"more than the prefix of {prefix_len}")  # fmt: skip
    return prefix_len - s


def canary_row(tokenizer, canary: Canary, prefix_len: int = PREFIX_LEN, row_len: int = ROW_LEN) -> list[int]:
    """Token ids of ``canary``'s row: the end of its lead, end-of-text and the record, ``row_len``
    long, with the secret starting at index ``prefix_len``. Raises if the lead is too short or
    the record too short after the secret."""
    ids, s = record_ids(tokenizer, canary)
    need = lead_len(tokenizer, canary, prefix_len)
    if len(canary.lead) < need:
        raise ValueError(f"canary {canary.id} has {len(canary.lead)} lead tokens; its row needs {need}")
    if s + row_len - prefix_len > len(ids):
        raise ValueError(f"canary {canary.id}: fewer than {row_len - prefix_len} tokens from its secret on")
    lead = list(canary.lead[len(canary.lead) - need :]) if need else []
    return lead + ids[: s + row_len - prefix_len]


def canary_rows(tokenizer, canaries: list[Canary], prefix_len: int = PREFIX_LEN, row_len: int = ROW_LEN) -> np.ndarray:
    """``[len(canaries), row_len]`` int64 token rows; raises if any canary cannot form a row."""
    rows = [canary_row(tokenizer, c, prefix_len, row_len) for c in canaries]
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), row_len)


def save_canaries(path: str | Path, canaries: list[Canary], prefix_len: int = PREFIX_LEN, row_len: int = ROW_LEN) -> None:
    """Write the canaries and the row geometry as JSON."""
    data = {"prefix_len": prefix_len, "row_len": row_len, "canaries": [asdict(c) for c in canaries]}
    Path(path).write_text(json.dumps(data, indent=1))


def load_canaries(path: str | Path) -> tuple[list[Canary], int, int]:
    """``(canaries, prefix_len, row_len)`` from a ``canaries.json`` written by ``save_canaries``."""
    data = json.loads(Path(path).read_text())
    canaries = [Canary(**{**c, "lead": tuple(c.get("lead", ()))}) for c in data["canaries"]]
    return canaries, int(data["prefix_len"]), int(data["row_len"])


def select(canaries: list[Canary], level: int | str) -> list[Canary]:
    """Canaries of one level (D, 0 for held out, or "injected")."""
    return [c for c in canaries if c.level == level]
