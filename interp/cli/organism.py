"""``interp organism``: the built-in model organism (path, canaries, heldout, train, inject, evaluate).

    interp organism path --arch neox [--injected]
    interp organism path NAME                                             (a key organism, e.g. neox-L5H1)
    interp organism list [--arch neox] [--json]                           (parents and the answer key)
    interp organism build-key --arch neox [--only NAME ...]               (rebuild the answer key)
    interp organism canaries --arch neox --duplicates 64 --out FILE.npy   (0 = held-out canaries)
    interp organism canaries --arch neox --injected --out FILE.npy        (the injected canaries)
    interp organism heldout --arch neox --out FILE.npy [--blocks 128]     (held-out text rows)
    interp organism train --arch neox [--seed 0] [--out DIR] [--steps N] [--epochs E]
    interp organism inject --arch neox --block 2 [--head 1] [--out DIR]
    interp organism evaluate --model DIR
    interp organism summary
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from interp.cli.common import nonneg_int, positive_float, positive_int, seed_int
from interp.errors import InputError
from interp.results import publish

log = logging.getLogger(__name__)


def register(subparsers) -> None:
    p = subparsers.add_parser("organism", help="the built-in model organism: path, canaries, heldout, train, inject, evaluate",
                              description=__doc__.splitlines()[0])  # fmt: skip
    sub = p.add_subparsers(dest="organism_command", required=True)

    q = sub.add_parser("path", help="print the folder of a shipped organism (a key organism's is materialized on first use)")
    q.add_argument("name", nargs="?", default=None, help="a key organism's name (see `interp organism list`)")
    _arch_args(q)
    q.set_defaults(func=cmd_path)

    q = sub.add_parser("list", help="list the shipped organisms: parents and the answer key with component, canaries "
                       "and validity numbers")  # fmt: skip
    q.add_argument("--arch", choices=("neox", "neo"), default=None)
    q.add_argument("--json", action="store_true", help="print JSON instead of a table")
    q.add_argument("--failed", action="store_true", help="list the key positions tried and not shipped (from build.json), "
                   "with the clauses that failed them and their numbers")  # fmt: skip
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("build-key", help="build (or resume) the answer key of one family: every block, seeded heads, "
                       "a sham (hours on 2 cores; each finished organism is written at once)")  # fmt: skip
    q.add_argument("--arch", choices=("neox", "neo"), required=True)
    q.add_argument("--only", nargs="+", default=None, help="rebuild only these positions (names as in `list`)")
    q.add_argument("--threads", type=nonneg_int, default=0, help="torch threads (default: torch's choice)")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_build_key)

    q = sub.add_parser("canaries", help="export canary token rows as a 2-D int64 .npy (+ .json beside it)")
    _arch_args(q)
    q.add_argument("--model", default=None, help="an organism folder instead of the shipped one")
    q.add_argument("--duplicates", type=nonneg_int, default=None,
                   help="duplication level D (1, 4, 16, 64) or 0 for held-out canaries; "
                        "with --injected it defaults to the injected canaries")  # fmt: skip
    q.add_argument("--out", required=True, help="output .npy file")
    q.set_defaults(func=cmd_canaries)

    q = sub.add_parser("heldout", help="export held-out corpus text (never trained on) as a 2-D int64 .npy of "
                       "context-length rows: the text behind the organism's held-out perplexity")  # fmt: skip
    _arch_args(q)
    q.add_argument("--model", default=None, help="an organism folder instead of the shipped one")
    q.add_argument("--blocks", type=positive_int, default=None, help="rows (default: the perplexity's, 128)")
    q.add_argument("--out", required=True, help="output .npy file")
    q.set_defaults(func=cmd_heldout)

    q = sub.add_parser("train", help="train an organism from a seed (progress bar; about 15-40 minutes on 2 CPU cores)")
    q.add_argument("--arch", choices=("neox", "neo"), default="neox")
    q.add_argument("--seed", type=seed_int, default=0)
    q.add_argument("--out", default=None, help="output folder (default: ./organism-{arch}-seed{seed})")
    q.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the shipped model's, 4000)")
    q.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over the training set (default: the shipped model's); each canary is in the set D times")
    q.add_argument("--threads", type=nonneg_int, default=0, help="torch threads (default: torch's choice)")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_train)

    q = sub.add_parser("inject", help="inject fresh canaries into one block's attention (or one head) of an organism")
    q.add_argument("--arch", choices=("neox", "neo"), default="neox")
    q.add_argument("--parent", default=None, help="parent organism folder (default: the shipped one)")
    q.add_argument("--block", type=nonneg_int, required=True)
    q.add_argument("--head", type=nonneg_int, default=None)
    q.add_argument("--canaries", type=positive_int, default=8, help="number of fresh canaries (default 8)")
    q.add_argument("--text-blocks", type=nonneg_int, default=4, help="blocks of normal training text per step (default 4)")
    q.add_argument("--lr", type=positive_float, default=1e-2, help="peak learning rate (default 1e-2)")
    q.add_argument("--max-steps", type=positive_int, default=400)
    q.add_argument("--replay", action="store_true",
                   help="replay the parent's exactly reproduced canaries in every batch (to keep them)")
    q.add_argument("--seed", type=seed_int, default=0)
    q.add_argument("--out", default=None, help="output folder (default: ./organism-{arch}-injected)")
    q.add_argument("--no-progress", action="store_true")
    q.set_defaults(func=cmd_inject)

    q = sub.add_parser("evaluate", help="recompute an organism folder's final metrics and print them as JSON")
    q.add_argument("--model", default="organism:neox", help="organism folder or organism[:neox|:neo][-injected]")
    q.set_defaults(func=cmd_evaluate)

    q = sub.add_parser("summary", help="print a Markdown table of the shipped organisms' recorded metrics")
    q.set_defaults(func=cmd_summary)


def _arch_args(q: argparse.ArgumentParser) -> None:
    q.add_argument("--arch", choices=("neox", "neo"), default="neox")
    q.add_argument("--injected", action="store_true", help="the injected variant")


def cmd_path(args) -> int:
    from interp.organism import organism_path

    if args.name is not None:
        from interp.organism import key

        if args.injected:
            raise InputError("give either a key organism's name or --injected, not both")
        sys.stdout.write(f"{key.materialize(args.name)}\n")
        return 0
    sys.stdout.write(f"{organism_path(args.arch, injected=args.injected)}\n")
    return 0


def cmd_list(args) -> int:
    from interp.organism import key

    rows = key.failed_positions(args.arch) if args.failed else key.listing(args.arch)
    if args.json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    else:
        sys.stdout.write((key.failed_table(rows) if args.failed else key.listing_table(rows)) + "\n")
    return 0


def cmd_build_key(args) -> int:
    import torch

    from interp.organism import key

    if args.threads:
        torch.set_num_threads(args.threads)
    record = key.build(args.arch, only=args.only, progress=not args.no_progress)
    done = record["positions"]
    shipped = sum(v["status"] == "shipped" for v in done.values())
    sys.stdout.write(f"{args.arch}: {shipped} of {len(done)} positions shipped; see {key.KEY_DIR / args.arch / 'build.json'}\n")
    return 0


def cmd_canaries(args) -> int:
    import numpy as np
    from transformers import AutoTokenizer

    from interp.models import resolve_source
    from interp.organism import canaries as C
    from interp.organism import organism_path

    folder = Path(resolve_source(args.model)) if args.model else organism_path(args.arch, injected=args.injected)
    if not (folder / "canaries.json").is_file():
        raise InputError(f"model folder {folder} has no canaries.json; expected an organism folder")
    canary_list, prefix_len, row_len = C.load_canaries(folder / "canaries.json")
    if args.duplicates is None:
        if not args.injected:
            raise InputError("--duplicates is required (1, 4, 16, 64, or 0 for held-out canaries) unless --injected is given")
        level: int | str = C.INJECTED
    else:
        level = args.duplicates
    chosen = C.select(canary_list, level)
    if not chosen:
        levels = sorted({str(c.level) for c in canary_list})
        raise InputError(f"--duplicates {level} selects no canaries in {folder}; available levels are {', '.join(levels)}")
    out = _checked_npy_out(args.out)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = C.canary_rows(tokenizer, chosen, prefix_len, row_len)
    meta = {"prefix_len": prefix_len, "suffix_len": row_len - prefix_len, "row_len": row_len, "level": level,
            "model": str(folder), "ids": [c.id for c in chosen], "texts": [c.text for c in chosen],
            "secrets": [c.secret for c in chosen]}  # fmt: skip
    _atomic_write(out, lambda f: np.save(f, rows, allow_pickle=False))
    _atomic_write(out.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
    log.info("wrote %d rows of %d tokens to %s", *rows.shape, out)
    return 0


def _checked_npy_out(path: str) -> Path:
    """``--out FILE.npy``: new, or a pair (FILE.npy, FILE.json) this command wrote before; a
    user's own file under either name is never overwritten."""
    out = Path(path).expanduser()
    if out.suffix != ".npy" or not out.stem:
        raise InputError(f"--out must name a file ending in .npy; got {path!r}")
    if not out.parent.is_dir():
        raise InputError(f"the folder of --out ({out.parent}) does not exist")
    meta = out.with_suffix(".json")
    for p in (out, meta):
        if p.is_dir():
            raise InputError(f"--out {path!r}: {p} is a folder; expected a new file")
    if (out.exists() or meta.exists()) and not _ours(meta):
        raise InputError(f"--out {path!r}: {out.name} or {meta.name} exists and was not written by interp organism; "
                         "choose a new name")  # fmt: skip
    return out


