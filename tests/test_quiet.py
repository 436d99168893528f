"""Third-party notices stay off stderr: an input error prints exactly its one line (interp/_quiet.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import interp  # noqa: F401  (installs the filter)


def test_input_error_after_model_load_is_one_stderr_line(tmp_path):
    # --layers is checked against the loaded model, so the model classes (and, through transformers,
    # the `kernels` offline probes that used to log three WARNING lines) are imported before the error.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "theory"
    proc = subprocess.run(
        [sys.executable, "-m", "interp", "theory", "--out", str(out), "--n-rows", "2", "--seq-len", "16",
         "--layers", "99", "--no-progress"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("interp theory: error: "), proc.stderr
    assert not out.exists()


def test_filter_drops_only_the_offline_trust_notice(caplog):
    notice = "Skipping publisher trust check for 'kernels-community/flash-attn2' because Hugging Face Hub is in offline mode."
    kernels_log = logging.getLogger("kernels._internals.hf_hub")
    with caplog.at_level(logging.DEBUG):
        kernels_log.warning(notice)  # dropped
        kernels_log.warning("some other kernels warning")
        kernels_log.error(notice)  # not a notice at ERROR level
        logging.getLogger("interp.theory").warning(notice)  # our own loggers are untouched
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("kernels._internals.hf_hub", "WARNING", "some other kernels warning"),
        ("kernels._internals.hf_hub", "ERROR", notice),
        ("interp.theory", "WARNING", notice),
    ]
