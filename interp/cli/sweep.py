"""``interp sweep``: baseline plus each block's attention bypassed, over a memorized set.

Writes ``sequences.parquet`` (one row per config x sequence), ``summary.csv`` (one row per
config: means then 95% bootstrap intervals) and ``config.json`` into ``--out``. Finished
(config, chunk) parts are kept under ``--out/parts``, so rerunning a killed sweep with the same
arguments resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from interp import results
from interp.cli.common import add_model_arg, parse_int_list
from interp.data import load_rows, validate_for_model
from interp.errors import InputError
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
    p.add_argument("--chunk-rows", type=int, default=256, help="rows per saved part (resume granularity)")
    p.add_argument("--decode-rows", type=int, default=None,
                   help="at most this many rows in one joint decode (at least --batch-size); bounds the KV caches held "
                        "at once, at some cost in speed (default: as many as fit 2 GiB of keys and values)")
    p.add_argument("--shard", help="K/N: run only the K-th of N contiguous slices of the rows (0-based); join with 'interp merge'")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)
    m = sub.add_parser("merge", help="join the outputs of 'interp sweep --shard' runs", description=merge.__doc__)
    m.add_argument("shards", nargs="+", help="output folders of the shard runs")
    m.add_argument("--out", required=True, help="output folder for the merged sweep")
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
    bounds = np.linspace(0, n_rows, n + 1).round().astype(int)
    return int(bounds[k]), int(bounds[k + 1])


def run(args: argparse.Namespace) -> int:
    blocks = parse_int_list(args.blocks, "--blocks")
    if args.decode_rows is not None and args.decode_rows < args.batch_size:
        raise InputError(f"--decode-rows ({args.decode_rows}) must be at least --batch-size ({args.batch_size})")
    rows = load_rows(args.data) if str(args.data).endswith(".npy") else None  # fail before loading a model
    model = load_model(args.model, device=args.device)
    rows = rows if rows is not None else load_rows(args.data, tokenizer=model.tokenizer)
    validate_for_model(rows, args.prefix_len, model)
    shard = parse_shard(args.shard, len(rows))
    start, stop = shard or (0, len(rows))
    configs = block_configs(model, blocks)
    out = Path(args.out)
    config = {
        "command": "sweep",
        "model": str(args.model),
        "model_name": model_name(model),
        "data_sha256": hashlib.sha256(Path(args.data).read_bytes()).hexdigest(),
        "prefix_len": args.prefix_len,
        "n_rows": int(rows.shape[0]),
        "row_len": int(rows.shape[1]),
        "configs": list(configs),
        "chunk_rows": args.chunk_rows,
        "shard": args.shard,
        "rows": [start, stop],
    }
    parts = claim_output(out, config)
    df = sweep(model, rows[start:stop], args.prefix_len, configs=configs, batch_size=args.batch_size, checkpoint=parts,
               chunk_rows=args.chunk_rows, progress=not args.no_progress, decode_rows=args.decode_rows)  # fmt: skip
    df = df.assign(sequence=df.sequence + start)
    results.write_parquet(df, out / "sequences.parquet")
    results.write_csv(summarize(df), out / "summary.csv")
    return 0


def merge(args: argparse.Namespace) -> int:
    """Join the shard outputs of one sweep: per-sequence rows concatenated (each row once, in
    config then sequence order) and the summary recomputed over all rows."""
    configs = []
    for d in args.shards:
        path = Path(d) / "config.json"
        if not path.is_file() or not (Path(d) / "sequences.parquet").is_file():
            raise InputError(f"shard folder {d!r} holds no finished sweep (config.json and sequences.parquet)")
        configs.append(json.loads(path.read_text()))
    keys = {"model", "data_sha256", "prefix_len", "configs", "n_rows"}
    if any({k: c.get(k) for k in keys} != {k: configs[0].get(k) for k in keys} for c in configs):
        raise InputError("shard folders come from different sweeps (model, data, prefix length or configs differ)")
    df = pd.concat([pd.read_parquet(Path(d) / "sequences.parquet") for d in args.shards], ignore_index=True)
    if df.duplicated(["config", "sequence"]).any():
        raise InputError("shard folders overlap: some (config, sequence) rows appear twice")
    order = {name: i for i, name in enumerate(configs[0]["configs"])}
    df = df.sort_values(["config", "sequence"], key=lambda c: c.map(order) if c.name == "config" else c)
    df = df.reset_index(drop=True)
    covered = df.sequence.nunique()
    if covered != configs[0]["n_rows"]:
        raise InputError(f"the shards cover {covered} of {configs[0]['n_rows']} rows; run the missing shards first")
    out = Path(args.out)
    merged = {**configs[0], "shard": None, "rows": [0, covered], "merged_from": [str(d) for d in args.shards]}
    results.write_parquet(df, out / "sequences.parquet")
    results.write_csv(summarize(df), out / "summary.csv")
    results.write_json(merged, out / "config.json")
    return 0


def claim_output(out: Path, config: dict) -> Path:
    """Record ``config`` in ``out/config.json`` and return the parts folder for resuming. An
    ``out`` that holds another sweep's results is refused rather than mixed."""
    key = results.config_hash(config)
    existing = out / "config.json"
    if existing.exists():
        found = json.loads(existing.read_text()).get("config_hash")
        if found != key:
            raise InputError(f"output folder {str(out)!r} holds results of a different sweep (config {found}); choose another --out")
    results.write_json({**config, "config_hash": key}, existing)
    return out / "parts"
