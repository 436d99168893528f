"""``interp sweep``: baseline plus each block's attention bypassed, over a memorized set.

Writes ``sequences.parquet`` (one row per config x sequence), ``summary.csv`` (one row per
config: means then 95% bootstrap intervals) and ``config.json`` into ``--out``. Finished
(config, chunk) parts are kept under ``--out/parts``, so rerunning a killed sweep with the same
arguments resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from interp import results
from interp.cli.common import (add_interventions_arg, add_model_arg, check_interventions_file, check_unique, claimed_output,
                               interventions_configs, parse_int_list, positive_int, record_inputs)
from interp.data import load_rows, validate_for_model
from interp.errors import InputError
from interp.memorization import METRICS, block_configs, summarize, sweep
from interp.models import load_model, model_name
from interp.outputs import check_path


def register(sub) -> None:
    p = sub.add_parser("sweep", help="memorization with each block's attention bypassed", description=__doc__)
    add_model_arg(p)
    p.add_argument("--data", required=True, help="memorized rows: 2-D .npy of token ids, or .jsonl")
    p.add_argument("--prefix-len", type=positive_int, required=True, help="tokens of each row given as the prompt")
    p.add_argument("--out", required=True, help="output folder (new, empty, or this sweep's own: reruns resume)")
    p.add_argument("--blocks", help="comma-separated blocks to bypass (default: every block)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--chunk-rows", type=positive_int, default=256, help="rows per saved part (resume granularity)")
    p.add_argument("--decode-rows", type=positive_int, default=None,
                   help="at most this many rows in one joint decode (at least --batch-size); bounds the KV caches held "
                        "at once, at some cost in speed (default: as many as fit 2 GiB of keys and values)")
    p.add_argument("--shard", help="K/N: run only the K-th of N contiguous slices of the rows (0-based); join with 'interp merge'")
    add_interventions_arg(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)
    m = sub.add_parser("merge", help="join the outputs of 'interp sweep --shard' runs", description=merge.__doc__)
    m.add_argument("shards", nargs="+", help="output folders of the shard runs")
    m.add_argument("--out", required=True, help="output folder for the merged sweep (new or empty)")
    m.set_defaults(func=merge)


def parse_shard(text: str | None, n_rows: int) -> tuple[int, int] | None:
    """``"K/N"`` -> the (start, stop) rows of the K-th of N contiguous, near-equal slices."""
    if text is None:
        return None
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like K/N (e.g. 0/4); got {text!r}") from None
    if not 0 <= k < n:
        raise InputError(f"--shard {text}: K must be in 0..N-1")
    if n > n_rows:
        raise InputError(f"--shard {text}: {n} slices of {n_rows} rows would leave some empty; use N at most {n_rows}")
    bounds = np.linspace(0, n_rows, n + 1).round().astype(int)
    return int(bounds[k]), int(bounds[k + 1])


def run(args: argparse.Namespace) -> int:
    check_path(args.out)
    check_interventions_file(args)
    blocks = parse_int_list(args.blocks, "--blocks")
    if args.decode_rows is not None and args.decode_rows < args.batch_size:
        raise InputError(f"--decode-rows ({args.decode_rows}) must be at least --batch-size ({args.batch_size})")
    rows = load_rows(args.data) if str(args.data).endswith(".npy") else None  # fail before loading a model
    if rows is not None:
        parse_shard(args.shard, len(rows))
    with claimed_output(args, "sweep") as claim:
        model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
        rows = rows if rows is not None else load_rows(args.data, tokenizer=model.tokenizer)
        validate_for_model(rows, args.prefix_len, model)
        start, stop = parse_shard(args.shard, len(rows)) or (0, len(rows))
        configs = block_configs(model, blocks) | interventions_configs(args, model)
        inputs = record_inputs(claim, args.model, {"data": args.data, "interventions": args.interventions})
        config = {
            "command": "sweep",
            "model": str(args.model),
            "model_name": model_name(model),
            "inputs": inputs,
            "data_sha256": inputs["data"],
            "prefix_len": args.prefix_len,
            "n_rows": int(rows.shape[0]),
            "row_len": int(rows.shape[1]),
            "configs": list(configs),
            "chunk_rows": args.chunk_rows,
            "shard": args.shard,
            "rows": [start, stop],
        }
        df = sweep(model, rows[start:stop], args.prefix_len, configs=configs, batch_size=args.batch_size,
                   checkpoint=claim.folder / "parts", chunk_rows=args.chunk_rows, progress=not args.no_progress,
                   decode_rows=args.decode_rows)  # fmt: skip
        df = df.assign(sequence=df.sequence + start)
        results.write_parquet(df, claim.folder / "sequences.parquet")
        results.write_csv(summarize(df), claim.folder / "summary.csv")
        results.write_json(config, claim.folder / "config.json")
    return 0


def _read_shard(folder: str) -> tuple[dict, pd.DataFrame]:
    """A finished shard's config and per-sequence table, or ``InputError`` saying what is wrong."""
    path = Path(folder)
    if not (path / "config.json").is_file() or not (path / "sequences.parquet").is_file():
        raise InputError(f"shard folder {folder!r} holds no finished sweep (config.json and sequences.parquet)")
    try:
        config = json.loads((path / "config.json").read_text())
        df = pd.read_parquet(path / "sequences.parquet")
    except Exception as err:  # noqa: BLE001 (JSON, Arrow and OS errors alike mean an unusable shard)
        raise InputError(f"shard folder {folder!r} holds an unreadable result ({type(err).__name__}); rerun that shard") from None
    if not isinstance(config, dict) or config.get("command") != "sweep":
        raise InputError(f"shard folder {folder!r} does not hold an 'interp sweep' result")
    missing = {"config", "sequence", *METRICS} - set(df.columns)
    if missing:
        raise InputError(f"shard folder {folder!r}: sequences.parquet lacks columns {sorted(missing)}")
    return config, df


