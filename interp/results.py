"""Saving results: atomic writes of tables (CSV, parquet) and configs (JSON).

Every file is written to a temporary name in the same folder and moved into place with
``os.replace``, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pandas as pd


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set back at once
    os.umask(mask)
    return mask


# read once at import: os.umask sets the process-wide mask, so calling it per write could hand
# another thread's new file mode 0666 for an instant
_UMASK = _read_umask()


def publish(tmp: str | Path, path: Path) -> None:
    """Move a finished temporary file to ``path`` with the permissions a plain ``open`` would
    give under the umask at import (``mkstemp`` creates files readable by their owner only)."""
    os.chmod(tmp, 0o666 & ~_UMASK)
    os.replace(tmp, path)


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_csv(df: pd.DataFrame, path: str | Path) -> Path:
    return _atomic(Path(path), lambda p: df.to_csv(p, index=False))


def write_parquet(df: pd.DataFrame, path: str | Path) -> Path:
    return _atomic(Path(path), lambda p: df.to_parquet(p, index=False))


def write_bytes(data: bytes, path: str | Path) -> Path:
    return _atomic(Path(path), lambda p: p.write_bytes(data))


def write_json(obj, path: str | Path) -> Path:
    return _atomic(Path(path), lambda p: p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"))


def config_hash(config: dict) -> str:
    """Short stable hash of a JSON-serialisable config (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
