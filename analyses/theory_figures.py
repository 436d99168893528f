"""Figures of the bypass bounds (docs/theory.md) from saved ``interp theory`` results.

Reads only ``bounds.csv`` and ``propagation.csv`` (and ``config.json`` for the title) of each
result folder; never loads a model. For each folder it draws, per bypassed block:

(a) the measured attention-sublayer difference ||o_i - õ_i|| against B1, B2, B3 (log scale;
    medians over tokens after the first, bands = interquartile range);
(b) the tightness measured / bound of each bound;
(c) the difference propagated to the block output, the final residual and the logits, with the
    logits bound;
(d) the growth E_final / E_l of the residual difference through the later blocks against the
    product of the certified step factors (the bound's growth, larger for earlier blocks), and
    the per-block factors rho_k, measured and bounded.

Usage: python analyses/theory_figures.py RESULTS_DIR [RESULTS_DIR ...] [--out figures/theory]
writes <out>/<folder name>.png and .pdf.
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

log = logging.getLogger(__name__)
COLORS = {"measured": "black", "B1": "tab:blue", "B2": "tab:orange", "B3": "tab:red"}


def quartiles(df: pd.DataFrame, col: str) -> pd.DataFrame:
    """Per layer: 25%, 50%, 75% quantiles of ``col`` (NaN dropped)."""
    q = df.groupby("layer")[col].quantile([0.25, 0.5, 0.75]).unstack()
    q.columns = ["lo", "mid", "hi"]
    return q


def _band(ax, q: pd.DataFrame, label: str, color, marker="o") -> None:
    ax.plot(q.index, q["mid"], marker=marker, ms=3, color=color, label=label)
    ax.fill_between(q.index, q["lo"], q["hi"], color=color, alpha=0.15, lw=0)


def panel_bounds(ax, bounds: pd.DataFrame) -> None:
    b = bounds[bounds["token"] > 0]
    for col in ("measured", "B1", "B2", "B3"):
        _band(ax, quartiles(b, col), "measured ||o - õ||" if col == "measured" else col, COLORS[col])
    ax.set(yscale="log", xlabel="bypassed block", ylabel="per-token norm", title="(a) attention difference vs. bounds")
    ax.legend(fontsize=7)


def panel_tightness(ax, bounds: pd.DataFrame) -> None:
    for col in ("B1", "B2", "B3"):
        _band(ax, quartiles(bounds, f"tight_{col}"), f"measured / {col}", COLORS[col])
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set(yscale="log", xlabel="bypassed block", ylabel="tightness", title="(b) tightness (1 = bound attained)")
    ax.legend(fontsize=7)


def panel_propagated(ax, bounds: pd.DataFrame) -> None:
    b = bounds[bounds["token"] > 0]
    series = [
        ("measured", "attention ||δ||", "black", "o"),
        ("block_measured", "block output", "tab:green", "s"),
        ("block_bound", "block bound (D3)", "tab:olive", "P"),
        ("final_measured", "final residual", "tab:purple", "^"),
        ("logits_measured", "logits", "tab:brown", "D"),
        ("logits_bound", "logits bound", "tab:red", "v"),
    ]
    for col, label, color, marker in series:
        _band(ax, quartiles(b, col), label, color, marker)
    ax.set(yscale="log", xlabel="bypassed block", ylabel="per-token norm", title="(c) propagated difference")
    ax.legend(fontsize=7)


def _geomean(propagation: pd.DataFrame, col: str) -> pd.Series:
    later = propagation[propagation["block"] > propagation["layer"]].dropna(subset=[col])
    return later.groupby("layer")[col].apply(lambda r: float(np.exp(np.log(r).mean())))


def panel_growth(ax, propagation: pd.DataFrame) -> None:
    last = propagation[propagation["block"] == propagation["block"].max()]
    _band(ax, quartiles(last, "gain"), "measured E_final / E_l", "tab:purple")
    _band(ax, quartiles(last, "gain_bound"), "bound: prod of step factors", "tab:red", marker="v")
    for col, label, color in (("rho", "measured ρ_k (geo. mean, k > l)", "tab:cyan"), ("rho_bound", "step bound on ρ_k", "tab:pink")):
        g = _geomean(propagation, col)
        if len(g):
            ax.plot(g.index, g.to_numpy(), marker="x", ls=":", color=color, label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set(yscale="log", xlabel="bypassed block", ylabel="factor", title="(d) growth through later blocks")
    ax.legend(fontsize=7)


def draw(bounds: pd.DataFrame, propagation: pd.DataFrame, title: str) -> plt.Figure:
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), constrained_layout=True)
    panel_bounds(axes[0, 0], bounds)
    panel_tightness(axes[0, 1], bounds)
    panel_propagated(axes[1, 0], bounds)
    panel_growth(axes[1, 1], propagation)
    for ax in axes.flat:
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=10)
    return fig


def load(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    bounds = pd.read_csv(folder / "bounds.csv")
    propagation = pd.read_csv(folder / "propagation.csv")
    title = folder.name
    config = folder / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        from interp.real import NAMES

        model = cfg["model"] if cfg.get("model") in NAMES else Path(str(cfg.get("model_name") or cfg.get("model"))).name
        title = f"{folder.name} (model {model}): {cfg.get('n_rows')} rows x {cfg.get('row_len')} tokens"
    return bounds, propagation, f"Attention bypass bounds (our formulation) — {title}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path, help="folders written by `interp theory`")
    parser.add_argument("--out", type=Path, default=Path("figures/theory"))
    args = parser.parse_args(argv)
    for folder in args.results:
        if not (folder / "bounds.csv").is_file() or not (folder / "propagation.csv").is_file():
            parser.error(f"{folder} has no bounds.csv and propagation.csv; run `interp theory --out {folder}` first")
    args.out.mkdir(parents=True, exist_ok=True)
    for folder in args.results:
        fig = draw(*load(folder))
        for ext in ("png", "pdf"):
            fig.savefig(args.out / f"{folder.name}.{ext}", dpi=150, metadata={"CreationDate": None} if ext == "pdf" else None)
        plt.close(fig)
        log.info("wrote %s/%s.png and .pdf", args.out, folder.name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
