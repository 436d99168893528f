"""Figures of ``interp localize`` results: head heatmaps, patching heatmaps over positions, and
the Recall@k table against the injected ground truth.

Reads only the files ``interp localize`` writes into each result folder (``config.json``,
``ranking.csv``, ``recall.csv`` and the method's raw table); never loads a model. Per folder:

- ``block-bypass``: mean exact match / token accuracy per bypassed block, baseline dashed; with
  ``--score selectivity``, beside it memorization lost against general ability lost per block;
- ``head-bypass``: layer x head heatmaps of mean exact match, token accuracy, completion entropy
  (and of the selectivity score with ``--score selectivity``);
- ``patching``: per direction (rows), layer x position heatmaps of the normalized suffix
  log-probability for resid_pre, attn_out, mlp_out (the prefix/suffix boundary marked), and
  the layer x head heatmap of per-head (z) patching;
- ``attribution``: layer x head heatmaps of exact per-head patching, attribution patching (both
  directions) and direct logit attribution, and attribution vs. exact scatters with Pearson r.

When a folder holds ``knockout.csv`` (``--knockout``), ``<tag>-knockout.png/.pdf`` shows, per K,
the drop in exact match on the target rows and on other memorized rows, and the loss in each
general score (mean token NLL rise, benchmark accuracy fall); a localization is specific when
the first bar dominates.

The true component (when known) is outlined in every head heatmap. Across folders it writes
``recall.csv`` and a table figure ``recall.png/.pdf``.

Usage: python analyses/localization_figures.py RESULTS_DIR [RESULTS_DIR ...] [--out figures/localization]
Each RESULTS_DIR is an ``interp localize --out`` folder; figures are named
``<parent>-<folder>.png/.pdf`` (e.g. ``neox-injected-patching.png``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

log = logging.getLogger(__name__)
POSITION_SITES = ("resid_pre", "attn_out", "mlp_out")


def head_grid(df: pd.DataFrame, value: str) -> pd.DataFrame:
    """Layer x head table of ``value`` (mean over any other rows)."""
    df = df.astype({"layer": int, "head": int})
    return df.groupby(["layer", "head"])[value].mean().unstack("head").sort_index()


def heatmap(ax, grid: pd.DataFrame, title: str, *, cmap="RdBu_r", center: float | None = 0.0, truth: str | None = None):
    values = grid.to_numpy(float)
    if center is not None:
        lim = np.nanmax(np.abs(values - center)) or 1.0
        im = ax.imshow(values, cmap=cmap, vmin=center - lim, vmax=center + lim, aspect="auto")
    else:
        im = ax.imshow(values, cmap=cmap, aspect="auto")
    ax.set(title=title, xlabel=grid.columns.name or "", ylabel="layer",
           xticks=range(grid.shape[1]), yticks=range(grid.shape[0]))  # fmt: skip
    ax.set_xticklabels(grid.columns, fontsize=6)
    ax.set_yticklabels(grid.index, fontsize=6)
    cell_borders(ax, *values.shape)
    ax.figure.colorbar(im, ax=ax, fraction=0.046).ax.ticklabel_format(useOffset=False)
    _outline(ax, truth, list(grid.index), list(grid.columns))


def cell_borders(ax, n_rows: int, n_cols: int) -> None:
    """Thin white lines between cells instead of the style's axis grid, which would run through
    the middle of every cell (ticks sit at cell centres) and make each cell read as two."""
    ax.grid(False)
    ax.set_xticks(np.arange(-0.5, n_cols, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, n_rows, 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.8)
    ax.tick_params(which="minor", length=0)


def _outline(ax, truth: str | None, layers: list, cols: list) -> None:
    if not truth or not truth.startswith("L") or "H" not in truth:
        return
    layer, head = (int(x) for x in truth[1:].split("H"))
    if layer in layers and head in cols:
        ax.add_patch(Rectangle((cols.index(head) - 0.5, layers.index(layer) - 0.5), 1, 1, fill=False, ec="lime", lw=2))


def _selectivity(folder: Path) -> pd.DataFrame | None:
    path = folder / "selectivity.csv"
    return pd.read_csv(path) if path.is_file() else None


def draw_selectivity(ax, spec: pd.DataFrame, truth: str | None) -> None:
    """Memorization lost against general ability lost, one point per component (the paper's two
    axes as fractions); the score m - g is the height above the diagonal."""
    colors = np.where(spec.component.to_numpy() == truth, "green", "tab:blue")
    ax.scatter(spec.general_lost, spec.memorization_lost, c=colors, s=18, zorder=3)
    # labels of points at the same height are staggered vertically so that close ones stay legible
    stagger = spec.groupby(spec.memorization_lost.round(3)).cumcount().to_numpy()
    for comp, x, y, i in zip(spec.component, spec.general_lost, spec.memorization_lost, stagger):
        is_truth = comp == truth
        ax.annotate(comp.replace("block:", ""), (x, y), fontsize=7, xytext=(3, -10 - 8 * (i % 4)), textcoords="offset points",
                    color="green" if is_truth else "k", weight="bold" if is_truth else "normal")  # fmt: skip
    lo = min(0.0, float(spec.general_lost.min()))
    hi = max(0.05, float(spec.general_lost.max())) * 1.15
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--", label="score 0 (m = g)")
    ax.set(xlabel="general ability lost g (held-out NLL)", ylabel="memorization lost m (exact match)",
           title="selectivity: score = m - g (truth in green)", ylim=(-0.1, 1.08), xlim=(lo - 0.02 * (hi - lo), hi))  # fmt: skip
    ax.legend(fontsize=7, loc="lower right")


def draw_block_bypass(folder: Path, cfg: dict) -> plt.Figure:
    df = pd.read_parquet(folder / "sequences.parquet")
    means = df.groupby("config", sort=False)[["exact_match", "token_accuracy"]].mean()
    base, blocks = means.loc["baseline"], means.drop(index="baseline")
    spec = _selectivity(folder)
    if spec is not None:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.4))
        draw_selectivity(ax2, spec, cfg.get("truth"))
    else:
        fig, ax = plt.subplots(figsize=(6, 3.2))
    x = np.arange(len(blocks))
    for i, (m, c) in enumerate([("exact_match", "tab:blue"), ("token_accuracy", "tab:orange")]):
        ax.bar(x + 0.4 * i - 0.2, blocks[m], width=0.4, color=c, label=m)
        ax.axhline(base[m], color=c, ls="--", lw=1)
    ax.set(xticks=x, xlabel="bypassed block", ylabel="mean over rows", ylim=(0, 1.05))
    ax.set_xticklabels([b.split(":")[1] for b in blocks.index])
    ax.legend(fontsize=7)
    return fig


def draw_head_bypass(folder: Path, cfg: dict) -> plt.Figure:
    df = pd.read_parquet(folder / "heads.parquet")
    base, heads = df[df.config == "baseline"], df[df.config != "baseline"]
    spec = _selectivity(folder)
    fig, axes = plt.subplots(1, 3 if spec is None else 4, figsize=(12 if spec is None else 16, 3.4))
    for ax, (m, cmap) in zip(axes, [("exact_match", "viridis"), ("token_accuracy", "viridis"), ("completion_entropy", "magma")]):
        heatmap(ax, head_grid(heads, m), f"{m} (baseline {base[m].mean():.3g})", cmap=cmap, center=None, truth=cfg.get("truth"))
    if spec is not None:
        layer_head = spec.component.str.extract(r"L(\d+)H(\d+)").astype(int)
        grid = spec.assign(layer=layer_head[0], head=layer_head[1])
        heatmap(axes[3], head_grid(grid, "score"), "selectivity m - g", cmap="viridis", center=None, truth=cfg.get("truth"))
    return fig


def draw_patching(folder: Path, cfg: dict) -> plt.Figure:
    df = pd.read_parquet(folder / "patching.parquet")
    df = df[df.metric == "suffix_logprob"]
    directions = sorted(df.direction.unique())
    fig, axes = plt.subplots(len(directions), 4, figsize=(16, 3.2 * len(directions)), squeeze=False)
    for row, direction in zip(axes, directions):
        d = df[df.direction == direction]
        for ax, site in zip(row, POSITION_SITES):
            grid = d[d.site == site].pivot_table(index="layer", columns="position", values="normalized")
            heatmap(ax, grid, f"{direction}: {site}")
            ax.axvline(cfg["prefix_len"] - 1.5, color="k", lw=0.8, ls=":")  # positions >= P-1 score the suffix
        heatmap(row[3], head_grid(d[d.site == "head"], "normalized"), f"{direction}: heads (z)", truth=cfg.get("truth"))
    return fig


def draw_attribution(folder: Path, cfg: dict) -> plt.Figure:
    est = pd.read_parquet(folder / "attribution.parquet")
    exact = pd.read_parquet(folder / "head_patching.parquet")
    exact = exact[(exact.site == "head") & (exact.metric == "suffix_logprob")]
    atp, dla = est[est.method == "attribution_patching"], est[est.method == "dla"]
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.4))
    for col, direction in enumerate(("denoising", "noising")):
        ex, at = exact[exact.direction == direction], atp[atp.direction == direction]
        heatmap(axes[col, 0], head_grid(ex, "normalized"), f"exact patching ({direction})", truth=cfg.get("truth"))
        heatmap(axes[col, 1], head_grid(at, "normalized"), f"attribution patching ({direction})", truth=cfg.get("truth"))
        pair = ex.set_index("component")["normalized"].to_frame("exact").join(at.set_index("component")["normalized"].rename("atp"))
        _scatter(axes[col, 2], pair["exact"], pair["atp"], f"AtP vs exact ({direction})")
        pair = ex.set_index("component")["normalized"].to_frame("exact").join(dla.set_index("component")["estimate"].rename("dla"))
        _scatter(axes[col, 3], pair["exact"], pair["dla"], f"DLA vs exact ({direction})")
    return fig


def draw_knockout(folder: Path, cfg: dict) -> plt.Figure:
    ko = pd.read_csv(folder / "knockout.csv")
    ko = ko[(ko.set == "general") | (ko.metric == "exact_match")]
    bars = [("target", "exact_match"), ("other", "exact_match")] + [("general", m) for m in ko[ko.set == "general"].metric.unique()]
    bars = [b for b in bars if ((ko.set == b[0]) & (ko.metric == b[1])).any()]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ks, width = sorted(ko.k.unique()), 0.8 / len(bars)
    for i, (name, metric) in enumerate(bars):
        d = ko[(ko.set == name) & (ko.metric == metric)].set_index("k")["drop"].reindex(ks)
        unit = " (nats)" if metric == "mean_token_nll" else ""
        ax.bar(np.arange(len(ks)) + (i - (len(bars) - 1) / 2) * width, d.to_numpy(float), width=width,
               label=f"{name}: {metric}{unit}")  # fmt: skip
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xticks=range(len(ks)), xlabel=f"top-K knocked out ({ko.how.iloc[0]})", ylabel="drop (positive = worse)")
    ax.set_xticklabels(ks)
    ax.legend(fontsize=7)
    return fig


def _save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    for ext in ("png", "pdf"):
        # no creation date in PDFs: a rerun reproduces the committed files byte for byte
        fig.savefig(path.parent / f"{path.name}.{ext}", dpi=150, bbox_inches="tight",
                    metadata={"CreationDate": None} if ext == "pdf" else None)  # fmt: skip
    plt.close(fig)


def _scatter(ax, x: pd.Series, y: pd.Series, title: str) -> None:
    ax.scatter(x, y, s=10)
    r = x.corr(y)
    ax.set(title=f"{title}, r = {r:.2f}", xlabel="exact (normalized)", ylabel="estimate")


DRAW = {"block-bypass": draw_block_bypass, "head-bypass": draw_head_bypass, "patching": draw_patching,
        "attribution": draw_attribution}  # fmt: skip


def tag(folder: Path) -> str:
    return f"{folder.parent.name}-{folder.name}"


def display_name(cfg: dict) -> str:
    """The model's name for figures and tables: a named real model by its name (its folder is a
    cache key), a local folder by its name, never a machine path."""
    from interp.real import NAMES

    if cfg.get("model") in NAMES:
        return str(cfg["model"])
    name = str(cfg.get("model_name", ""))
    return Path(name).name if Path(name).is_absolute() else name


def recall_rows(folder: Path, cfg: dict) -> pd.DataFrame | None:
    path = folder / "recall.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path).assign(model=folder.parent.name, model_name=display_name(cfg))


def draw_recall_table(recall: pd.DataFrame) -> plt.Figure:
    """One row per (model, method): Recall@k per k, each as "recall (expected recall with the
    score's ties broken at random)" when ``recall_ties_random`` is there."""
    index = ["model", "method", "truth", "truth_rank"]
    cell = recall["recall"].map("{:.2f}".format)
    if "recall_ties_random" in recall:
        cell = cell + recall["recall_ties_random"].map(" ({:.2f})".format)
    wide = recall.assign(cell=cell).pivot(index=index, columns="k", values="cell").reset_index()
    wide.columns = [c if isinstance(c, str) else f"Recall@{c}" for c in wide.columns]
    fig, ax = plt.subplots(figsize=(9, 0.6 + 0.3 * len(wide)))
    ax.axis("off")
    if "recall_ties_random" in recall:
        ax.set_title("Recall@k (in brackets: expected Recall@k with the score's ties broken at random)", fontsize=8)
    cells = [[str(v) for v in row] for row in wide.itertuples(index=False)]
    ax.table(cellText=cells, colLabels=list(wide.columns), loc="center").auto_set_font_size(True)
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("figures/localization"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    recalls = []
    for folder in args.folders:
        cfg = json.loads((folder / "config.json").read_text())
        fig = DRAW[cfg["method"]](folder, cfg)
        title = f"{tag(folder)}: {display_name(cfg)} (truth: {cfg.get('truth')})"
        fig.suptitle(title, fontsize=9, y=1.0)
        _save(fig, args.out / tag(folder))
        if (folder / "knockout.csv").is_file():
            fig = draw_knockout(folder, cfg)
            fig.suptitle(title, fontsize=9, y=1.0)
            _save(fig, args.out / f"{tag(folder)}-knockout")
        if (r := recall_rows(folder, cfg)) is not None:
            recalls.append(r)
    if recalls:
        recall = pd.concat(recalls, ignore_index=True)
        recall.to_csv(args.out / "recall.csv", index=False)
        _save(draw_recall_table(recall), args.out / "recall")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
