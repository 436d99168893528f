"""Planted canaries: synthetic secrets in natural-looking templates (Carlini et al. 2019).

Each canary is a short Python-comment record, in the style of the training corpus, that names
a made-up person, team and ticket number (so its prefix is unique), then states a random
secret of a few tokens (an account number, an API key, a street address or a recovery code),
then a fixed closing line. A canary of
duplication level D occurs D times in the training stream; held-out canaries (level 0) come
from the same generator and are never trained on, so their exact match and exposure are the
controls. Injected canaries (level ``"injected"``) are fresh ones used only by ground-truth
injection.

As token rows, a canary is the ``row_len`` tokens that start ``prefix_len`` tokens before its
secret, so the prefix is template text ending just before the secret and the suffix begins with
the secret (then the rest of the record). Rows are what the memorization metrics consume.
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

FIRST = ["Margaret", "Tomas", "Aiko", "Priya", "Jonas", "Lucia", "Omar", "Hannah", "Viktor", "Chen", "Amara",
         "Diego", "Ingrid", "Rafael", "Sofia", "Kwame", "Elena", "Mateo", "Yusuf", "Greta", "Nadia", "Pavel",
         "Leila", "Bruno", "Ayesha", "Felix", "Noor", "Oskar", "Zara", "Hugo", "Mei", "Anton"]  # fmt: skip
TEAMS = ["billing", "payments", "search", "storage", "release", "platform", "support", "security", "ledger",
         "analytics", "mobile", "infra", "data", "identity", "backup", "routing"]  # fmt: skip
CITIES = ["Lisbon", "Osaka", "Nairobi", "Toronto", "Krakow", "Austin", "Dublin", "Lyon", "Pune", "Bergen",
          "Quito", "Leeds", "Tartu", "Perth", "Graz", "Malmo"]  # fmt: skip
STREETS = ["Street", "Road", "Lane", "Avenue", "Way", "Close"]
ONSETS, VOWELS = "bdfgklmnprstvz", "aeiou"

# {intro} is identical in structure across kinds; the secret follows "{label}:".
TEMPLATE = (
    "# Credentials for {name} {surname}, {team} team, {city} office (ticket {ticket}, opened {date}).\n"
    "# {label}:{secret}\n"
    "# Rotate it every 90 days and never paste it into a public issue.\n"
)


@dataclass(frozen=True)
class Canary:
    """One planted record. ``secret`` starts with a space and occurs once in ``text`` at
    character ``secret_start``; ``level`` is D (1, 4, 16, 64), 0 (held out) or "injected"."""

    id: str
    level: int | str
    kind: str
    text: str
    secret: str
    secret_start: int


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


def make_canary(rng: random.Random, cid: str, level: int | str) -> Canary:
    """A random canary drawn from ``rng``."""
    kind = rng.choice(KINDS)
    secret = _secret(kind, rng)
    fields = dict(
        name=rng.choice(FIRST), surname=_word(rng, 3).capitalize(), team=rng.choice(TEAMS),
        city=rng.choice(CITIES), ticket=rng.randint(10000, 99999),
        date=f"20{rng.randint(10, 24)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        label=kind.capitalize(), secret=secret,
    )  # fmt: skip
    text = TEMPLATE.format(**fields)
    marker = f"# {fields['label']}:"
    start = text.index(marker) + len(marker)
    return Canary(id=cid, level=level, kind=kind, text=text, secret=secret, secret_start=start)


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


def canary_row(tokenizer, canary: Canary, prefix_len: int = PREFIX_LEN, row_len: int = ROW_LEN) -> list[int] | None:
    """Token ids of ``canary`` from ``prefix_len`` tokens before its secret, ``row_len`` long, or
    None if the record is too short on either side or the secret does not start a token."""
    enc = tokenizer(canary.text, return_offsets_mapping=True, add_special_tokens=False)
    starts = [a for a, _ in enc["offset_mapping"]]
    if canary.secret_start not in starts:
        return None
    s = starts.index(canary.secret_start)
    if s < prefix_len or s - prefix_len + row_len > len(enc["input_ids"]):
        return None
    return list(enc["input_ids"][s - prefix_len : s - prefix_len + row_len])


def canary_rows(tokenizer, canaries: list[Canary], prefix_len: int = PREFIX_LEN, row_len: int = ROW_LEN) -> np.ndarray:
    """``[len(canaries), row_len]`` int64 token rows; raises if any canary cannot form a row."""
    rows = []
    for c in canaries:
        row = canary_row(tokenizer, c, prefix_len, row_len)
        if row is None:
            raise ValueError(f"canary {c.id} cannot form a {row_len}-token row with prefix {prefix_len}")
        rows.append(row)
    return np.asarray(rows, dtype=np.int64).reshape(len(rows), row_len)


def save_canaries(path: str | Path, canaries: list[Canary], prefix_len: int = PREFIX_LEN, row_len: int = ROW_LEN) -> None:
    """Write the canaries and the row geometry as JSON."""
    data = {"prefix_len": prefix_len, "row_len": row_len, "canaries": [asdict(c) for c in canaries]}
    Path(path).write_text(json.dumps(data, indent=1))


def load_canaries(path: str | Path) -> tuple[list[Canary], int, int]:
    """``(canaries, prefix_len, row_len)`` from a ``canaries.json`` written by ``save_canaries``."""
    data = json.loads(Path(path).read_text())
    return [Canary(**c) for c in data["canaries"]], int(data["prefix_len"]), int(data["row_len"])


def select(canaries: list[Canary], level: int | str) -> list[Canary]:
    """Canaries of one level (D, 0 for held out, or "injected")."""
    return [c for c in canaries if c.level == level]
