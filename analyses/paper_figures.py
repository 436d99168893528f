"""The paper's figure set: memorization (EM, TA, CE) against benchmark accuracy with each block's
attention bypassed, across models, and the relative accuracy drop per block for reasoning
versus language tasks (Menta et al., NAACL 2025, Figs. 2-4).

Compute, then draw. For each model the script runs ``interp bench --with-memorization`` into
``results/paper/<config-hash>/`` (reused when already there) and then draws from the saved
``joined.csv`` tables only.

    # default: both shipped organisms, their trained canaries, the built-in tasks
    python analyses/paper_figures.py
    # a real model with its weights in the HF cache or a local folder
    python analyses/paper_figures.py --model EleutherAI/pythia-1.4b --data pythia14b_mem.npy \\
        --prefix-len 32 --tasks piqa.jsonl --x-task piqa
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("paper_figures")


def organism_canary_set(arch: str, out_dir: Path) -> tuple[Path, int]:
    """The organism's trained canaries, every duplication level (1, 4, 16, 64), as token rows.

    These are the rows the organism was trained to memorize. They are used as they are, not
    mined down to the rows the model reproduces, so that a weak organism shows up as a low
    exact match in the figures instead of an empty set (``interp.data.mine_memorized`` mines a
    memorized set from candidates for real models).
    """
    import numpy as np

    from interp.cli import main as cli

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"canaries-{arch}.npy"
    meta = path.with_suffix(".json")
    rows, prefix_len = [], None  # always re-exported (cheap), so a retrained organism's rows are current
    for level in (1, 4, 16, 64):
        part = out_dir / f"canaries-{arch}-D{level}.npy"
        if cli(["organism", "canaries", "--arch", arch, "--duplicates", str(level), "--out", str(part)]) != 0:
            raise SystemExit(f"could not export the {arch} organism's canaries")
        rows.append(np.load(part))
        prefix_len = json.loads(part.with_suffix(".json").read_text())["prefix_len"]
    np.save(path, np.concatenate(rows))
    meta.write_text(json.dumps({"prefix_len": prefix_len, "n_rows": int(sum(len(r) for r in rows)), "levels": [1, 4, 16, 64]}))
    return path, prefix_len


def weights_sha256(model: str) -> str | None:
    """sha256 of a local model folder's ``model.safetensors`` (None for a hub id)."""
    from interp.models import resolve_source

    weights = Path(resolve_source(model)) / "model.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None


def code_sha256() -> str:
    """sha256 over the package's source (every ``interp/**/*.py``, by relative path): a cached step
    is reused only when the code that made it is unchanged."""
    package = ROOT / "interp"
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        h.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def tasks_sha256(tasks: str | None) -> str:
    """sha256 over the task files ``interp bench`` would read for ``tasks`` (None: the built-ins)."""
    from interp import tasks as registry

    names = [t.strip() for t in (tasks or ",".join(registry.BUILTIN)).split(",") if t.strip()]
    h = hashlib.sha256()
    for name in names:
        path = registry.path_of(name) if name in registry.BUILTIN else Path(name)
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def run_bench(
    model: str, data: Path, prefix_len: int, tasks: str | None, results: Path, progress: bool, limit: int | None = None
) -> Path:
    from interp.cli import main as cli
    from interp.results import config_hash

    # weights, task contents and the package's code are part of the key: a retrained model, a
    # regenerated task or a code change never reuses old results
    key = config_hash({"analysis": "paper", "model": model, "weights_sha256": weights_sha256(model), "code_sha256": code_sha256(),
                       "data_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
                       "prefix_len": prefix_len, "tasks": tasks, "tasks_sha256": tasks_sha256(tasks), "limit": limit})  # fmt: skip
    out = results / key
    if (out / "joined.csv").exists():
        log.info("reusing %s for %s", out, model)
        return out
    args = ["bench", "--model", model, "--out", str(out), "--with-memorization", str(data), "--prefix-len", str(prefix_len)]
    args += ["--tasks", tasks] if tasks else []
    args += ["--limit", str(limit), "--batch-size", "64"] if limit else ["--batch-size", "64"]
    args += [] if progress else ["--no-progress"]
    if cli(args) != 0:
        raise SystemExit(f"interp bench failed for {model}")
    return out


def draw(tables: dict[str, pd.DataFrame], out: Path, x_task: str | None) -> list[Path]:
    from interp import plots

    paths = plots.save(plots.memorization_vs_accuracy(tables, task=x_task), out, "memorization_vs_accuracy")
    for name, joined in tables.items():
        safe = name.replace("/", "_").replace(":", "_")
        paths += plots.save(plots.memorization_vs_accuracy({name: joined}, task=x_task), out, f"memorization_vs_accuracy_{safe}")
    paths += plots.save(plots.relative_drop_by_block(tables), out, "relative_drop_by_block")
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", help="model (repeatable); default: organism:neox and organism:neo")
    p.add_argument("--data", action="append", help="memorized rows per --model (.npy); default: the organism's trained canaries")
    p.add_argument("--prefix-len", type=int, help="prefix length of --data rows")
    p.add_argument("--tasks", help="benchmark tasks for interp bench (default: the built-in tasks)")
    p.add_argument("--x-task", help="task on the x axis (default: mean accuracy over the tasks)")
    p.add_argument("--limit", type=int, help="score only the first N items of each task")
    p.add_argument("--results", default=str(ROOT / "results" / "paper"))
    p.add_argument("--out", default=str(ROOT / "figures" / "paper"))
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    results = Path(args.results)
    models = args.model or ["organism:neox", "organism:neo"]
    if args.data and len(args.data) != len(models):
        p.error("give one --data per --model")
    if args.data and args.prefix_len is None:
        p.error("--data needs --prefix-len")
    tables = {}
    for i, model in enumerate(models):
        if args.data:
            data, prefix_len = Path(args.data[i]), args.prefix_len
        else:
            data, prefix_len = organism_canary_set(model.split(":", 1)[1], results / "data")
        folder = run_bench(model, data, prefix_len, args.tasks, results, not args.no_progress, args.limit)
        tables[model] = pd.read_csv(folder / "joined.csv")
    for path in draw(tables, Path(args.out), args.x_task):
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
