"""Output folders are claimed, not assumed.

A command writes only into a folder that is absent, empty, or marked as holding this package's
results of the same kind and arguments. The mark is a small JSON file (``MARKER``) created
atomically (written under a temporary name, then hard-linked to its final name, which fails if
it exists), holding the command (``kind``), a hash of its arguments (``key``) and, once the
model is loaded, the fingerprints of the files the results come from (``inputs``: weights,
data; see ``interp.fingerprint``).

- A folder holding anything else (a model folder, a user's files) is refused before any work.
- A folder marked by another command or other arguments is refused: results never mix.
- The same command and arguments on changed inputs (new weights under the same path, edited
  data) finds stale results: they are deleted, with a warning, and recomputed.
- While a command runs it holds an exclusive ``flock`` on ``LOCK``: an identical run started
  meanwhile waits for it and then reuses what it finished (a sweep's parts); a run with other
  arguments is refused at once.
- If the command fails before writing any result, the mark (and the folder, if the command
  created it) is removed again, so nothing is left behind.

Folders written by earlier versions (a ``config.json`` whose ``command`` is the same kind, no
mark) are adopted as stale: their results are recomputed.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from interp.errors import InputError

log = logging.getLogger(__name__)

MARKER = ".interp-results.json"
LOCK = ".interp-results.lock"
_OURS = {MARKER, LOCK}
RESULT_SUFFIXES = (".csv", ".parquet", ".json")
MARK_WAIT_S = 5.0  # how long a second run waits for a just-claimed folder's mark to appear


def check_path(out: str | os.PathLike, flag: str = "--out") -> Path:
    """The output path, refused when empty or naming an existing file (no writes)."""
    text = str(out)
    if not text.strip():
        raise InputError(f"{flag} is empty; name an output folder")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{flag} {text!r} is a file; expected a folder")
    return path


def _read_mark(folder: Path) -> dict | None:
    try:
        mark = json.loads((folder / MARKER).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"kind": "<unreadable>", "key": None}
    return mark if isinstance(mark, dict) else {"kind": "<unreadable>", "key": None}


def _legacy_kind(folder: Path) -> str | None:
    """``command`` of a result folder written before marks existed (None otherwise)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return config.get("command") if isinstance(config, dict) and isinstance(config.get("command"), str) else None


def _foreign(folder: Path, kind: str, flag: str, shown: str) -> None:
    """Refuse a folder that holds files and no mark (unless it is a legacy result of ``kind``)."""
    names = sorted(p.name for p in folder.iterdir() if p.name not in _OURS)
    if not names or _legacy_kind(folder) == kind:
        return
    what = "a model folder" if (folder / "config.json").is_file() and _legacy_kind(folder) is None else "files interp did not write"
    listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise InputError(f"{flag} {shown!r} holds {what} ({listed}); choose a new or empty folder")


def _check_mark(mark: dict, kind: str, key: str, flag: str, shown: str) -> None:
    if mark.get("kind") != kind:
        raise InputError(f"{flag} {shown!r} holds results of 'interp {mark.get('kind')}', not of 'interp {kind}'; "
                         "choose another folder")  # fmt: skip
    if mark.get("key") != key:
        raise InputError(f"{flag} {shown!r} holds results of a different {kind} run (other arguments); "
                         "choose another folder or delete it")  # fmt: skip