def merge(args: argparse.Namespace) -> int:
    """Join the shard outputs of one sweep: per-sequence rows concatenated (each row once, in
    config then sequence order) and the summary recomputed over all rows."""
    check_path(args.out)
    check_unique([str(Path(d).resolve()) for d in args.shards], "the shard list")
    read = [_read_shard(d) for d in args.shards]
    configs, frames = [c for c, _ in read], [df for _, df in read]
    keys = {"model", "data_sha256", "prefix_len", "configs", "n_rows", "inputs"}
    if any({k: c.get(k) for k in keys} != {k: configs[0].get(k) for k in keys} for c in configs):
        raise InputError("shard folders come from different sweeps (model, weights, data, prefix length or configs differ)")
    df = pd.concat(frames, ignore_index=True)
    if df.duplicated(["config", "sequence"]).any():
        raise InputError("shard folders overlap: some (config, sequence) rows appear twice")
    order = {name: i for i, name in enumerate(configs[0]["configs"])}
    df = df.sort_values(["config", "sequence"], key=lambda c: c.map(order) if c.name == "config" else c)
    df = df.reset_index(drop=True)
    covered = df.sequence.nunique()
    if covered != configs[0]["n_rows"]:
        raise InputError(f"the shards cover {covered} of {configs[0]['n_rows']} rows; run the missing shards first")
    merged = {**configs[0], "command": "merge", "shard": None, "rows": [0, covered], "merged_from": [str(d) for d in args.shards]}
    with claimed_output(args, "merge") as claim:
        claim.set_inputs({"shards": [c.get("inputs") for c in configs]})
        results.write_parquet(df, claim.folder / "sequences.parquet")
        results.write_csv(summarize(df), claim.folder / "summary.csv")
        results.write_json(merged, claim.folder / "config.json")
    return 0
