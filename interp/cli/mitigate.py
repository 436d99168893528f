"""``interp mitigate``: the set of heads and blocks whose bypass removes the most memorization
within a budget on general ability (docs/mitigation.md).

The memorized rows and the general rows are split (seeded) into search and held-out halves; the
search reads only the search halves, and the chosen set is reported with its baselines on the
held-out halves. Writes into ``--out``: ``search.csv`` (every set the search scored),
``heldout.csv`` (the chosen set and the baselines on the held-out halves, with 95% bootstrap
intervals), ``mitigation.json`` (the chosen set as an interventions file: ``interp sweep`` and
``interp bench`` take it with ``--interventions``, ``interp.load_interventions`` in Python),
``pareto.png`` and ``config.json``.
"""

from __future__ import annotations

import argparse
import dataclasses

from interp import results
from interp.cli.common import add_model_arg, claimed_output, positive_int, record_inputs, seed_int
from interp.data import load_rows
from interp.errors import InputError
from interp.outputs import check_path


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number like 0.05; got {text!r}") from None
    if not (v >= 0 and v < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0; got {text!r}")
    return v


def register(sub) -> None:
    p = sub.add_parser("mitigate", help="search the heads and blocks whose bypass removes memorization within a budget",
                       description=__doc__)  # fmt: skip
    add_model_arg(p)
    p.add_argument("--data", required=True, help="memorized rows: 2-D .npy of token ids, or .jsonl")
    p.add_argument("--prefix-len", type=positive_int, required=True, help="tokens of each memorized row given as the prompt")
    p.add_argument("--general-data", required=True,
                   help="general text rows (.npy or .jsonl) outside the memorized set: the perplexity budget is read on them")  # fmt: skip
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--budget-ppl", type=_fraction, default=0.05,
                   help="largest relative increase of the general rows' perplexity (default 0.05: +5%%)")
    p.add_argument("--budget-acc", type=_fraction, help="largest drop in mean accuracy over --tasks (absolute, e.g. 0.02)")
    p.add_argument("--no-ppl-budget", action="store_true", help="bound only accuracy (with --budget-acc)")
    p.add_argument("--tasks", help="comma-separated task files or built-in names for --budget-acc (split into halves too)")
    p.add_argument("--task-limit", type=positive_int, help="use only the first N items of each task")
    p.add_argument("--how", choices=("bypass", "zero"), default="bypass", help="remove components by attention bypass or zero ablation")
    p.add_argument("--levels", default="head,block", help="components searched: head, block or both (default head,block)")
    p.add_argument("--objective", choices=("nll", "match_length"), default="nll",
                   help="continuous score the search maximizes on the search half: suffix NLL (default) or greedy match length lost")  # fmt: skip
    p.add_argument("--beam", type=positive_int, default=3)
    p.add_argument("--max-size", type=positive_int, default=8, help="at most this many components in the chosen set")
    p.add_argument("--random", type=int, default=5, help="random sets of the chosen set's composition reported as the null (default 5)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the halves and the random sets")
    p.add_argument("--name", help="name written into the interventions file (default: mitigation)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from interp import mitigate as M
    from interp.benchmarks import resolve_tasks
    from interp.models import load_model, model_name

    check_path(args.out)
    levels = [x.strip() for x in args.levels.split(",") if x.strip()]
    if not levels or set(levels) - {"head", "block"} or len(set(levels)) != len(levels):
        raise InputError(f"--levels must be head, block or head,block; got {args.levels!r}")
    if args.random < 0:
        raise InputError(f"--random must be 0 or more; got {args.random}")
    if args.budget_acc is not None and not args.tasks:
        raise InputError("--budget-acc needs --tasks to measure accuracy on")
    if args.tasks and args.budget_acc is None:
        raise InputError("--tasks is read only with --budget-acc; give both or neither")
    if args.no_ppl_budget and args.budget_acc is None:
        raise InputError("--no-ppl-budget leaves no budget: give --budget-acc with --tasks")
    if args.name is not None and not (args.name and all(ch.isalnum() or ch in "._-" for ch in args.name)):
        raise InputError(f"--name may hold letters, digits, '.', '_' and '-' only; got {args.name!r}")
    budget = M.Budget(ppl=None if args.no_ppl_budget else args.budget_ppl, acc=args.budget_acc)
    tasks = resolve_tasks(args.tasks) if args.tasks else []
    if args.task_limit is not None:
        tasks = [dataclasses.replace(t, items=t.items[: args.task_limit]) for t in tasks]
    with claimed_output(args, "mitigate") as claim:
        model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
        from interp.fingerprint import model_weights_sha256

        weights_sha256 = model_weights_sha256(model)  # before any work: the file cannot be written without it
        rows = load_rows(args.data, tokenizer=model.tokenizer)
        general = load_rows(args.general_data, tokenizer=model.tokenizer)
        from interp.cli.bench import tasks_digest

        inputs = record_inputs(claim, args.model, {"data": args.data, "general_data": args.general_data},
                               **({"tasks": tasks_digest(tasks)} if tasks else {}))  # fmt: skip
        progress = not args.no_progress
        result = M.search(model, rows, args.prefix_len, general, budget=budget, tasks=tasks, how=args.how, levels=levels,
                          objective=args.objective, beam=args.beam, max_size=args.max_size, n_random=args.random,
                          seed=args.seed, batch_size=args.batch_size, progress=progress)  # fmt: skip
        table = M.report(model, result, rows, args.prefix_len, general, tasks=tasks, batch_size=args.batch_size, progress=progress)
        results.write_csv(result.scores, claim.folder / "search.csv")
        results.write_csv(table, claim.folder / "heldout.csv")
        config = {"command": "mitigate", "model": str(args.model), "model_name": model_name(model), "inputs": inputs,
                  **result.settings, "n_rows": int(len(rows)), "n_general_rows": int(len(general)), "chosen": list(result.chosen)}  # fmt: skip
        M.export(claim.folder / "mitigation.json", model, result, table, name=args.name or "mitigation",
                 extra={"model_source": str(args.model), "inputs": inputs}, weights_sha256=weights_sha256)  # fmt: skip
        from interp.plots import mitigation_figure

        mitigation_figure(table, claim.folder / "pareto.png", title=f"{args.model}: {len(result.chosen)} components chosen",
                          budget=budget.ppl)
        results.write_json(config, claim.folder / "config.json")
    return 0
