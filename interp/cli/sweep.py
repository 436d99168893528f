"""``interp sweep``: baseline plus each block's attention bypassed, over a memorized set.

Writes ``sequences.parquet`` (one row per config x sequence), ``summary.csv`` (one row per
config: means then 95% bootstrap intervals) and ``config.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from interp import results
from interp.cli.common import add_model_arg, parse_int_list
from interp.data import load_rows, validate_for_model
from interp.memorization import block_configs, summarize, sweep
from interp.models import load_model, model_name


def register(sub) -> None:
    p = sub.add_parser("sweep", help="memorization with each block's attention bypassed", description=__doc__)
    add_model_arg(p)
    p.add_argument("--data", required=True, help="memorized rows: 2-D .npy of token ids, or .jsonl")
    p.add_argument("--prefix-len", type=int, required=True, help="tokens of each row given as the prompt")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--blocks", help="comma-separated blocks to bypass (default: every block)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    blocks = parse_int_list(args.blocks, "--blocks")
    rows = load_rows(args.data) if str(args.data).endswith(".npy") else None  # fail before loading a model
    model = load_model(args.model, device=args.device)
    rows = rows if rows is not None else load_rows(args.data, tokenizer=model.tokenizer)
    validate_for_model(rows, args.prefix_len, model)
    configs = block_configs(model, blocks)
    df = sweep(model, rows, args.prefix_len, configs=configs, batch_size=args.batch_size, progress=not args.no_progress)
    out = Path(args.out)
    config = {
        "command": "sweep",
        "model": str(args.model),
        "model_name": model_name(model),
        "data": str(args.data),
        "data_sha256": hashlib.sha256(Path(args.data).read_bytes()).hexdigest(),
        "prefix_len": args.prefix_len,
        "n_rows": int(rows.shape[0]),
        "row_len": int(rows.shape[1]),
        "configs": list(configs),
    }
    results.write_parquet(df, out / "sequences.parquet")
    results.write_csv(summarize(df), out / "summary.csv")
    results.write_json(config, out / "config.json")
    return 0
