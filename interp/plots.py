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
