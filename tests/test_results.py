"""Atomic result writes: nothing half-written under the final name, ordinary file permissions."""

import os
import stat

import pandas as pd
import pytest

from interp import results


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    """A result file is as readable as one made by ``open`` under the current umask, not owner-only
    like the temporary file it was written to."""
    old = os.umask(0o022)
    try:
        paths = [results.write_csv(pd.DataFrame({"a": [1]}), tmp_path / "t.csv"),
                 results.write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "t.parquet"),
                 results.write_json({"a": 1}, tmp_path / "t.json")]  # fmt: skip
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    want = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert want == 0o644
    assert [stat.S_IMODE(p.stat().st_mode) for p in paths] == [want] * 3


def test_a_failed_write_leaves_neither_the_file_nor_a_temporary(tmp_path):
    results.write_json({"a": 1}, tmp_path / "t.json")

    def boom(path):
        path.write_text("half")
        raise RuntimeError("crash mid-write")

    with pytest.raises(RuntimeError):
        results._atomic(tmp_path / "t.json", boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]
    assert (tmp_path / "t.json").read_text() == "{\n  \"a\": 1\n}\n"  # the earlier file, untouched