def _write_mark_exclusive(folder: Path, mark: dict) -> bool:
    """Create the mark atomically; False if one exists already."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".mark-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(mark, f, sort_keys=True)
        try:
            os.link(tmp, folder / MARKER)
        except FileExistsError:
            return False
        return True
    finally:
        Path(tmp).unlink(missing_ok=True)


def _replace_mark(folder: Path, mark: dict) -> None:
    from interp.results import write_json

    write_json(mark, folder / MARKER)


@dataclass
class Claim:
    """A claimed output folder (see the module docstring)."""

    folder: Path
    kind: str
    key: str

    def set_inputs(self, inputs: dict) -> None:
        """Record what the results come from; stale results of other inputs are deleted first."""
        mark = _read_mark(self.folder) or {"kind": self.kind, "key": self.key}
        if mark.get("inputs") not in (None, inputs):
            log.warning("%s holds results computed from other inputs (%s changed); recomputing them",
                        self.folder, ", ".join(k for k in inputs if (mark["inputs"] or {}).get(k) != inputs[k]))  # fmt: skip
            clear_results(self.folder)
        elif mark.get("inputs") is None and mark.get("legacy"):
            log.warning("%s holds results of an earlier interp version; recomputing them", self.folder)
            clear_results(self.folder)
        _replace_mark(self.folder, {"kind": self.kind, "key": self.key, "inputs": inputs})


def clear_results(folder: Path) -> None:
    """Delete the results interp writes in a claimed folder: ``parts/`` and top-level tables/configs."""
    shutil.rmtree(folder / "parts", ignore_errors=True)
    for p in folder.iterdir():
        if p.is_file() and p.name not in _OURS and p.suffix in RESULT_SUFFIXES:
            p.unlink()


def _mkdir(path: Path, flag: str, shown: str) -> list[Path]:
    """Create ``path`` and missing parents; return the folders created (deepest last)."""
    created = []
    for p in reversed([path, *path.parents]):
        if p.exists():
            continue
        try:
            p.mkdir()
        except FileExistsError:
            continue
        except OSError as err:
            _undo_dirs(created)
            raise InputError(f"{flag} {shown!r} cannot be created ({err.strerror or err})") from None
        created.append(p)
    return created


def _undo_dirs(created: list[Path]) -> None:
    for p in reversed(created):
        try:
            p.rmdir()
        except OSError:
            return


def _open_lock(folder: Path, flag: str, shown: str) -> int:
    try:
        return os.open(folder / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as err:
        raise InputError(f"{flag} {shown!r} is not writable ({err.strerror or err})") from None


def _check_writable(folder: Path, flag: str, shown: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise InputError(f"{flag} {shown!r} is not writable ({err.strerror or err})") from None


def _acquire(fd: int, folder: Path, kind: str, key: str, flag: str, shown: str) -> None:
    """Take the folder's lock; refuse at once if another run with other arguments holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
    deadline = time.monotonic() + MARK_WAIT_S
    mark = _read_mark(folder)
    while mark is None and time.monotonic() < deadline:  # the holder writes its mark right after locking
        time.sleep(0.05)
        mark = _read_mark(folder)
    if mark is not None:
        _check_mark(mark, kind, key, flag, shown)
    log.warning("%s is in use by an identical interp %s run; waiting for it to finish", shown, kind)
    fcntl.flock(fd, fcntl.LOCK_EX)


def _only_ours(folder: Path) -> bool:
    for p in folder.iterdir():
        if p.name in _OURS:
            continue
        if p.is_dir() and not any(p.iterdir()):
            continue
        return False
    return True


@contextmanager
def claim(out: str | os.PathLike, kind: str, key: str, *, flag: str = "--out") -> Iterator[Claim]:
    """Claim ``out`` for a ``kind`` run with argument hash ``key`` for the duration of the block.

    Raises ``InputError`` (before anything is written) when the folder is not this run's to
    write. On an exception inside the block, a claim that wrote no result is undone.
    """
    shown = str(out)
    path = check_path(out, flag)
    created = _mkdir(path, flag, shown)
    fd = -1
    new_mark = False
    try:
        _check_writable(path, flag, shown)
        mark = _read_mark(path)
        if mark is not None:  # fail fast, before waiting on a lock
            _check_mark(mark, kind, key, flag, shown)
        else:
            _foreign(path, kind, flag, shown)
        fd = _open_lock(path, flag, shown)
        _acquire(fd, path, kind, key, flag, shown)
        mark = _read_mark(path)  # authoritative, under the lock
        if mark is None:
            _foreign(path, kind, flag, shown)
            legacy = _legacy_kind(path) == kind
            new_mark = _write_mark_exclusive(path, {"kind": kind, "key": key, "inputs": None, "legacy": legacy})
            if not new_mark:
                mark = _read_mark(path)
        if mark is not None:
            _check_mark(mark, kind, key, flag, shown)
        yield Claim(path, kind, key)
    except BaseException:
        if new_mark and _only_ours(path):  # this run claimed the folder and wrote no result: undo
            for p in path.iterdir():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        elif created and not (path / MARKER).exists():
            (path / LOCK).unlink(missing_ok=True)
        _undo_dirs(created)  # only folders this run created, and only while empty
        raise
    finally:
        if fd >= 0:
            os.close(fd)  # releases the flock
