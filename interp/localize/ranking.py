"""Rankings: a tidy table ``method, component, score, rank`` (rank 1 = most responsible)."""

from __future__ import annotations

import numpy as np
import pandas as pd


RANKING_COLUMNS = ["method", "component", "score", "rank"]


def rank(scores: pd.DataFrame, method: str, *, tiebreak: str | None = None) -> pd.DataFrame:
    """Ranking table from ``component`` and ``score`` columns (higher score = more responsible):
    columns ``method, component, score, rank``; rank 1 first. Ties in ``score`` are broken by
    the optional ``tiebreak`` column (higher first), then by component label."""
    keys, ascending = ["score"], [False]
    if tiebreak is not None:
        keys, ascending = ["score", tiebreak], [False, False]
    ordered = scores.sort_values([*keys, "component"], ascending=[*ascending, True], kind="mergesort")
    return pd.DataFrame(
        {"method": method, "component": ordered["component"].to_numpy(), "score": ordered["score"].to_numpy(float),
         "rank": np.arange(1, len(ordered) + 1)}
    )  # fmt: skip


def rank_by_bypass(sweep_df: pd.DataFrame, baseline: pd.DataFrame, method: str) -> pd.DataFrame:
    """Rank configs by the drop in mean exact match from ``baseline`` (ties: larger increase in
    mean suffix NLL first). ``sweep_df`` has ``config`` and the metric columns per sequence."""
    means = sweep_df.groupby("config", sort=False)[["exact_match", "suffix_nll"]].mean()
    means = means.drop(index="baseline", errors="ignore")
    scores = pd.DataFrame(
        {"component": means.index, "score": baseline["exact_match"].mean() - means["exact_match"].to_numpy(),
         "nll_increase": means["suffix_nll"].to_numpy() - baseline["suffix_nll"].mean()}
    )  # fmt: skip
    return rank(scores, method, tiebreak="nll_increase")


def rank_by_effect(effects: pd.DataFrame, method: str, *, value: str = "normalized") -> pd.DataFrame:
    """Rank per-head (or per-block) effects: ``effects`` has ``component`` and ``value``."""
    return rank(effects.rename(columns={value: "score"})[["component", "score"]], method)
