"""``interp theory``: check the bypass bounds (docs/theory.md) on every token of every block.

Writes into ``--out``: ``bounds.csv`` (one row per layer x sequence x token: ``measured`` =
||o_i - õ_i|| of the attention sublayer, the bounds ``B1,B2,B3``, slack and tightness, the D1
error, the block-output and logits differences with their bounds), ``propagation.csv`` (one row
per bypassed layer x sequence x later block: E_k and rho_k), ``summary.csv`` (per layer:
violations and tightness) and ``config.json``. Without ``--data`` the rows are text shipped with
CPython, tokenized with the model's tokenizer (seeded random ids if it has none).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from interp import results, theory
from interp.cli.common import add_model_arg, claimed_output, parse_int_list, positive_int, record_inputs
from interp.data import load_rows
from interp.errors import InputError
from interp.models import load_model, model_name
from interp.outputs import check_path

log = logging.getLogger(__name__)


def register(sub) -> None:
    p = sub.add_parser("theory", help="check the bypass bounds (B1-B3, block, logits) numerically", description=__doc__)
    add_model_arg(p)
    p.add_argument("--data", help="token rows: 2-D .npy of ids (or .jsonl); default: shipped text")
    p.add_argument("--prefix-len", type=positive_int, help="use only the first N tokens of each row (default: whole rows)")
    p.add_argument("--n-rows", type=positive_int, default=8, help="rows taken when --data is not given (default: 8)")
    p.add_argument("--seq-len", type=positive_int, default=64,
                   help="row length when --data is not given (default: 64; at most the model's context)")
    p.add_argument("--layers", help="comma-separated blocks to bypass (default: every block)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    check_path(args.out)
    layers = parse_int_list(args.layers, "--layers")
    if args.data is not None and str(args.data).endswith(".npy"):
        load_rows(args.data)  # fail before loading a model
    with claimed_output(args, "theory") as claim:
        model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
        rows = _rows(args, model)
        if args.prefix_len is not None:
            if args.prefix_len > rows.shape[1]:
                raise InputError(f"--prefix-len {args.prefix_len} is longer than the rows ({rows.shape[1]} tokens)")
            rows = rows[:, : args.prefix_len]
        if rows.shape[1] < 2:  # the library allows it (delta_1 = 0 exactly); as a run it would report nothing
            raise InputError(f"rows of {rows.shape[1]} token measure nothing: the bypass changes no token's output before "
                             "the second; use rows of at least 2 tokens")  # fmt: skip
        inputs = record_inputs(claim, args.model, {"data": args.data})
        tables = theory.theory_tables(model, torch.as_tensor(rows), layers, batch_size=args.batch_size,
                                      progress=not args.no_progress)  # fmt: skip
        summary = theory.summarize(tables)
        _log_summary(summary)
        results.write_csv(tables.bounds, claim.folder / "bounds.csv")
        results.write_csv(tables.propagation, claim.folder / "propagation.csv")
        results.write_csv(summary, claim.folder / "summary.csv")
        results.write_json(_config(args, model, rows) | {"inputs": inputs}, claim.folder / "config.json")
    return 0


def _rows(args: argparse.Namespace, model) -> np.ndarray:
    if args.data is not None:
        return load_rows(args.data, tokenizer=model.tokenizer)
    n_ctx = int(model.cfg.n_ctx)
    if args.seq_len > n_ctx:
        raise InputError(f"--seq-len {args.seq_len} is longer than the model's context of {n_ctx} tokens")
    return default_rows(model, args.n_rows, args.seq_len)


def default_rows(model, n_rows: int, seq_len: int) -> np.ndarray:
    """``n_rows`` consecutive chunks of ``seq_len`` tokens of CPython's own source text."""
    from interp.tiny import stdlib_texts

    if model.tokenizer is not None:
        ids = model.tokenizer("\n".join(stdlib_texts()), add_special_tokens=False)["input_ids"]
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) >= n_rows * seq_len and int(ids.max()) < int(model.cfg.d_vocab):
            return ids[: n_rows * seq_len].reshape(n_rows, seq_len)
    log.warning("no usable tokenizer text; using seeded random token ids")
    return np.random.default_rng(0).integers(0, int(model.cfg.d_vocab), size=(n_rows, seq_len))


def _config(args: argparse.Namespace, model, rows: np.ndarray) -> dict:
    return {
        "command": "theory",
        "model": str(args.model),
        "model_name": model_name(model),
        "data": None if args.data is None else str(args.data),
        "data_sha256": None if args.data is None else hashlib.sha256(Path(args.data).read_bytes()).hexdigest(),
        "rows_sha256": hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest(),
        "prefix_len": args.prefix_len,
        "n_rows": int(rows.shape[0]),
        "row_len": int(rows.shape[1]),
        "layers": args.layers,
        "rtol": theory.RTOL,
    }


def _log_summary(summary) -> None:
    viol = summary.filter(like="viol_").to_numpy().sum()
    log.info("theory: %d violations over %d tokens x blocks", viol, int(summary["n_tokens"].sum()))
    for _, r in summary.iterrows():
        log.info("block %d: tightness of B1 median %.3g, max %.3g", r["layer"], r["tight_B1_median"], r["tight_B1_max"])
