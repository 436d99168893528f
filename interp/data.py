"""Memorized-set formats and validation.

The public format (Menta et al.) is a 2-D numpy array of token ids, one memorized sequence per
row (64 ids: prefix 32, suffix 32). We also read JSONL (UTF-8, a leading BOM is allowed), one
object per line with either ``"tokens": [int, ...]`` or ``"text": str`` (tokenized with the
model's tokenizer, no BOS). ``.npy`` files are read with ``allow_pickle=False``: an array of
Python objects is refused, never unpickled.

Row lengths in JSONL: with ``length`` given, every row is cut to ``length`` tokens (a shorter
row is refused). Without it, ``"tokens"`` rows are never cut: they must all have one length.
``"text"`` rows (whose token counts differ naturally) are cut to the shortest row, with a
logged warning; in a file mixing both, the text rows are cut to the length of the tokens rows.

A set is "memorized" by a model when greedy decoding from each row's prefix reproduces its
suffix exactly; ``mine_memorized`` keeps only such rows from a pool of candidates.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from interp.errors import InputError

log = logging.getLogger(__name__)

_INT64 = np.iinfo(np.int64)
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def load_rows(path: str | Path, *, tokenizer=None, length: int | None = None) -> np.ndarray:
    """Read token rows from ``.npy`` or ``.jsonl``; returns an int64 array [n_rows, row_len]."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"data path {str(path)!r} is a folder; expected a .npy or .jsonl file")
    if not path.exists():
        raise InputError(f"data file {str(path)!r} does not exist")
    if not path.is_file():
        raise InputError(f"data path {str(path)!r} is not a regular file; expected a .npy or .jsonl file")
    if path.suffix == ".npy":
        return _load_npy(path)
    if path.suffix == ".jsonl":
        return _load_jsonl(path, tokenizer, length)
    raise InputError(f"data file {str(path)!r} must be a .npy array or a .jsonl file; found suffix {path.suffix!r}")


