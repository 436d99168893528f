"""Fingerprints of the files a result was computed from (model weights, data).

A cached result is reused only while the files it came from are unchanged. A model folder's
fingerprint is a sha256 over the names and contents of its files (weights, config, tokenizer),
so replacing ``model.safetensors`` with another model's changes it. Hashing a multi-GB checkpoint
takes seconds, so each file's sha256 is remembered in a small JSON cache keyed by the file's
real path, size, modification and change times, inode and device: an unchanged file is not
read again, a rewritten one is (its change time moves even when ``cp -p`` restores the
modification time).

The cache lives in ``$INTERP_CACHE_DIR`` (default ``$XDG_CACHE_HOME/interp``, else
``~/.cache/interp``); a missing, unreadable or unwritable cache only costs rehashing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_NAME = "file-sha256.json"
_CHUNK = 1 << 22
MAX_ENTRIES = 4096


def cache_dir() -> Path:
    if os.environ.get("INTERP_CACHE_DIR"):
        return Path(os.environ["INTERP_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "interp"


def _stat_key(path: Path) -> str:
    st = path.stat()  # ctime too: `cp -p` or `touch -r` can restore size and mtime, never ctime
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{st.st_dev}"


def _load_cache() -> dict[str, str]:
    try:
        data = json.loads((cache_dir() / CACHE_NAME).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict[str, str]) -> None:
    from interp.results import write_json

    if len(cache) > MAX_ENTRIES:  # newest last (dicts keep insertion order): drop the oldest
        cache = dict(list(cache.items())[-MAX_ENTRIES:])
    try:
        write_json(cache, cache_dir() / CACHE_NAME)
    except OSError as err:  # the cache is an optimization only
        log.debug("could not write the hash cache: %s", err)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, *, cache: dict[str, str] | None = None) -> str:
    """sha256 of a file's bytes, reused from the cache while its size, mtime and inode are unchanged."""
    path = Path(path)
    own = cache is None
    cache = _load_cache() if own else cache
    key = _stat_key(path)
    digest = cache.get(key)
    if digest is None:
        digest = cache[key] = _sha256_of(path)
        if own:
            _save_cache(cache)
    return digest


def folder_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the names and contents of the visible files directly in ``folder`` (a model
    folder: weights, config, tokenizer). Subfolders and dot-files are not part of the model."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    cache = _load_cache()
    before = len(cache)
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + file_sha256(p, cache=cache).encode() + b"\0")
    if len(cache) != before:
        _save_cache(cache)
    return h.hexdigest()


def inputs_fingerprint(model_folder: str | os.PathLike, files: dict[str, str | os.PathLike | None]) -> dict[str, str | None]:
    """``{"model": folder fingerprint, name: file sha256 or None, ...}``: what a result depends on."""
    out: dict[str, str | None] = {"model": folder_fingerprint(model_folder)}
    cache = _load_cache()
    before = len(cache)
    for name, path in files.items():
        out[name] = None if path is None else file_sha256(path, cache=cache)
    if len(cache) != before:
        _save_cache(cache)
    return out


def model_weights_sha256(model) -> str:
    """sha256 over a loaded model's state (names, dtypes, shapes and values of every entry of
    its Hugging Face state dict, in name order): the same weights give the same fingerprint
    whatever folder they were loaded from, and whether the model is a bare Hugging Face model
    or the one inside a TransformerBridge (whose wrappers add ``_original_component`` to the
    names and alias some tensors under extra names; the names hashed are the Hugging Face
    class's own, read from an empty copy on the meta device)."""
    import torch

    hf = getattr(model, "original_model", model)
    state: dict = {}
    for name, t in hf.state_dict().items():
        state.setdefault(name.replace("._original_component", ""), t)
    from interp.errors import InputError

    try:
        with torch.device("meta"):
            names = sorted(type(hf)(hf.config).state_dict())
    except Exception as err:  # noqa: BLE001 (any model class that cannot be rebuilt from its config)
        raise InputError(f"cannot fingerprint this model's weights: {type(hf).__name__} cannot be rebuilt from its config "
                         f"({type(err).__name__})") from None  # fmt: skip
    missing = [n for n in names if n not in state]
    if missing:
        raise InputError(f"cannot fingerprint this model's weights: its state lacks {missing[:3]} (a wrapper interp does not know)")
    h = hashlib.sha256()
    for name in names:
        t = state[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
