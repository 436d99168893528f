"""``interp bench``: zero-shot multiple-choice accuracy, baseline and each block's attention bypassed.

Writes into ``--out``: ``accuracy.csv`` (one row per config x task: ``config,task,acc,acc_norm``
then ``kind,n_items,chance`` and standard errors), ``joined.csv`` (one row per config: accuracy
per task, relative drop from baseline, language/reasoning averages, and with
``--with-memorization`` the memorization means of ``interp sweep`` first) and ``config.json``.
With ``--with-memorization`` also ``sequences.parquet`` and ``memorization.csv``; with
``--perplexity`` also ``perplexity.csv`` (token-level, rolling windows over the context
length). Scoring follows lm-evaluation-harness (see ``interp.benchmarks``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from pathlib import Path

from interp import results
from interp.benchmarks import evaluate, joined_table, perplexity_table, resolve_tasks
from interp.cli.common import (add_interventions_arg, add_model_arg, check_interventions_file, check_unique, claimed_output,
                               interventions_configs, parse_int_list, positive_int, record_inputs)
from interp.data import load_rows, validate_for_model
from interp.errors import InputError
from interp.memorization import block_configs, summarize, sweep
from interp.models import load_model, model_name
from interp.outputs import check_path
from interp.tasks import BUILTIN


def register(sub) -> None:
    p = sub.add_parser("bench", help="benchmark accuracy with each block's attention bypassed", description=__doc__)
    add_model_arg(p)
    p.add_argument("--tasks", default=",".join(BUILTIN),
                   help="comma-separated JSONL task files and/or built-in task names (default: every built-in task: "
                        + ", ".join(BUILTIN) + ")")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--blocks", help="comma-separated blocks to bypass (default: every block)")
    p.add_argument("--with-memorization", metavar="FILE", help="memorized rows (.npy or .jsonl) to sweep and join")
    p.add_argument("--prefix-len", type=positive_int, help="prompt tokens of each memorized row (with --with-memorization)")
    p.add_argument("--perplexity", metavar="FILES", help="comma-separated UTF-8 text files: adds perplexity.csv")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--limit", type=positive_int, help="score only the first N items of each task (as lm-eval's --limit)")
    add_interventions_arg(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    if (args.with_memorization is None) != (args.prefix_len is None):
        raise InputError("--with-memorization and --prefix-len must be given together")
    check_path(args.out)
    check_interventions_file(args)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    tasks = resolve_tasks(args.tasks)
    if args.limit is not None:
        tasks = [dataclasses.replace(t, items=t.items[: args.limit]) for t in tasks]
    blocks = parse_int_list(args.blocks, "--blocks")
    texts = _load_texts(args.perplexity)
    with claimed_output(args, "bench") as claim:
        model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
        configs = block_configs(model, blocks) | interventions_configs(args, model)
        rows = _load_memorized(args, model)
        inputs = record_inputs(claim, args.model, _input_files(args), tasks=tasks_digest(tasks))
        kw = {"batch_size": args.batch_size, "progress": not args.no_progress}
        tables = {"accuracy.csv": evaluate(model, tasks, configs, **kw)}
        if texts is not None:
            tables["perplexity.csv"] = perplexity_table(model, texts, configs, **kw)
        if rows is not None:
            tables["sequences.parquet"] = sweep(model, rows, args.prefix_len, configs=configs, **kw)
            tables["memorization.csv"] = summarize(tables["sequences.parquet"])
        tables["joined.csv"] = joined_table(tables["accuracy.csv"], tables.get("memorization.csv"), tables.get("perplexity.csv"))
        _write(claim.folder, tables, _config(args, model, tasks, configs) | {"inputs": inputs})
    return 0


def tasks_digest(tasks) -> str:
    """sha256 of the items the tasks hold (what their accuracies are computed from)."""
    blob = json.dumps([[t.name, t.kind, [dataclasses.astuple(it) for it in t.items]] for t in tasks])
    return hashlib.sha256(blob.encode()).hexdigest()


def _input_files(args: argparse.Namespace) -> dict:
    """Every file the results are computed from, by role."""
    files = {"memorization": args.with_memorization, "interventions": args.interventions}
    for i, p in enumerate(_perplexity_paths(args.perplexity) if args.perplexity else []):
        files[f"perplexity:{i}"] = p
    return files


def _write(out: Path, tables: dict, config: dict) -> None:
    """Every table (CSV or parquet by suffix) and ``config.json``, each written atomically."""
    for name, df in tables.items():
        (results.write_parquet if name.endswith(".parquet") else results.write_csv)(df, out / name)
    results.write_json(config, out / "config.json")


def _load_memorized(args: argparse.Namespace, model):
    """Memorized rows (validated against the model), or None without ``--with-memorization``."""
    if args.with_memorization is None:
        return None
    rows = load_rows(args.with_memorization, tokenizer=model.tokenizer)
    validate_for_model(rows, args.prefix_len, model)
    return rows


def _load_texts(spec: str | None) -> list[str] | None:
    """Contents of the comma-separated text files of ``--perplexity`` (None when absent)."""
    if spec is None:
        return None
    paths = _perplexity_paths(spec)
    missing = [str(p) for p in paths if not p.is_file()]
    if not paths or missing:
        raise InputError(f"--perplexity must name existing text files; missing: {missing or spec!r}")
    try:
        texts = [p.read_text(encoding="utf-8") for p in paths]
    except UnicodeDecodeError as err:
        raise InputError(f"--perplexity files must be UTF-8 text ({err})") from None
    if not any(t.strip() for t in texts):
        raise InputError(f"--perplexity files {spec!r} hold no text")
    return texts


def _perplexity_paths(spec: str) -> list[Path]:
    paths = [Path(p.strip()) for p in spec.split(",") if p.strip()]
    check_unique([str(p.resolve()) for p in paths], "--perplexity")
    return paths


def _config(args: argparse.Namespace, model, tasks, configs) -> dict:
    config = {
        "command": "bench",
        "model": str(args.model),
        "model_name": model_name(model),
        "tasks": {t.name: {"kind": t.kind, "n_items": len(t.items)} for t in tasks},
        "configs": list(configs),
        "batch_size": args.batch_size,
        "limit": args.limit,
        "perplexity": args.perplexity,
    }
    if args.with_memorization is not None:
        data = Path(args.with_memorization)
        config |= {"memorization": str(data), "memorization_sha256": hashlib.sha256(data.read_bytes()).hexdigest(),
                   "prefix_len": args.prefix_len}  # fmt: skip
    return config
