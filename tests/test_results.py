"""Atomic result writes: nothing half-written under the final name, ordinary file permissions."""

import os
import stat

import pandas as pd
import pytest

from interp import results


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_permissions_of_a_plain_open(tmp_path, monkeypatch, mask, mode):
    """A result file is as readable as one made by ``open`` under the umask (read at import; here
    set for the test), not owner-only like the temporary file it was written to."""
    monkeypatch.setattr(results, "_UMASK", mask)
    old = os.umask(mask)
    try:
        paths = [results.write_csv(pd.DataFrame({"a": [1]}), tmp_path / "t.csv"),
                 results.write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet"),
                 results.write_json({"a": 1}, tmp_path / "t.json")]  # fmt: skip
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert want == mode
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [want] * 3


def test_the_umask_is_read_without_changing_it():
    before = os.umask(0o027)
    try:
        assert results._read_umask() == 0o027 and os.umask(0o027) == 0o027
    finally:
        os.umask(before)


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    results.write_json({"a": 1}, tmp_path / "t.json")

    def boom(path):
        path.write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        results._atomic(tmp_path / "t.json", boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]
    assert (tmp_path / "t.json").read_text() == "{\n  \"a\": 1\n}\n"  # the earlier file, untouched
