"""``interp localize``: rank blocks or heads by their responsibility for memorizing a set of rows.

Methods: ``block-bypass`` (the paper's per-block attention bypass; ranked by the drop in exact
match, or with ``--score selectivity`` by the fraction of memorization removed minus the fraction
of general ability lost on ``--general-data``, see docs/selectivity.md), ``head-bypass`` (the
same per head), ``patching`` (exact per-head activation patching of
``z``; ranked by the normalized effect on the suffix log-probability, by default noising, i.e.
necessity) and ``attribution`` (attribution patching, its first-order estimate, by default
denoising; direct logit attribution and the correlation of both with exact per-head patching
are saved beside it). Attribution ranks by denoising because noising linearizes at the clean
run, where a memorized suffix is predicted with probability near 1 and the gradient of its
log-probability says little about a large corruption: on our tiny models with planted or
fine-tuned ground truth, noising estimates correlated with exact noising from -0.85 to 0.96,
denoising estimates with exact denoising from 0.80 to 0.999.

Writes ``ranking.csv`` (``method,component,score,rank``; rank 1 = most responsible), the raw
results of the method (``sequences.parquet``, ``heads.parquet``, ``patching.parquet`` or
``attribution.parquet`` + ``correlation.csv``; with ``--score selectivity`` also
``selectivity.csv``, the per-row held-out NLLs ``general_nll.parquet`` and
``selectivity_bootstrap.csv``, the ranking's stability over 1000 resamples of both row sets),
``config.json``, and, when the true component is
known (``--truth``, or ``injected_component`` in the model folder's ``manifest.json``),
``recall.csv`` with Recall@k (``recall``, with the method's tie-break) and the expected
Recall@k had the score's ties been broken at random (``recall_ties_random``). With ``--knockout K[,K...]`` it also knocks out the top-K
components together and writes ``knockout.csv``: the drop in exact match / token accuracy on the
rows of ``--data`` (``target``) and of ``--other-data`` (``other``), the rise of the mean
token NLL on ``--general-data`` and the fall of the mean accuracy on ``--general-tasks``
(``general``). Nothing is written when an input is unusable.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import pandas as pd

from interp import attribution, localize, patching, results, sites
from interp.cli.bench import tasks_digest
from interp.cli.common import add_model_arg, claimed_output, parse_int_list, positive_int, record_inputs, seed_int
from interp.benchmarks import resolve_tasks
from interp.data import load_rows, validate_for_model
from interp.errors import InputError
from interp.memorization import evaluate, sweep
from interp.models import load_model, model_name, resolve_source
from interp.outputs import check_path

METHODS = ("block-bypass", "head-bypass", "patching", "attribution")
BYPASS_METHODS = ("block-bypass", "head-bypass")
SCORES = ("necessity", "selectivity")
N_BOOT = 1000  # bootstrap resamples of the selectivity ranking


def register(sub) -> None:
    p = sub.add_parser("localize", help="rank blocks or heads by responsibility for memorization", description=__doc__)
    add_model_arg(p)
    p.add_argument("--data", required=True, help="memorized rows: 2-D .npy of token ids, or .jsonl")
    p.add_argument("--prefix-len", type=positive_int, required=True, help="tokens of each row given as the prompt")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--score", choices=SCORES, default="necessity",
                   help="bypass methods: rank by the exact-match drop (necessity, default) or by memorization lost "
                   "minus general ability lost on --general-data (selectivity)")  # fmt: skip
    p.add_argument("--n-corrupt", type=positive_int, help="prefix tokens replaced in the corrupted run (default: a quarter)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the corruption and of the selectivity bootstrap (default 0)")
    p.add_argument("--direction", choices=patching.DIRECTIONS,
                   help="direction used for the ranking (default: noising for patching, denoising for attribution)")  # fmt: skip
    p.add_argument("--truth", help="true component ('block:L' or 'L{l}H{h}') for Recall@k (default: from manifest.json)")
    p.add_argument("--knockout", help="comma-separated K: knock out the top-K components together (e.g. 1,3)")
    p.add_argument("--knockout-how", choices=("bypass", "zero"), default="bypass", help="attention bypass or zero ablation")
    p.add_argument("--other-data", help="other memorized rows (.npy) for the knockout's specificity check")
    p.add_argument("--general-data", help="held-out rows (.npy) whose mean token NLL is the knockout's general score and "
                   "the general ability of --score selectivity")
    p.add_argument("--general-tasks", help="benchmark tasks (built-in names or JSONL, comma-separated) whose mean "
                   "accuracy is a knockout general score")  # fmt: skip
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


DEFAULT_DIRECTION = {"patching": "noising", "attribution": "denoising"}


def _check_args(args: argparse.Namespace) -> None:
    args.direction = args.direction or DEFAULT_DIRECTION.get(args.method)
    if args.n_corrupt is not None and not 1 <= args.n_corrupt <= args.prefix_len:
        raise InputError(f"--n-corrupt must be within 1..--prefix-len ({args.prefix_len}); got {args.n_corrupt}")
    check_path(args.out)
    if args.score == "selectivity" and args.method not in BYPASS_METHODS:
        raise InputError(f"--score selectivity applies to {' and '.join(BYPASS_METHODS)}; got --method {args.method}")
    if args.score == "selectivity" and not args.general_data:
        raise InputError("--score selectivity needs --general-data (held-out rows whose mean token NLL measures general ability)")
    if args.truth is not None:
        try:
            sites.parse_component(args.truth)
        except ValueError as err:
            raise InputError(f"--truth {err}") from None


def _truth(args: argparse.Namespace) -> str | None:
    if args.truth is not None:
        return args.truth
    folder = Path(resolve_source(args.model))
    return localize.injected_component(folder) if folder.is_dir() else None


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    ks = parse_int_list(args.knockout, "--knockout")
    rows = load_rows(args.data) if str(args.data).endswith(".npy") else None  # fail before loading a model
    extra = {k: load_rows(getattr(args, k)) for k in ("other_data", "general_data") if getattr(args, k)}
    tasks = resolve_tasks(args.general_tasks) if args.general_tasks else []
    with claimed_output(args, "localize") as claim:
        return _run(args, claim, rows, extra, tasks, ks)


def _run(args: argparse.Namespace, claim, rows, extra: dict, tasks: list, ks: list[int] | None) -> int:
    model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
    rows = rows if rows is not None else load_rows(args.data, tokenizer=model.tokenizer)
    validate_for_model(rows, args.prefix_len, model)
    for key, extra_rows in extra.items():
        try:  # held-out rows need no prefix: only at least two tokens per row
            validate_for_model(extra_rows, args.prefix_len if key == "other_data" else 1, model)
        except InputError as err:
            raise InputError(f"--{key.replace('_', '-')} {getattr(args, key)}: {err}") from None
    _check_knockout(ks, args.method, model)
    truth = _truth(args)
    if truth is not None:
        _check_truth_fits(truth, model)
    files = {"data": args.data, "other_data": args.other_data, "general_data": args.general_data}
    inputs = record_inputs(claim, args.model, files, general_tasks=tasks_digest(tasks))
    ranking, tables = compute(model, rows, args, general_rows=extra.get("general_data"))
    if ks:
        general = [localize.nll_score(extra["general_data"], batch_size=args.batch_size)] if "general_data" in extra else []
        general += [localize.benchmark_score(tasks, batch_size=args.batch_size)] if tasks else []
        tables["knockout.csv"] = localize.knockout_curve(
            model, ranking, ks, args.prefix_len, target_rows=rows, other_rows=extra.get("other_data"),
            general=general, how=args.knockout_how, batch_size=args.batch_size,
        )  # fmt: skip
    out = claim.folder
    for name, df in tables.items():
        (results.write_csv if name.endswith(".csv") else results.write_parquet)(df, out / name)
    if truth is not None:
        results.write_csv(localize.recall_table(ranking, truth), out / "recall.csv")
    results.write_csv(ranking, out / "ranking.csv")
    results.write_json(_config(args, model, rows, truth) | {"inputs": inputs}, out / "config.json")
    return 0


def _check_knockout(ks: list[int] | None, method: str, model) -> None:
    if not ks:
        return
    n = int(model.cfg.n_layers) * (1 if method == "block-bypass" else int(model.cfg.n_heads))
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise InputError(f"--knockout values must be within 1..{n} (the number of ranked components); got {bad}")


def _check_truth_fits(truth: str, model) -> None:
    layer, head = sites.parse_component(truth)
    if layer >= int(model.cfg.n_layers) or (head is not None and head >= int(model.cfg.n_heads)):
        raise InputError(f"true component {truth!r} is not in this model ({model.cfg.n_layers} blocks, {model.cfg.n_heads} heads)")


def compute(model, rows, args: argparse.Namespace, general_rows=None) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """The ranking and the raw tables of ``args.method`` (``general_rows``: for ``--score selectivity``)."""
    P, bs, show = args.prefix_len, args.batch_size, not args.no_progress
    if args.method in BYPASS_METHODS:
        if args.score == "selectivity":  # refuse undefined fractions before any sweep
            base = evaluate(model, rows, P, batch_size=bs)
            general_base = localize.token_nll_per_row(model, general_rows, batch_size=bs)
            localize.check_selectivity_baseline(float(base["exact_match"].mean()), float(general_base.mean()),
                                                int(model.cfg.d_vocab))  # fmt: skip
        if args.method == "block-bypass":
            df = sweep(model, rows, P, batch_size=bs, progress=show)
            configs, base, tables = df[df.config != "baseline"], df[df.config == "baseline"], {"sequences.parquet": df}
        else:
            base = base if args.score == "selectivity" else evaluate(model, rows, P, batch_size=bs)
            configs = localize.head_bypass_sweep(model, rows, P, batch_size=bs, progress=show)
            tables = {"heads.parquet": pd.concat([base.assign(config="baseline"), configs], ignore_index=True)}
        if args.score == "necessity":
            return localize.rank_by_bypass(configs, base, args.method), tables
        components = list(dict.fromkeys(configs["config"]))
        general = localize.general_nll_by_component(model, general_rows, components, batch_size=bs, progress=show,
                                                    baseline=general_base)  # fmt: skip
        n_logits = int(model.cfg.d_vocab)
        table = localize.selectivity(configs, base, general, n_logits=n_logits)
        tables["selectivity.csv"] = table.assign(baseline_exact_match=float(base["exact_match"].mean()),
                                                 baseline_mean_token_nll=float(general_base.mean()))  # fmt: skip
        tables["general_nll.parquet"] = general
        boot = localize.selectivity_bootstrap(configs, base, general, n_logits, n_boot=N_BOOT, seed=args.seed)
        tables["selectivity_bootstrap.csv"] = boot
        return localize.rank_by_selectivity(table, f"{args.method}:selectivity"), tables
    runs = patching.prepare_runs(model, rows, P, n_corrupt=args.n_corrupt, seed=args.seed, batch_size=bs)
    if args.method == "patching":
        df = patching.patch(model, rows, P, runs=runs, batch_size=bs * 4, progress=show)
        sel = df[(df.site == "head") & (df.direction == args.direction) & (df.metric == "suffix_logprob")]
        return localize.rank_by_effect(sel, args.method), {"patching.parquet": df}
    atp = attribution.attribution_patching(model, runs, batch_size=bs)
    dla = attribution.direct_logit_attribution(model, rows, P, batch_size=bs)
    exact = patching.patch(model, rows, P, runs=runs, sites_=["head"], batch_size=bs * 4, progress=show)
    corr = attribution.compare_to_patching(exact, {"attribution_patching": atp, "dla": dla})
    ranking = localize.rank_by_effect(atp[atp.direction == args.direction], args.method)
    both = pd.concat([atp, dla.rename(columns={"dla": "estimate"})], ignore_index=True)
    return ranking, {"attribution.parquet": both, "head_patching.parquet": exact, "correlation.csv": corr}


def _config(args: argparse.Namespace, model, rows, truth: str | None) -> dict:
    return {
        "command": "localize",
        "method": args.method,
        "score": args.score if args.method in BYPASS_METHODS else None,
        "bootstrap_resamples": N_BOOT if args.score == "selectivity" else None,
        "model": str(args.model),
        "model_name": model_name(model),
        "data": str(args.data),
        "data_sha256": hashlib.sha256(Path(args.data).read_bytes()).hexdigest(),
        "prefix_len": args.prefix_len,
        "n_rows": int(rows.shape[0]),
        "row_len": int(rows.shape[1]),
        "n_corrupt": args.n_corrupt or patching.default_n_corrupt(args.prefix_len),
        "seed": args.seed,
        "direction": args.direction,
        "truth": truth,
        "knockout": args.knockout,
        "knockout_how": args.knockout_how,
        "other_data": args.other_data,
        "general_data": args.general_data,
        "general_data_sha256": hashlib.sha256(Path(args.general_data).read_bytes()).hexdigest() if args.general_data else None,
        "general_tasks": args.general_tasks,
    }
