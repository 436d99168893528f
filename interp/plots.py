"""Figure functions for the paper's figure types (Menta et al., NAACL 2025, Figs. 2-4).

They read DataFrames only (the ``joined.csv`` tables of ``interp bench --with-memorization``:
one row per config with memorization means, ``acc:<task>`` and ``drop_<kind>`` columns) and
never load a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

METRIC_LABELS = {
    "exact_match": "exact match",
    "token_accuracy": "token accuracy",
    "completion_entropy": "completion entropy (nats)",
}


def block_index(config: pd.Series) -> pd.Series:
    """``block:L`` -> L; anything else (``baseline``) -> NaN."""
    return pd.to_numeric(config.str.extract(r"^block:(\d+)$")[0], errors="coerce")


def accuracy_column(joined: pd.DataFrame, task: str | None) -> str:
    """``acc:<task>`` for a task, or a mean-over-tasks column ``acc_mean`` added on the fly."""
    if task is not None:
        col = f"acc:{task}"
        if col not in joined:
            raise ValueError(f"no accuracy for task {task!r}; tables have {sorted(c[4:] for c in joined if c.startswith('acc:'))}")
        return col
    return "acc_mean"


def with_mean_accuracy(joined: pd.DataFrame) -> pd.DataFrame:
    tasks = [c for c in joined.columns if c.startswith("acc:")]
    return joined.assign(acc_mean=joined[tasks].mean(axis=1))


def scatter_panel(ax, joined: pd.DataFrame, metric: str, acc_col: str, *, n_blocks: int, cmap: str = "viridis") -> PathCollection:
    """One point per bypassed block (colour = block index), the original model as a red star."""
    blocks = block_index(joined["config"])
    bypassed = joined[blocks.notna()]
    sc = ax.scatter(bypassed[acc_col], bypassed[metric], c=blocks[blocks.notna()], cmap=cmap,
                    vmin=0, vmax=max(n_blocks - 1, 1), s=42, edgecolor="k", linewidth=0.4, zorder=3)  # fmt: skip
    base = joined[joined["config"] == "baseline"]
    ax.scatter(base[acc_col], base[metric], marker="*", s=220, c="red", edgecolor="k", zorder=4, label="original")
    ax.set_xlabel("benchmark accuracy" if acc_col == "acc_mean" else f"accuracy ({acc_col[4:]})")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(alpha=0.3)
    return sc


def memorization_vs_accuracy(
    models: dict[str, pd.DataFrame], *, task: str | None = None, metrics: Sequence[str] = tuple(METRIC_LABELS)
) -> plt.Figure:
    """Grid: one row per model, one column per memorization metric (the paper's Figs. 2-3)."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(len(models), len(metrics), figsize=(4.2 * len(metrics), 3.4 * len(models)), squeeze=False)
    for row, (name, joined) in enumerate(models.items()):
        joined = with_mean_accuracy(joined)
        acc_col = accuracy_column(joined, task)
        n_blocks = int(block_index(joined["config"]).max()) + 1
        for col, metric in enumerate(metrics):
            sc = scatter_panel(axes[row, col], joined, metric, acc_col, n_blocks=n_blocks)
            axes[row, col].set_title(f"{name}: {METRIC_LABELS.get(metric, metric)}", fontsize=9)
        fig.colorbar(sc, ax=axes[row, -1], label="bypassed block")
    axes[0, 0].legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def relative_drop_by_block(models: dict[str, pd.DataFrame]) -> plt.Figure:
    """Relative accuracy drop from the original model per bypassed block, one line per task kind
    (``drop_<kind>`` columns: reasoning, language, user; the paper's Fig. 4), one panel per model."""
    sns.set_theme(style="whitegrid", context="paper")
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.4), squeeze=False)
    for ax, (name, joined) in zip(axes[0], models.items()):
        blocks = block_index(joined["config"])
        for col in [c for c in joined.columns if c.startswith("drop_")]:
            ax.plot(blocks[blocks.notna()], joined.loc[blocks.notna(), col], marker="o", label=col[len("drop_") :])
        ax.axhline(0, color="k", linewidth=0.8)
        ax.set(xlabel="bypassed block", ylabel="relative accuracy drop", title=name)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.legend()
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, out_dir: str | Path, name: str) -> list[Path]:
    """Write ``name.png`` (150 dpi) and ``name.pdf`` into ``out_dir``; close the figure."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.pdf"]
    for p in paths:
        fig.savefig(p, dpi=150, bbox_inches="tight", metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return paths


def mitigation_figure(table: pd.DataFrame, path: str | Path, *, title: str = "", budget: float | None = None) -> Path:
    """Memorization left (held-out exact match, 95% interval) against general ability lost
    (held-out perplexity ratio - 1, 95% interval): the search's greedy path as a line ending at
    the chosen set, the baselines as labelled points, the budget as a dashed line. ``table``
    is ``interp.mitigate.report``'s. Writes a PNG at ``path``."""
    t = table.dropna(subset=["exact_match"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    path_rows = t[t.method.str.startswith("search")]
    order = path_rows.n_components.argsort(kind="stable")
    path_rows = pd.concat([t[t.method == "none"], path_rows.iloc[order]])
    ax.plot(path_rows.ppl_ratio - 1, path_rows.exact_match, "-o", color="C0", label="search path (chosen set last)", zorder=3)
    others = t[~t.method.str.startswith("search") & (t.method != "none")]
    stacked: dict[float, int] = {}  # labels placed per exact-match level, so nearby ones stack
    for kind, color, marker in (("random", "0.6", "x"), ("block", "C3", "s"), ("top-", "C2", "^")):
        sel = others[others.method.str.contains(kind)]
        if len(sel):
            ax.errorbar(sel.ppl_ratio - 1, sel.exact_match,
                        xerr=[sel.ppl_ratio - sel.ppl_ratio_low, sel.ppl_ratio_high - sel.ppl_ratio],
                        yerr=[sel.exact_match - sel.exact_match_low, sel.exact_match_high - sel.exact_match],
                        fmt=marker, color=color, capsize=2, label={"random": "random sets", "block": "best single block",
                                                                  "top-": "top-k of a ranking"}[kind])  # fmt: skip
            if kind != "random":  # one label per distinct set (rankings often agree), stacked upwards
                for set_, g in sel.groupby("set", sort=False):
                    r = g.iloc[0]
                    ax.annotate("\n".join(g.method) + f": {set_}", (r.ppl_ratio - 1, r.exact_match), fontsize=6,
                                xytext=(-4, 8 + 26 * stacked.get(round(r.exact_match, 1), 0)), textcoords="offset points",
                                ha="right", arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.5})  # fmt: skip
                    stacked[round(r.exact_match, 1)] = stacked.get(round(r.exact_match, 1), 0) + 1
    chosen = t[t.method == "search"]
    if len(chosen):
        r = chosen.iloc[0]
        ax.errorbar([r.ppl_ratio - 1], [r.exact_match], xerr=[[r.ppl_ratio - r.ppl_ratio_low], [r.ppl_ratio_high - r.ppl_ratio]],
                    yerr=[[r.exact_match - r.exact_match_low], [r.exact_match_high - r.exact_match]], fmt="*", ms=12,
                    color="C0", capsize=2, label=f"chosen: {r.set}", zorder=4)  # fmt: skip
    if budget is not None:
        ax.axvline(budget, ls="--", color="0.3", lw=1, label=f"budget (+{budget:g})")
    ax.set_xscale("symlog", linthresh=0.1, linscale=2)  # linear up to +10%, where budgets sit; far points compressed
    right = max(0.12, float((t.ppl_ratio_high - 1).max()) * 1.2)
    left = min(-0.01, float((t.ppl_ratio_low - 1).min()) * 1.2)  # a removal can also lower perplexity
    ax.set_xlim(left, right)
    ticks = [x for x in (-0.5, -0.2, -0.1, -0.05, -0.025, 0, 0.025, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5, 10) if left <= x <= right]
    ax.set_xticks(ticks, [f"{x:g}" for x in ticks])
    ax.set_xlabel("general ability lost: held-out perplexity ratio - 1 (linear to 0.1, log beyond)")
    ax.set_ylabel("memorization left: held-out exact match")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return path