def _load_npy(path: Path) -> np.ndarray:
    name = repr(str(path))
    try:
        with path.open("rb") as f:
            head = f.read(len(_NPY_MAGIC))
    except OSError as err:
        raise InputError(f"data file {name} cannot be read ({err.strerror or err})") from None
    if not head:
        raise InputError(f"data file {name} is empty (0 bytes); expected a .npy array file")
    if head.startswith(_ZIP_MAGIC):
        raise InputError(f"data file {name} is a .npz (zip) archive, not a .npy array file; save one array with numpy.save")
    if head != _NPY_MAGIC:
        raise InputError(f"data file {name} is not a .npy array file (it does not start with the .npy header)")
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):  # numpy's advice to allow pickles is never passed on
            raise InputError(
                f"data file {name} holds Python objects, which are not loaded (that would unpickle them); "
                "expected a 2-D integer array of token ids"
            ) from None
        raise InputError(f"data file {name} is a damaged or unsupported .npy file ({err})") from None
    except (OSError, EOFError) as err:
        raise InputError(f"data file {name} is a damaged or unreadable .npy file ({err})") from None
    if not isinstance(arr, np.ndarray):
        raise InputError(f"data file {name} is not a single .npy array; found {type(arr).__name__}")
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise InputError(
            f"data file {name} must hold a 2-D integer array of token ids; found {arr.ndim}-D {arr.dtype} of shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise InputError(f"data file {name} holds no rows (shape {arr.shape})")
    if arr.shape[1] == 0:
        raise InputError(f"data file {name} holds rows of 0 tokens (shape {arr.shape}); expected at least one token per row")
    if arr.dtype.kind == "u" and arr.dtype.itemsize >= 8 and int(arr.max()) > _INT64.max:
        raise InputError(f"data file {name} holds token id {int(arr.max())}, too large for a token id (above {_INT64.max})")
    return arr.astype(np.int64)


def read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """Numbered non-blank lines of a UTF-8 text file (a leading BOM is dropped). Lines end at
    ``\\n`` only: a JSON string may hold U+2028 or U+0085, which ``str.splitlines`` would split on."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{what} {str(path)!r} cannot be read ({err.strerror or err})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        lineno = raw.count(b"\n", 0, err.start) + 1
        raise InputError(
            f"{path}:{lineno} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); expected a UTF-8 JSONL file"
        ) from None
    return [(i, line) for i, line in enumerate(text.split("\n"), 1) if line.strip()]


def json_type(value) -> str:
    """How JSON calls the type of a decoded value, with the value when short."""
    if value is None:
        return "null"
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )
    shown = json.dumps(value, ensure_ascii=False)
    return f"{kind} {shown}" if len(shown) <= 40 else kind


def _load_jsonl(path: Path, tokenizer, length: int | None) -> np.ndarray:
    if length is not None and (isinstance(length, bool) or not isinstance(length, int) or length < 1):
        raise InputError(f"row length for {str(path)!r} must be a positive integer; got {length!r}")
    rows: list[tuple[int, str, list[int]]] = []  # (line, "tokens" or "text", ids)
    for lineno, line in read_lines(path, "data file"):
        where = f"{path}:{lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{where} is not valid JSON ({err.msg})") from None
        rows.append((lineno, *_row_from_item(item, tokenizer, where)))
    if not rows:
        raise InputError(f"data file {str(path)!r} holds no rows")
    if length is None:
        length = _common_length(path, rows)
    short = [(lineno, len(ids)) for lineno, _, ids in rows if len(ids) < length]
    if short:
        raise InputError(
            f"data file {str(path)!r}: {len(short)} rows are shorter than {length} tokens "
            f"(first: line {short[0][0]}, {short[0][1]} tokens)"
        )
    return np.array([ids[:length] for _, _, ids in rows], dtype=np.int64)


def _common_length(path: Path, rows: list[tuple[int, str, list[int]]]) -> int:
    """The row length when none is given: the one length of the ``"tokens"`` rows (which are
    never cut), else the shortest ``"text"`` row (longer ones are cut, with a warning)."""
    tokens = [(lineno, len(ids)) for lineno, kind, ids in rows if kind == "tokens"]
    if tokens:
        first = tokens[0]
        other = next((t for t in tokens if t[1] != first[1]), None)
        if other is not None:
            found = sorted({n for _, n in tokens})
            raise InputError(
                f"data file {str(path)!r} holds \"tokens\" rows of different lengths {found} (line {other[0]} has "
                f"{other[1]} tokens, line {first[0]} has {first[1]}), which are not cut; expected rows of one length"
            )
        length = first[1]
        text_short = next(((lineno, len(ids)) for lineno, kind, ids in rows if kind == "text" and len(ids) < length), None)
        if text_short is not None:
            raise InputError(
                f"{path}:{text_short[0]} holds text of {text_short[1]} tokens, shorter than the {length} tokens of the "
                f"file's \"tokens\" rows, which are not cut; expected text of at least {length} tokens"
            )
    else:
        length = min(len(ids) for _, _, ids in rows)
    cut = sum(1 for _, kind, ids in rows if kind == "text" and len(ids) > length)
    if cut:
        log.warning("data file %r: cut %d of %d text rows to %d tokens (the shortest row)", str(path), cut, len(rows), length)
    return length


def _row_from_item(item, tokenizer, where: str) -> tuple[str, list[int]]:
    """``("tokens", ids)`` or ``("text", ids)`` from one decoded JSONL line."""
    expected = 'expected an object with "tokens" (a list of integer token ids) or "text" (a string)'
    if not isinstance(item, dict):
        raise InputError(f"{where}: {expected}; found {json_type(item)}")
    if "tokens" in item and "text" in item:
        raise InputError(f'{where} holds both "tokens" and "text"; {expected}, not both')
    if "tokens" in item:
        return "tokens", _token_ids(item["tokens"], where)
    if "text" in item:
        text = item["text"]
        if not isinstance(text, str):
            raise InputError(f'{where}: "text" must be a string; found {json_type(text)}')
        if tokenizer is None:
            raise InputError(f"{where} holds text but no tokenizer was given to tokenize it")
        ids = [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
        if not ids:
            raise InputError(f'{where}: "text" {text!r} encodes to no tokens; expected text of at least one token')
        return "text", ids
    raise InputError(f"{where}: {expected}; found keys {sorted(item)}")


def _token_ids(tokens, where: str) -> list[int]:
    """A JSON list of integer token ids, checked element by element (no silent float truncation)."""
    if not isinstance(tokens, list):
        raise InputError(f'{where}: "tokens" must be a list of integer token ids; found {json_type(tokens)}')
    if not tokens:
        raise InputError(f'{where}: "tokens" is an empty list; expected at least one token id')
    for i, t in enumerate(tokens):
        if not isinstance(t, int) or isinstance(t, bool):
            raise InputError(f'{where}: "tokens" must hold integer token ids; element {i} is {json_type(t)}')
        if not _INT64.min <= t <= _INT64.max:
            raise InputError(f'{where}: "tokens" element {i} is {t}, outside the 64-bit integer range of token ids')
    return tokens


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
