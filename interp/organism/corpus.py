"""Real training text available offline: the CPython standard library shipped with this Python.

The corpus is every ``.py`` file under ``<sys.base_prefix>/lib/pythonX.Y`` except test suites,
installed third-party packages, codec tables and vendored wheels: source code, comments and
docstrings written by people. Files are split deterministically by path into ``train`` (about
90%) and ``heldout`` (about 10%) with a hash of the relative path, so the split does not depend on
which other files exist; held-out files are never trained on and give an honest perplexity on
unseen real text. ``file_records()`` lists every file with its split, size and sha256, for the
model manifest.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path

import numpy as np

SPLITS = ("train", "heldout")
HELDOUT_PER_MILLE = 100  # files whose path hash falls below this (out of 1000) are held out
EXCLUDED_DIRS = {
    "site-packages", "test", "tests", "idle_test", "__pycache__", "encodings", "_bundled", "lib2to3",
    "turtledemo", "__phello__",
}  # fmt: skip


def stdlib_root() -> Path:
    """Folder of the standard library of the running Python (``.../lib/pythonX.Y``)."""
    v = sys.version_info
    return Path(sys.base_prefix) / "lib" / f"python{v.major}.{v.minor}"


def split_of(relpath: str) -> str:
    """``train`` or ``heldout`` for a path relative to the stdlib root (posix separators)."""
    h = int(hashlib.sha256(relpath.encode()).hexdigest()[:8], 16) % 1000
    return "heldout" if h < HELDOUT_PER_MILLE else "train"


@functools.lru_cache(maxsize=1)
def _files() -> tuple[str, ...]:
    root = stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"the standard library folder {root} does not exist")
    rels = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if not any(part in EXCLUDED_DIRS for part in rel.parts[:-1]) and p.is_file():
            rels.append(rel.as_posix())
    return tuple(sorted(rels))


def _read(rel: str) -> str:
    return (stdlib_root() / rel).read_text(encoding="utf-8", errors="replace")


def documents(split: str) -> list[tuple[str, str]]:
    """``(relative path, text)`` of every corpus file in ``split`` (``train`` or ``heldout``),
    sorted by path."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    return [(rel, _read(rel)) for rel in _files() if split_of(rel) == split]


def file_records() -> list[dict]:
    """One record per corpus file: ``path``, ``split``, ``bytes`` and ``sha256`` of its content."""
    out = []
    for rel in _files():
        data = (stdlib_root() / rel).read_bytes()
        out.append({"path": rel, "split": split_of(rel), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return out


def corpus_fingerprint(records: list[dict] | None = None) -> str:
    """sha256 over the sorted ``path:split:sha256`` lines of ``file_records()``: one hash that
    changes when any file, its content or its split changes."""
    records = file_records() if records is None else records
    lines = "\n".join(f"{r['path']}:{r['split']}:{r['sha256']}" for r in sorted(records, key=lambda r: r["path"]))
    return hashlib.sha256(lines.encode()).hexdigest()


def python_version() -> str:
    """``X.Y.Z`` of the Python whose standard library is the corpus."""
    return ".".join(map(str, sys.version_info[:3]))


def heldout_blocks(tokenizer, n_ctx: int, n_blocks: int) -> np.ndarray:
    """The first ``n_blocks`` full ``n_ctx``-token blocks of the held-out files (sorted by path,
    joined with end-of-text): the fixed text for held-out loss and perplexity."""
    flat: list[int] = []
    for _, text in documents("heldout"):
        flat += tokenizer([text], add_special_tokens=False)["input_ids"][0] + [0]
        if len(flat) >= n_blocks * n_ctx:
            break
    n = min(n_blocks, len(flat) // n_ctx)
    return np.asarray(flat[: n * n_ctx], dtype=np.int64).reshape(n, n_ctx)
