"""Localization demo on planted ground truth: tiny GPT-NeoX and GPT-Neo models in which head
L1H2 is made decisive (``tests/test_localize.make_planted``), ranked by every method of
``interp localize`` with knockouts; then ``localization_figures.py`` draws the committed
``figures/localization/planted-*`` set.

    python analyses/localization_demo.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "analyses"))
METHODS = ("block-bypass", "head-bypass", "patching", "attribution")


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    from test_localize import PREFIX, make_planted, own_continuations

    import localization_figures
    from interp.cli import main as cli
    from interp.models import load_model

    results = ROOT / "results" / "localization"
    folders = []
    for arch in ("neox", "neo"):
        folder = make_planted(results / f"planted-model-{arch}", arch)
        model = load_model(folder)
        np.save(folder / "rows.npy", own_continuations(model, 16, seed=0))
        np.save(folder / "other.npy", own_continuations(model, 16, seed=1))
        np.save(folder / "general.npy", np.random.default_rng(3).integers(1, 500, (16, 14)))
        for method in METHODS:
            out = results / f"planted-{arch}" / method
            rc = cli(["localize", "--model", str(folder), "--data", str(folder / "rows.npy"), "--prefix-len", str(PREFIX),
                      "--method", method, "--out", str(out), "--truth", "L1H2", "--no-progress", "--knockout", "1,2,3",
                      "--other-data", str(folder / "other.npy"), "--general-data", str(folder / "general.npy")])  # fmt: skip
            if rc != 0:
                raise SystemExit(f"interp localize --method {method} failed on {arch}")
            folders.append(str(out))
    return localization_figures.main([*folders, "--out", str(ROOT / "figures" / "localization")])


if __name__ == "__main__":
    sys.exit(main())
