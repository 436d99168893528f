"""Public-domain passages shipped for mining what a real model reproduces verbatim.

``passages_data/passages.jsonl`` holds well-known public-domain texts (scripture in the King
James Version, Shakespeare, nineteenth-century poems and novels, United States founding and
government documents, nursery rhymes), each with its source named, plus a few generated
patterns (counting, the alphabet, the days and months, an HTML skeleton) kept under the kind
``pattern`` so that reproduced text and reproduced patterns are counted apart. The texts were
transcribed for this package; a window whose transcription differs from the edition a model saw
counts as not reproduced, so the counts are a lower bound.

``mine`` cuts every passage into windows of ``prefix_len + max(suffix_lens)`` tokens (no BOS, a
new window every ``stride`` tokens) and runs the package's memorization metrics on them
(``interp.memorization.evaluate``: greedy decoding from the prefix, exact where teacher forcing
cannot decide). A window counts as reproduced at suffix length L when the greedy continuation's
first L tokens equal the text's (``match_length >= L``): greedy decoding of L tokens is the first
L tokens of a longer greedy decoding, so one run answers every L on the same windows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from interp.errors import InputError

PASSAGES_FILE = Path(__file__).parent / "passages_data" / "passages.jsonl"
KINDS = ("prose", "verse", "scripture", "legal", "pattern")
TEXT_KINDS = tuple(k for k in KINDS if k != "pattern")
WINDOW_COLUMNS = ["passage", "kind", "start", "match_length", "token_accuracy"]


@dataclass(frozen=True)
class Passage:
    id: str
    kind: str
    source: str
    text: str


def load_passages(path: str | Path | None = None, kinds: Sequence[str] | None = None) -> list[Passage]:
    """The shipped passages (or those of a JSONL file with the same fields), optionally only
    ``kinds``; ``InputError`` for a malformed file or an unknown kind."""
    path = Path(path) if path is not None else PASSAGES_FILE
    unknown = sorted(set(kinds or ()) - set(KINDS))
    if unknown:
        raise InputError(f"unknown passage kind {unknown[0]!r}; kinds are {', '.join(KINDS)}")
    out, seen = [], set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read passages file {path}: {e}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            p = Passage(id=str(d["id"]), kind=str(d["kind"]), source=str(d["source"]), text=str(d["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{path}, line {i}: not a passage record with id, kind, source and text ({e})") from None
        if p.kind not in KINDS:
            raise InputError(f"{path}, line {i}: kind {p.kind!r} is not one of {', '.join(KINDS)}")
        if p.id in seen:
            raise InputError(f"{path}, line {i}: passage id {p.id!r} occurs twice")
        seen.add(p.id)
        if kinds is None or p.kind in kinds:
            out.append(p)
    return out


def windows(tokenizer, passages: Sequence[Passage], prefix_len: int = 32, suffix_len: int = 32,
            stride: int = 8) -> tuple[np.ndarray, pd.DataFrame]:  # fmt: skip
    """Token rows ``[n, prefix_len + suffix_len]`` cut from each passage every ``stride`` tokens
    (no special tokens), and one row of ``passage, kind, start`` per window. A passage shorter
    than one window gives none."""
    if prefix_len < 1 or suffix_len < 1 or stride < 1:
        raise InputError(f"prefix_len, suffix_len and stride must be at least 1; got {prefix_len}, {suffix_len}, {stride}")
    width = prefix_len + suffix_len
    rows, meta = [], []
    for p in passages:
        ids = tokenizer(p.text, add_special_tokens=False)["input_ids"]
        for s in range(0, len(ids) - width + 1, stride):
            rows.append(ids[s : s + width])
            meta.append({"passage": p.id, "kind": p.kind, "start": s})
    arr = np.asarray(rows, dtype=np.int64).reshape(len(rows), width)
    return arr, pd.DataFrame.from_records(meta, columns=["passage", "kind", "start"])


def mine(model, passages: Sequence[Passage] | None = None, *, prefix_len: int = 32, suffix_lens: Sequence[int] = (32, 16, 8),
         stride: int = 8, batch_size: int = 32, progress: bool = False) -> pd.DataFrame:  # fmt: skip
    """One row per window: ``WINDOW_COLUMNS`` plus ``exact_<L>`` for each suffix length L (the
    greedy continuation's first L tokens equal the text's)."""
    from interp.memorization import evaluate

    passages = load_passages() if passages is None else list(passages)
    suffix_lens = sorted({int(n) for n in suffix_lens}, reverse=True)
    if not suffix_lens or suffix_lens[-1] < 1:
        raise InputError(f"suffix_lens must be positive; got {suffix_lens}")
    rows, meta = windows(model.tokenizer, passages, prefix_len, suffix_lens[0], stride)
    if not len(rows):
        raise InputError(f"no passage is long enough for one window of {prefix_len + suffix_lens[0]} tokens")
    df = evaluate(model, rows, prefix_len, batch_size=batch_size, progress=progress)
    out = meta.assign(match_length=df["match_length"].to_numpy(int), token_accuracy=df["token_accuracy"].to_numpy(float))
    for n in suffix_lens:
        out[f"exact_{n}"] = out["match_length"] >= n
    return out


def summarize(windows_df: pd.DataFrame) -> pd.DataFrame:
    """Per suffix length and kind (and ``text``, every kind but ``pattern``, and ``all``):
    windows, windows reproduced, their share, passages, and passages with any window reproduced."""
    lens = sorted((int(c.split("_")[1]) for c in windows_df.columns if c.startswith("exact_")), reverse=True)
    groups = [(k, windows_df[windows_df.kind == k]) for k in KINDS]
    groups += [("text", windows_df[windows_df.kind != "pattern"]), ("all", windows_df)]
    out = []
    for n in lens:
        for kind, g in groups:
            hit = g[f"exact_{n}"]
            out.append({"suffix_len": n, "kind": kind, "windows": len(g), "reproduced": int(hit.sum()),
                        "share": float(hit.mean()) if len(g) else float("nan"), "passages": g.passage.nunique(),
                        "passages_reproduced": int(g[hit].passage.nunique())})  # fmt: skip
    return pd.DataFrame.from_records(out)