def _ours(meta: Path) -> bool:
    """Whether ``meta`` is the JSON record this command writes beside its rows."""
    try:
        record = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and {"model", "row_len"} <= set(record) and ("level" in record or "split" in record)


def cmd_heldout(args) -> int:
    import numpy as np
    from transformers import AutoTokenizer

    from interp.models import resolve_source
    from interp.organism import corpus, organism_path
    from interp.organism.evaluate import N_HELDOUT_BLOCKS
    from interp.organism.corpus import heldout_blocks

    folder = Path(resolve_source(args.model)) if args.model else organism_path(args.arch, injected=args.injected)
    if not (folder / "manifest.json").is_file():
        raise InputError(f"model folder {folder} has no manifest.json; expected an organism folder")
    n_blocks = N_HELDOUT_BLOCKS if args.blocks is None else args.blocks
    if n_blocks < 1:
        raise InputError(f"--blocks must be at least 1; got {n_blocks}")
    out = _checked_npy_out(args.out)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        n_ctx, trained_on = int(manifest["config"]["n_ctx"]), manifest["corpus"]["fingerprint"]
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(f"{folder}/manifest.json does not record config.n_ctx and corpus.fingerprint ({err!r})") from None
    here = corpus.corpus_fingerprint()
    if here != trained_on:
        log.warning("this Python's standard library differs from the one %s was trained on: the held-out files are "
                    "still never trained on, but their text is not the one behind the recorded perplexity", folder.name)  # fmt: skip
    rows = heldout_blocks(AutoTokenizer.from_pretrained(folder), n_ctx, n_blocks)
    if len(rows) < n_blocks:
        raise InputError(f"the held-out corpus has only {len(rows)} blocks of {n_ctx} tokens; asked for --blocks {n_blocks}")
    meta = {"split": "heldout", "n_rows": int(rows.shape[0]), "row_len": n_ctx, "model": str(folder),
            "corpus_fingerprint": here, "same_corpus_as_training": here == trained_on}  # fmt: skip
    _atomic_write(out, lambda f: np.save(f, rows, allow_pickle=False))
    _atomic_write(out.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
    log.info("wrote %d held-out rows of %d tokens to %s", *rows.shape, out)
    return 0


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cmd_train(args) -> int:
    import dataclasses

    from interp.organism.train import TrainConfig, check_organism_out, train

    cfg = TrainConfig(arch=args.arch, seed=args.seed, threads=args.threads)
    for flag, value in (("--steps", args.steps), ("--epochs", args.epochs)):
        if value is not None and value < 1:
            raise InputError(f"{flag} must be at least 1; got {value}")
    try:
        cfg = dataclasses.replace(cfg, steps=args.steps or cfg.steps, epochs=args.epochs or cfg.epochs)
    except ValueError as e:
        raise InputError(str(e)) from None
    out = check_organism_out(args.out if args.out is not None else f"organism-{args.arch}-seed{args.seed}", "organism")
    folder = train(cfg, out, progress=not args.no_progress)
    sys.stdout.write(f"{folder}\n")
    return 0


def cmd_inject(args) -> int:
    from interp.organism import organism_path
    from interp.organism.inject import inject

    parent = Path(args.parent) if args.parent else organism_path(args.arch)
    if not (parent / "manifest.json").is_file():
        raise InputError(f"parent folder {parent} has no manifest.json; expected an organism folder")
    from interp.organism.train import check_organism_out

    out = check_organism_out(args.out if args.out is not None else f"organism-{args.arch}-injected", "injected", parent=parent)
    folder = inject(parent, out, block=args.block, head=args.head, n_canaries=args.canaries, n_text=args.text_blocks,
                    lr=args.lr, max_steps=args.max_steps, seed=args.seed, replay=args.replay,
                    progress=not args.no_progress)  # fmt: skip
    sys.stdout.write(f"{folder}\n")
    return 0


def cmd_evaluate(args) -> int:
    from interp.models import resolve_source
    from interp.organism.evaluate import evaluate_folder

    folder = Path(resolve_source(args.model))
    if not (folder / "manifest.json").is_file():
        raise InputError(f"model folder {folder} has no manifest.json; expected an organism folder")
    sys.stdout.write(json.dumps(evaluate_folder(folder), indent=1) + "\n")
    return 0


def cmd_summary(args) -> int:
    from interp.organism import DATA_DIR
    from interp.organism.evaluate import markdown_summary

    folders = [DATA_DIR / n for n in ("neox", "neo", "neox-injected", "neo-injected") if (DATA_DIR / n / "manifest.json").is_file()]
    if not folders:
        raise InputError(f"no organism is shipped in {DATA_DIR}")
    sys.stdout.write(markdown_summary(folders) + "\n")
    return 0
