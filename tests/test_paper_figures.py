"""The paper figure script end to end on a tiny model: compute once, reuse, draw."""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analyses"))

import paper_figures  # noqa: E402

from interp import plots  # noqa: E402


def _task(path: Path) -> Path:
    items = [{"context": f"x = {i} +", "choices": [" 1", " 2", " 3"], "gold": i % 3} for i in range(6)]
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    return path


def test_script_computes_once_then_reuses_and_draws(tmp_path, tiny_dirs):
    model = str(tiny_dirs["neox"])
    rows = np.random.default_rng(0).integers(1, 500, (4, 10))
    np.save(tmp_path / "rows.npy", rows)
    args = ["--model", model, "--data", str(tmp_path / "rows.npy"), "--prefix-len", "6",
            "--tasks", str(_task(tmp_path / "toy.jsonl")), "--results", str(tmp_path / "res"),
            "--out", str(tmp_path / "fig"), "--no-progress"]  # fmt: skip
    assert paper_figures.main(args) == 0
    joined = next((tmp_path / "res").glob("*/joined.csv"))
    stamp = joined.stat().st_mtime_ns
    assert paper_figures.main(args) == 0
    assert joined.stat().st_mtime_ns == stamp  # cached result reused, not recomputed
    task = tmp_path / "toy.jsonl"  # same path and name, new items: the cache must not be reused
    task.write_text(task.read_text().replace('"gold": 0', '"gold": 2'))
    assert paper_figures.main(args) == 0
    assert len(list((tmp_path / "res").glob("*/joined.csv"))) == 2
    table = pd.read_csv(joined)
    assert table.config.tolist() == ["baseline", "block:0", "block:1", "block:2"]
    for name in ["memorization_vs_accuracy", "relative_drop_by_block"]:
        for ext in ["png", "pdf"]:
            assert (tmp_path / "fig" / f"{name}.{ext}").stat().st_size > 1000


def test_code_hash_follows_the_package_source(tmp_path, monkeypatch):
    """A cached step is keyed by the package's code: any change to a file under interp/ (content or
    name) changes the hash, and the paper figures' cache key follows it."""
    package = tmp_path / "interp"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(paper_figures, "ROOT", tmp_path)
    first = paper_figures.code_sha256()
    assert paper_figures.code_sha256() == first
    (package / "sub" / "b.py").write_text("y = 3\n")
    edited = paper_figures.code_sha256()
    (package / "sub" / "b.py").rename(package / "b.py")
    moved = paper_figures.code_sha256()
    (package / "notes.txt").write_text("not code")
    assert len({first, edited, moved}) == 3 and paper_figures.code_sha256() == moved


def test_code_change_recomputes_the_cached_step(tmp_path, tiny_dirs, monkeypatch):
    model = str(tiny_dirs["neox"])
    np.save(tmp_path / "rows.npy", np.random.default_rng(0).integers(1, 500, (4, 10)))
    args = ["--model", model, "--data", str(tmp_path / "rows.npy"), "--prefix-len", "6",
            "--tasks", str(_task(tmp_path / "toy.jsonl")), "--results", str(tmp_path / "res"),
            "--out", str(tmp_path / "fig"), "--no-progress"]  # fmt: skip
    monkeypatch.setattr(paper_figures, "code_sha256", lambda: "code-1")
    assert paper_figures.main(args) == 0 and paper_figures.main(args) == 0
    assert len(list((tmp_path / "res").glob("*/joined.csv"))) == 1
    monkeypatch.setattr(paper_figures, "code_sha256", lambda: "code-2")
    assert paper_figures.main(args) == 0
    assert len(list((tmp_path / "res").glob("*/joined.csv"))) == 2


def test_scatter_colours_points_by_block_and_marks_the_original():
    joined = pd.DataFrame({"config": ["baseline", "block:0", "block:1", "block:2"], "exact_match": [1, 0, 0.5, 0.9],
                           "token_accuracy": [1, 0.1, 0.6, 0.95], "completion_entropy": [2, 30, 10, 3],
                           "acc:t": [0.7, 0.4, 0.6, 0.69], "drop_reasoning": [0, 0.4, 0.1, 0.01],
                           "drop_language": [0, 0.5, 0.2, 0.02]})  # fmt: skip
    fig = plots.memorization_vs_accuracy({"m": joined}, task="t")
    ax = fig.axes[0]
    blocks, original = ax.collections[0], ax.collections[1]
    assert blocks.get_array().tolist() == [0, 1, 2]
    assert np.allclose(blocks.get_offsets(), [[0.4, 0], [0.6, 0.5], [0.69, 0.9]])
    assert np.allclose(original.get_offsets(), [[0.7, 1]])
    with pytest.raises(ValueError, match="no accuracy for task"):
        plots.memorization_vs_accuracy({"m": joined}, task="nope")
