"""Memorized-set formats and validation.

The public format (Menta et al.) is a 2-D numpy array of token ids, one memorized sequence per
row (64 ids: prefix 32, suffix 32). We also read JSONL, one object per line with either
``"tokens": [int, ...]`` or ``"text": str`` (tokenized with the model's tokenizer, no BOS, and
cut to ``length`` tokens). ``.npy`` files are read with ``allow_pickle=False``.

A set is "memorized" by a model when greedy decoding from each row's prefix reproduces its
suffix exactly; ``mine_memorized`` keeps only such rows from a pool of candidates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from interp.errors import InputError


def load_rows(path: str | Path, *, tokenizer=None, length: int | None = None) -> np.ndarray:
    """Read token rows from ``.npy`` or ``.jsonl``; returns an int64 array [n_rows, row_len]."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data file {str(path)!r} does not exist")
    if path.suffix == ".npy":
        return _load_npy(path)
    if path.suffix == ".jsonl":
        return _load_jsonl(path, tokenizer, length)
    raise InputError(f"data file {str(path)!r} must be a .npy array or a .jsonl file; found suffix {path.suffix!r}")


def _load_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError(f"data file {str(path)!r} is not a readable numpy array without pickles ({err})") from err
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(
            f"data file {str(path)!r} must hold a 2-D integer array of token ids; found {arr.ndim}-D {arr.dtype}"
        )
    if arr.shape[0] == 0:
        raise InputError(f"data file {str(path)!r} holds no rows")
    return arr.astype(np.int64)


def _load_jsonl(path: Path, tokenizer, length: int | None) -> np.ndarray:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{lineno} is not valid JSON ({err.msg})") from None
        rows.append(_row_from_item(item, tokenizer, f"{path}:{lineno}"))
    if not rows:
        raise InputError(f"data file {str(path)!r} holds no rows")
    length = length or min(len(r) for r in rows)
    short = [i for i, r in enumerate(rows) if len(r) < length]
    if short:
        raise InputError(f"data file {str(path)!r}: {len(short)} rows are shorter than {length} tokens (first: row {short[0]})")
    return np.array([r[:length] for r in rows], dtype=np.int64)


def _row_from_item(item, tokenizer, where: str) -> list[int]:
    if isinstance(item, dict) and "tokens" in item:
        return [int(t) for t in item["tokens"]]
    if isinstance(item, dict) and "text" in item:
        if tokenizer is None:
            raise InputError(f"{where} holds text but no tokenizer was given to tokenize it")
        return list(tokenizer(item["text"], add_special_tokens=False)["input_ids"])
    raise InputError(f"{where} must be an object with 'tokens' (ids) or 'text'")


def validate_rows(rows: np.ndarray, prefix_len: int, *, vocab_size: int, context_length: int) -> None:
    """Raise ``InputError`` unless rows are in-vocabulary, fit the context and have a suffix."""
    n, row_len = rows.shape
    if not 1 <= prefix_len < row_len:
        raise InputError(f"prefix length must be at least 1 and shorter than the rows ({row_len} tokens); got {prefix_len}")
    if row_len > context_length:
        raise InputError(f"rows have {row_len} tokens, more than the model's context of {context_length}")
    lo, hi = int(rows.min()), int(rows.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise InputError(f"token id {bad} is outside the model's vocabulary 0..{vocab_size - 1}")


def validate_for_model(rows: np.ndarray, prefix_len: int, model) -> None:
    validate_rows(rows, prefix_len, vocab_size=int(model.cfg.d_vocab), context_length=int(model.cfg.n_ctx))


def save_rows(path: str | Path, rows: np.ndarray, *, prefix_len: int | None = None) -> None:
    """Write rows as an int64 ``.npy`` (and ``<path>.json`` with ``prefix_len`` when given)."""
    path = Path(path)
    np.save(path, np.asarray(rows, dtype=np.int64), allow_pickle=False)
    if prefix_len is not None:
        path.with_suffix(".json").write_text(json.dumps({"prefix_len": prefix_len, "n_rows": len(rows)}, indent=2))


def mine_memorized(
    model, candidates: np.ndarray, prefix_len: int, *, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the candidate rows the unmodified model reproduces exactly by greedy decoding.

    Returns ``(memorized_rows, mask)`` where ``mask[i]`` says whether candidate i was kept.
    """
    from interp.generation import greedy_generate
    from interp.metrics import exact_match

    validate_for_model(candidates, prefix_len, model)
    tokens = torch.as_tensor(candidates)
    gen = greedy_generate(
        model, tokens[:, :prefix_len], tokens.shape[1] - prefix_len, batch_size=batch_size, progress=progress
    )
    mask = exact_match(gen, tokens[:, prefix_len:]).numpy()
    return candidates[mask], mask
