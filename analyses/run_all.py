"""The main job: the whole pipeline on the shipped model organisms, from results to figures.

For each organism (GPT-NeoX and GPT-Neo): the memorization sweep with every block bypassed
joined with benchmark accuracy (the paper's figure set), the theorem check, and, on the
injected variants whose answer key is known, localization by block bypass, head bypass,
patching and attribution; and the mitigation search (the heads and blocks whose bypass removes
the most memorization within +5% held-out perplexity, docs/mitigation.md). Results go to ``results/`` (each step reused when its folder is
complete, so a rerun after a crash continues), figures (PNG and PDF) to ``figures/``, and a
short summary table is printed at the end.

    python analyses/run_all.py            # what `make figures` runs
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analyses"))
log = logging.getLogger("run_all")
ARCHS = ("neox", "neo")
LOCALIZE_METHODS = ("block-bypass", "head-bypass", "patching", "attribution")
SELECTIVITY_METHODS = ("block-bypass", "head-bypass")  # also ranked by --score selectivity (docs/selectivity.md)
KNOCKOUT_TASKS = "rule_count,typo"


def cli(args: list[str]) -> None:
    from interp.cli import main

    log.info("interp %s", " ".join(args))
    if main(args) != 0:
        raise SystemExit(f"step failed: interp {' '.join(args)}")


def weights_tag(arch: str, injected: bool = False) -> str:
    """sha256 of the organism's weights and of the package's code: a step's folder is reused only
    for the same weights made by the same code."""
    from paper_figures import code_sha256, weights_sha256

    return f"{weights_sha256(f'organism:{arch}' + ('-injected' if injected else ''))} code:{code_sha256()}"


def done(folder: Path, marker: str, weights: str) -> bool:
    """The step's output is complete and was made from these inputs (the tag: weights and code sha256,
    plus the knockout tasks' sha256 for localization)."""
    stamp_file = folder / "weights.sha256"
    return (folder / marker).exists() and stamp_file.exists() and stamp_file.read_text().strip() == weights


def stamp(folder: Path, weights: str) -> None:
    (folder / "weights.sha256").write_text(weights + "\n")


def theory_step(arch: str, data: Path, prefix_len: int, results: Path, progress: list[str]) -> Path:
    out = results / "theory" / arch
    if not done(out, "summary.csv", weights_tag(arch)):
        cli(["theory", "--model", f"organism:{arch}", "--data", str(data), "--prefix-len", str(prefix_len),
             "--out", str(out), *progress])  # fmt: skip
        stamp(out, weights_tag(arch))
    return out


def localize_step(arch: str, results: Path, progress: list[str]) -> list[Path]:
    from interp.organism import organism_path

    try:
        organism_path(arch, injected=True)
    except Exception as err:  # the injected variant is optional
        log.warning("skipping localization on %s: %s", arch, err)
        return []
    data = results / "localize" / arch / "injected-canaries.npy"
    other = results / "localize" / arch / "memorized-canaries.npy"  # the parent's D=64 canaries
    heldout = results / "localize" / arch / "heldout.npy"  # the text behind the held-out perplexity
    if not heldout.exists() or not done(data.parent, data.name, weights_tag(arch, injected=True)):
        data.parent.mkdir(parents=True, exist_ok=True)
        cli(["organism", "canaries", "--arch", arch, "--injected", "--out", str(data)])
        cli(["organism", "canaries", "--arch", arch, "--injected", "--duplicates", "64", "--out", str(other)])
        cli(["organism", "heldout", "--arch", arch, "--injected", "--out", str(heldout)])
        stamp(data.parent, weights_tag(arch, injected=True))
    prefix_len = json.loads(data.with_suffix(".json").read_text())["prefix_len"]
    from paper_figures import tasks_sha256

    tag = f"{weights_tag(arch, injected=True)} tasks:{tasks_sha256(KNOCKOUT_TASKS)}"  # the knockout reads the tasks
    folders = []
    runs = [(m, m, []) for m in LOCALIZE_METHODS]
    runs += [(m, f"{m}-selectivity", ["--score", "selectivity", "--general-data", str(heldout)]) for m in SELECTIVITY_METHODS]
    for method, name, extra in runs:
        out = results / "localize" / arch / name
        if not done(out, "ranking.csv", tag):
            # knocking out the top component: its effect on the injected canaries (target), on the
            # other memorized canaries (other) and on two built-in tasks (general; the selectivity
            # runs add the held-out NLL, which their ranking was selected on)
            knockout = ["--knockout", "1", "--other-data", str(other), "--general-tasks", KNOCKOUT_TASKS]
            cli(["localize", "--model", f"organism:{arch}-injected", "--data", str(data), "--prefix-len",
                 str(prefix_len), "--method", method, "--out", str(out), *knockout, *extra, *progress])  # fmt: skip
            stamp(out, tag)
        folders.append(out)
    return folders


