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
import re
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
_TEMP_PREFIXES = (".mark-", ".write-test-")  # another run's short-lived files in the folder
# every file name a subcommand writes into its --out (only these are ever deleted as stale)
RESULT_FILES = frozenset({
    "config.json", "sequences.parquet", "summary.csv", "accuracy.csv", "joined.csv", "memorization.csv",
    "perplexity.csv", "bounds.csv", "propagation.csv", "ranking.csv", "recall.csv", "heads.parquet",
    "patching.parquet", "attribution.parquet", "head_patching.parquet", "correlation.csv", "selectivity.csv",
    "general_nll.parquet", "selectivity_bootstrap.csv", "knockout.csv",
})  # fmt: skip
PARTS = "parts"
STAMPS = frozenset({"weights.sha256"})  # analyses/run_all.py's stamp beside a step's results
MARK_WAIT_S = 5.0  # how long a second run waits for a just-claimed folder's mark to appear
_NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL)  # file systems without flock


def check_path(out: str | os.PathLike, flag: str = "--out") -> Path:
    """The output path, refused when empty or naming an existing file (no writes)."""
    text = str(out)
    if not text.strip():
        raise InputError(f"{flag} is empty; name an output folder")
    try:
        path = Path(text).expanduser()
    except RuntimeError as err:  # ~user that does not exist
        raise InputError(f"{flag} {text!r}: {err}") from None
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


def _entries(folder: Path) -> list[Path]:
    """The folder's entries, without the mark, the lock and other runs' short-lived files."""
    return [p for p in folder.iterdir() if p.name not in _OURS and not p.name.startswith(_TEMP_PREFIXES)]


def _legacy_kind(folder: Path) -> str | None:
    """``command`` of a result folder written before marks existed, holding nothing but result
    files, parts and stamps (None otherwise)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(config, dict) and isinstance(config.get("command"), str)):
        return None
    known = RESULT_FILES | STAMPS | {PARTS}
    return config["command"] if all(p.name in known for p in _entries(folder)) else None


def _foreign(folder: Path, kind: str, flag: str, shown: str) -> None:
    """Refuse a folder that holds files and no mark (unless it is a legacy result of ``kind``)."""
    names = sorted(p.name for p in _entries(folder))
    legacy = _legacy_kind(folder)
    if not names or legacy == kind:
        return
    if legacy is not None:
        raise InputError(f"{flag} {shown!r} holds results of 'interp {legacy}', not of 'interp {kind}'; choose another folder")
    what = "a model folder" if _is_model_folder(folder) else "files interp did not write"
    listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise InputError(f"{flag} {shown!r} holds {what} ({listed}); choose a new or empty folder")


def _is_model_folder(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and ("model_type" in config or "architectures" in config)


def _check_mark(mark: dict, kind: str, key: str, flag: str, shown: str) -> None:
    if mark.get("kind") != kind:
        raise InputError(f"{flag} {shown!r} holds results of 'interp {mark.get('kind')}', not of 'interp {kind}'; "
                         "choose another folder")  # fmt: skip
    if mark.get("key") != key:
        raise InputError(f"{flag} {shown!r} holds results of a different {kind} run (other arguments); "
                         "choose another folder or delete it")  # fmt: skip


def _write_mark_exclusive(folder: Path, mark: dict) -> bool:
    """Create the mark atomically, whole (a hard link of a written file; on a file system without
    hard links, an exclusive create); False if one exists already."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".mark-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(mark, f, sort_keys=True)
        try:
            os.link(tmp, folder / MARKER)
        except FileExistsError:
            return False
        except OSError:
            try:
                with open(folder / MARKER, "x") as f:
                    json.dump(mark, f, sort_keys=True)
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
    """Delete the results interp writes in a claimed folder, and nothing else: the files named in
    ``RESULT_FILES`` and the sweep's part files (``NAME__NNNNN.parquet`` and their records) under
    ``parts/``. A user's own files there are kept."""
    for name in RESULT_FILES:
        p = folder / name
        if p.is_file() and not p.is_symlink():
            p.unlink()
    parts = folder / PARTS
    if parts.is_dir() and not parts.is_symlink():
        for p in parts.iterdir():
            if p.is_file() and re.fullmatch(r"[^/]+__\d{5}\.(parquet|json)", p.name):
                p.unlink()
        if not any(parts.iterdir()):
            parts.rmdir()


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


def _lock_is_current(fd: int, folder: Path) -> bool:
    """Whether the locked file is still the folder's lock file (a failed run may have removed it
    while this one waited, and a third would then lock a new one)."""
    try:
        st = os.stat(folder / LOCK)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_ino, st.st_dev) == (own.st_ino, own.st_dev)


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
        if err.errno in _NO_LOCKS:
            log.warning("the file system of %s has no file locks: identical runs started together are not serialized", shown)
            return
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
    """Whether the folder holds nothing but the mark, the lock and empty folders (no result)."""
    return all(p.is_dir() and not p.is_symlink() and not any(p.iterdir()) for p in _entries(folder))


@contextmanager
def claim(out: str | os.PathLike, kind: str, key: str, *, flag: str = "--out") -> Iterator[Claim]:
    """Claim ``out`` for a ``kind`` run with argument hash ``key`` for the duration of the block.

    Raises ``InputError`` (before anything is written) when the folder is not this run's to
    write. On an exception inside the block, a claim that wrote no result is undone. A folder
    that a killed run claimed but wrote no result into (only the mark and the lock, which is
    free) is taken over.
    """
    shown = str(out)
    path = check_path(out, flag)
    created: list[Path] = []
    fd = -1
    new_mark = False
    try:
        while True:
            created += _mkdir(path, flag, shown)
            _check_writable(path, flag, shown)
            mark = _read_mark(path)
            if mark is None:
                _foreign(path, kind, flag, shown)
            elif not _only_ours(path):  # fail fast, before waiting on a lock
                _check_mark(mark, kind, key, flag, shown)
            fd = _open_lock(path, flag, shown)
            _acquire(fd, path, kind, key, flag, shown)
            if _lock_is_current(fd, path):
                break
            os.close(fd)  # the lock file was replaced while this run waited: start again
            fd = -1
        mark = _read_mark(path)  # authoritative, under the lock
        if mark is not None and _mark_differs(mark, kind, key) and _only_ours(path):
            log.warning("%s was claimed by an interp %s run that ended without a result; taking it over", shown, mark.get("kind"))
            (path / MARKER).unlink()
            mark = None
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
            (path / MARKER).unlink(missing_ok=True)
            (path / LOCK).unlink(missing_ok=True)  # a run waiting on it notices (_lock_is_current)
            for p in _entries(path):
                p.rmdir()
        elif created and not (path / MARKER).exists():
            (path / LOCK).unlink(missing_ok=True)
        _undo_dirs(created)  # only folders this run created, and only while empty
        raise
    finally:
        if fd >= 0:
            os.close(fd)  # releases the flock


def _mark_differs(mark: dict, kind: str, key: str) -> bool:
    return mark.get("kind") != kind or mark.get("key") != key


def make_readable(folder: Path) -> None:
    """Ordinary permissions for a folder made by ``mkdtemp`` (0700) and the files in it."""
    folder.chmod(0o755)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o644)


@contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary sibling of ``out`` to write a whole folder into: when the block ends normally it
    replaces ``out`` (readable: 0755 for the folder, 0644 for its files); on any error it is
    deleted and ``out`` is left as it was."""
    import shutil

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield tmp
        make_readable(tmp)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
