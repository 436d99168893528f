"""File fingerprints (sha256 cached by size, mtime and inode) and output-folder claims."""

import hashlib
import json
import os
import shutil
import time

import pytest

from interp import fingerprint, outputs
from interp.errors import InputError


def test_file_sha256_is_the_plain_sha256_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc" * 1000)
    assert fingerprint.file_sha256(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    reads = []
    real = fingerprint._sha256_of
    monkeypatch.setattr(fingerprint, "_sha256_of", lambda p: reads.append(p) or real(p))
    assert fingerprint.file_sha256(f) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert reads == []  # unchanged file: from the cache
    f.write_bytes(b"abd" * 1000)  # same size, new content: a new mtime
    os.utime(f, ns=(os.stat(f).st_atime_ns, os.stat(f).st_mtime_ns + 1))
    assert fingerprint.file_sha256(f) == hashlib.sha256(b"abd" * 1000).hexdigest()
    assert reads == [f]


def test_a_broken_cache_only_costs_rehashing(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / fingerprint.CACHE_NAME).write_text("{not json")
    f = tmp_path / "x"
    f.write_text("hello")
    assert fingerprint.file_sha256(f) == hashlib.sha256(b"hello").hexdigest()


def test_folder_fingerprint_follows_every_visible_file(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE_DIR", str(tmp_path / "cache"))
    m = tmp_path / "m"
    m.mkdir()
    (m / "config.json").write_text("{}")
    (m / "model.safetensors").write_bytes(b"1")
    first = fingerprint.folder_fingerprint(m)
    (m / ".hidden").write_text("x")
    (m / "sub").mkdir()
    assert fingerprint.folder_fingerprint(m) == first
    (m / "model.safetensors").write_bytes(b"2")
    assert fingerprint.folder_fingerprint(m) != first


def test_claim_undoes_itself_when_the_run_fails_before_writing(tmp_path):
    out = tmp_path / "a" / "b"
    with pytest.raises(RuntimeError):
        with outputs.claim(out, "sweep", "k1"):
            assert (out / outputs.MARKER).is_file()
            raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()


def test_claim_keeps_partial_results_and_refuses_other_keys(tmp_path):
    out = tmp_path / "o"
    with pytest.raises(RuntimeError):
        with outputs.claim(out, "sweep", "k1") as c:
            (c.folder / "parts").mkdir()
            (c.folder / "parts" / "p.parquet").write_text("x")
            raise RuntimeError("killed")
    assert (out / "parts" / "p.parquet").exists()  # kept for resuming
    with pytest.raises(InputError, match="different sweep run"):
        with outputs.claim(out, "sweep", "k2"):
            pass
    with pytest.raises(InputError, match="interp sweep"):
        with outputs.claim(out, "bench", "k1"):
            pass
    with outputs.claim(out, "sweep", "k1") as c:
        c.set_inputs({"model": "a"})
    assert (out / "parts" / "p.parquet").exists()


def test_changed_inputs_clear_stale_results_only(tmp_path):
    out = tmp_path / "o"
    with outputs.claim(out, "theory", "k") as c:
        c.set_inputs({"model": "a"})
        (out / "bounds.csv").write_text("old")
    (out / "weights.sha256").write_text("a stamp of someone's")
    with outputs.claim(out, "theory", "k") as c:
        c.set_inputs({"model": "b"})
        assert not (out / "bounds.csv").exists()
    assert (out / "weights.sha256").exists()
    assert json.loads((out / outputs.MARKER).read_text())["inputs"] == {"model": "b"}


def test_legacy_result_folder_is_adopted_and_recomputed(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"command": "bench"}))
    (out / "accuracy.csv").write_text("old")
    with pytest.raises(InputError, match="'interp bench', not of 'interp theory'"):
        with outputs.claim(out, "theory", "k"):
            pass
    with outputs.claim(out, "bench", "k") as c:
        c.set_inputs({"model": "a"})
    assert not (out / "accuracy.csv").exists()


def test_legacy_folder_with_a_users_file_is_not_adopted(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"command": "sweep"}))
    (out / "my_notes.csv").write_text("mine")
    with pytest.raises(InputError, match="interp did not write"):
        with outputs.claim(out, "sweep", "k"):
            pass
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "my_notes.csv"]


def test_stale_results_are_cleared_but_a_users_files_are_kept(tmp_path):
    out = tmp_path / "o"
    with outputs.claim(out, "sweep", "k") as c:
        c.set_inputs({"data": "a"})
        (out / "parts").mkdir()
        for name in ("parts/baseline__00000.parquet", "parts/baseline__00000.json", "summary.csv", "config.json"):
            (out / name).write_text("result")
    for name in ("my_plot.csv", "annotations.json", "parts/README.txt"):
        (out / name).write_text("mine")
    with outputs.claim(out, "sweep", "k") as c:
        c.set_inputs({"data": "b"})
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not p.name.startswith(".interp"))
    assert left == ["annotations.json", "my_plot.csv", "parts/README.txt"]


def test_a_folder_claimed_by_a_killed_run_without_results_is_taken_over(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / outputs.MARKER).write_text(json.dumps({"kind": "sweep", "key": "other", "inputs": None}))
    (out / outputs.LOCK).write_text("")
    with outputs.claim(out, "sweep", "mine") as c:
        c.set_inputs({"model": "a"})
        (out / "summary.csv").write_text("x")
    assert json.loads((out / outputs.MARKER).read_text())["key"] == "mine"


def test_file_sha256_notices_a_copy_that_restores_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("INTERP_CACHE_DIR", str(tmp_path / "cache"))
    a, b, d = tmp_path / "a", tmp_path / "b", tmp_path / "d"
    a.write_bytes(b"1" * 64)
    b.write_bytes(b"2" * 64)
    for f in (a, b):
        os.utime(f, ns=(10**18, 10**18))
    shutil.copy2(a, d)
    assert fingerprint.file_sha256(d) == hashlib.sha256(b"1" * 64).hexdigest()
    time.sleep(0.01)
    shutil.copy2(b, d)  # same size, inode and mtime; only the change time moves
    assert fingerprint.file_sha256(d) == hashlib.sha256(b"2" * 64).hexdigest()