def mitigation_step(arch: str, results: Path, figures: Path, progress: list[str]) -> Path:
    """The mitigation search on the parent organism (D=64 canaries, held-out text, +5% perplexity
    budget); its interventions file and figure are copied to figures/mitigation/."""
    import shutil

    out = results / "mitigation" / arch
    data, heldout = results / "mitigation" / f"{arch}-d64.npy", results / "mitigation" / f"{arch}-heldout.npy"
    if not done(out, "heldout.csv", weights_tag(arch)):
        data.parent.mkdir(parents=True, exist_ok=True)
        cli(["organism", "canaries", "--arch", arch, "--duplicates", "64", "--out", str(data)])
        cli(["organism", "heldout", "--arch", arch, "--out", str(heldout)])
        prefix_len = json.loads(data.with_suffix(".json").read_text())["prefix_len"]
        if out.exists():  # a stale or unfinished run: the search writes its folder in one go
            shutil.rmtree(out)
        cli(["mitigate", "--model", f"organism:{arch}", "--data", str(data), "--prefix-len", str(prefix_len),
             "--general-data", str(heldout), "--budget-ppl", "0.05", "--name", f"mitigation-{arch}", "--out", str(out),
             *progress])  # fmt: skip
        stamp(out, weights_tag(arch))
    (figures / "mitigation").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "mitigation.json", figures / "mitigation" / f"{arch}-mitigation.json")
    shutil.copyfile(out / "pareto.png", figures / "mitigation" / f"{arch}-pareto.png")
    shutil.copyfile(out / "heldout.csv", figures / "mitigation" / f"{arch}-heldout.csv")
    return out


def summary_table(paper_tables: dict[str, pd.DataFrame], theory: dict[str, Path], localize: dict[str, list[Path]]) -> pd.DataFrame:
    rows = []
    for model, joined in paper_tables.items():
        arch = model.split(":", 1)[1]
        base = joined[joined.config == "baseline"].iloc[0]
        blocks = joined[joined.config != "baseline"]
        low_ta = blocks.loc[blocks.token_accuracy.idxmin()]
        low_acc = blocks.loc[blocks.acc_mean.idxmin()]
        theory_summary = pd.read_csv(theory[arch] / "summary.csv") if arch in theory else None
        recall = {}
        for folder in localize.get(arch, []):
            if (folder / "recall.csv").exists():
                r = pd.read_csv(folder / "recall.csv")
                first = r.loc[r.k == r.k.min()].iloc[0]  # with the expected recall if ties were broken at random
                recall[f"Recall@1 {folder.name}"] = f"{first.recall:g} ({first.recall_ties_random:.2g})"
        rows.append({
            "model": model,
            "EM": round(float(base.exact_match), 3),
            "TA": round(float(base.token_accuracy), 3),
            "TA min (block)": f"{low_ta.token_accuracy:.3f} ({low_ta.config})",
            "CE": round(float(base.completion_entropy), 1),
            "acc": round(float(base.acc_mean), 3),
            "acc min (block)": f"{low_acc.acc_mean:.3f} ({low_acc.config})",
            "bound violations": None if theory_summary is None else int(theory_summary.filter(like="viol").sum().sum()),
            **recall,
        })  # fmt: skip
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(ROOT / "results"))
    p.add_argument("--figures", default=str(ROOT / "figures"))
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--limit", type=int, default=0,
                   help="items per benchmark task (default 0: all 250 of each built-in task; a smaller N for a quicker look)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    start = time.monotonic()
    results, figures = Path(args.results), Path(args.figures)
    archs = args.archs.split(",")
    args.limit = args.limit or None
    progress = ["--no-progress"] if args.no_progress else []

    import paper_figures

    paper_tables, theory, localize, mitigation = {}, {}, {}, {}
    for arch in archs:
        data, prefix_len = paper_figures.organism_canary_set(arch, results / "paper" / "data")
        folder = paper_figures.run_bench(f"organism:{arch}", data, prefix_len, None, results / "paper",
                                         not args.no_progress, limit=args.limit)  # fmt: skip
        paper_tables[f"organism:{arch}"] = pd.read_csv(folder / "joined.csv")
        theory[arch] = theory_step(arch, data, prefix_len, results, progress)
        localize[arch] = localize_step(arch, results, progress)
        mitigation[arch] = mitigation_step(arch, results, figures, progress)

    paper_figures.draw({m: paper_figures_mean(t) for m, t in paper_tables.items()}, figures / "paper", None)
    import theory_figures

    theory_figures.main([*(str(theory[a]) for a in archs), "--out", str(figures / "theory")])
    loc_folders = [str(f) for a in archs for f in localize[a]]
    if loc_folders:
        import localization_figures

        localization_figures.main([*loc_folders, "--out", str(figures / "localization" / "organism")])

    table = summary_table({m: paper_figures_mean(t) for m, t in paper_tables.items()}, theory, localize)
    print(table.to_string(index=False))
    print("\nmitigation search (+5% perplexity budget; held-out halves):")
    print(mitigation_table(mitigation).to_string(index=False))
    print(f"\nfinished in {time.monotonic() - start:.0f} s; figures in {figures}")
    return 0


def mitigation_table(folders: dict[str, Path]) -> pd.DataFrame:
    """Per organism: the chosen set and the best single block within the budget, next to no
    intervention, on the held-out halves."""
    rows = []
    for arch, folder in folders.items():
        t = pd.read_csv(folder / "heldout.csv").set_index("method")
        for method in ("none", "search", "best block within budget", "best block at any cost"):
            r = t.loc[method]
            em = "-" if pd.isna(r.exact_match) else f"{r.exact_match:.3f} [{r.exact_match_low:.3f}, {r.exact_match_high:.3f}]"
            ppl = "-" if pd.isna(r.exact_match) else f"{r.ppl_ratio:.3f} [{r.ppl_ratio_low:.3f}, {r.ppl_ratio_high:.3f}]"
            rows.append({"organism": arch, "method": method, "set": r["set"], "exact match": em, "perplexity ratio": ppl})
    return pd.DataFrame(rows)


def paper_figures_mean(joined: pd.DataFrame) -> pd.DataFrame:
    from interp.plots import with_mean_accuracy

    return with_mean_accuracy(joined)


if __name__ == "__main__":
    sys.exit(main())
