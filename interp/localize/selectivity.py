"""Selectivity: the memorization a bypass removes minus the general ability it costs
(docs/selectivity.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from interp.errors import InputError
from interp.localize.knockout import knockout_interventions, token_nll_per_row
from interp.localize.ranking import rank


SELECTIVITY_COLUMNS = ["component", "exact_match", "memorization_lost", "mean_token_nll", "general_lost", "score", "nll_increase"]


def check_selectivity_baseline(em0: float, nll0: float, n_logits: int) -> None:
    """Raise ``InputError`` when the fractions of ``selectivity`` are undefined: no row memorized
    (``em0`` = 0), or a general NLL that is not finite or not below a uniform guess's."""
    if not em0 > 0:
        raise InputError("the unmodified model reproduces none of the rows (exact match 0), so the memorization a bypass removes is undefined")
    if not math.isfinite(nll0):
        raise InputError(f"the unmodified model's mean token NLL on the general rows is {nll0}, not a finite number")
    if not nll0 < math.log(n_logits):
        raise InputError(f"the unmodified model's mean token NLL on the general rows ({nll0:.3g} nats) is not below a uniform "
                         f"guess's (log {n_logits} = {math.log(n_logits):.3g}), so the general ability a bypass costs is undefined")  # fmt: skip


def _selectivity_score(em0, em_c, nll0, nll_c, n_logits: int):
    """m - g of docs/selectivity.md, elementwise over ``em_c`` / ``nll_c`` (scalars or arrays)."""
    return (em0 - em_c) / em0 - (nll_c - nll0) / (math.log(n_logits) - nll0)


def general_nll_by_component(
    model,
    rows: np.ndarray,
    components: Sequence[str],
    *,
    batch_size: int = 32,
    progress: bool = False,
    baseline: np.ndarray | None = None,
) -> pd.DataFrame:
    """Mean next-token NLL of each row of ``rows`` (``token_nll_per_row``) with each component
    (``block:L`` / ``L{l}H{h}``) bypassed, and of the unmodified model as component ``baseline``
    (pass its per-row values as ``baseline`` if already computed): long table
    ``component, row, mean_token_nll``. Rows of equal length, so a component's mean over rows is
    ``mean_token_nll``."""
    base = token_nll_per_row(model, rows, batch_size=batch_size) if baseline is None else np.asarray(baseline, float)
    values = [("baseline", base)]
    for label in tqdm(list(components), desc="general NLL", disable=not progress, leave=False):
        values.append((label, token_nll_per_row(model, rows, knockout_interventions([label]), batch_size=batch_size)))
    return pd.DataFrame(
        [(label, i, float(v)) for label, per_row in values for i, v in enumerate(per_row)],
        columns=["component", "row", "mean_token_nll"],
    )


def _general_means(general: pd.DataFrame) -> pd.Series:
    """Mean NLL per component of a ``general_nll_by_component`` table (or of one already holding
    one row per component)."""
    nll = general.groupby("component", sort=False)["mean_token_nll"].mean()
    if not np.isfinite(nll.to_numpy(float)).all():
        bad = nll.index[~np.isfinite(nll.to_numpy(float))].tolist()
        raise InputError(f"the general rows' mean token NLL is not finite for {bad} ('baseline': nothing bypassed)")
    return nll


def selectivity(sweep_df: pd.DataFrame, baseline: pd.DataFrame, general: pd.DataFrame, n_logits: int) -> pd.DataFrame:
    """Per bypassed component, how much memorization its bypass removes beyond the general ability
    it costs (docs/selectivity.md): ``memorization_lost`` m = (EM_0 - EM_c) / EM_0 on the rows of
    ``sweep_df`` / ``baseline`` (per-sequence metric tables, as for ``rank_by_bypass``);
    ``general_lost`` g = (NLL_c - NLL_0) / (log n_logits - NLL_0) from ``general``
    (``general_nll_by_component``), the fraction of the model's advantage over a uniform guess
    that the bypass costs; neither is clipped; ``score`` = m - g; ``nll_increase`` is the rise of
    the mean suffix NLL, the tie-break. Columns ``SELECTIVITY_COLUMNS``, one row per component."""
    means = sweep_df.groupby("config", sort=False)[["exact_match", "suffix_nll"]].mean()
    means = means.drop(index="baseline", errors="ignore")
    nll = _general_means(general)
    em0, nll0 = float(baseline["exact_match"].mean()), float(nll["baseline"])
    check_selectivity_baseline(em0, nll0, n_logits)
    missing = [c for c in means.index if c not in nll.index]
    if missing:
        raise ValueError(f"general NLL missing for components {missing}")
    em_c, nll_c = means["exact_match"].to_numpy(), nll.reindex(means.index).to_numpy(float)
    m = (em0 - em_c) / em0
    g = (nll_c - nll0) / (math.log(n_logits) - nll0)
    return pd.DataFrame(
        {"component": means.index, "exact_match": em_c, "memorization_lost": m, "mean_token_nll": nll_c,
         "general_lost": g, "score": _selectivity_score(em0, em_c, nll0, nll_c, n_logits),
         "nll_increase": means["suffix_nll"].to_numpy() - baseline["suffix_nll"].mean()}
    )[SELECTIVITY_COLUMNS]  # fmt: skip


def rank_by_selectivity(table: pd.DataFrame, method: str) -> pd.DataFrame:
    """Rank a ``selectivity`` table by its score (ties: larger rise in mean suffix NLL first)."""
    return rank(table, method, tiebreak="nll_increase")


def selectivity_bootstrap(
    sweep_df: pd.DataFrame,
    baseline: pd.DataFrame,
    general: pd.DataFrame,
    n_logits: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    samples: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
) -> pd.DataFrame:
    """How stable the ``selectivity`` ranking is: ``n_boot`` resamples, each drawing the target
    rows (of ``sweep_df`` / ``baseline``, in order of appearance) and the general rows (``row`` of
    ``general``) with replacement, independently; each resample is scored and ranked exactly as
    ``selectivity`` + ``rank_by_selectivity``. Per component: ``p_first`` (share of resamples
    ranking it first), ``rank_lo`` / ``rank_hi`` (2.5th / 97.5th percentile of its rank) and
    ``score_lo`` / ``score_hi`` (same for its score). A resample whose baseline has no memorized
    row is skipped (``n_used``). ``samples`` gives the (target, general) row indices explicitly."""
    comps = list(dict.fromkeys(sweep_df.loc[sweep_df.config != "baseline", "config"]))
    em = np.stack([sweep_df.loc[sweep_df.config == c, "exact_match"].to_numpy(float) for c in comps])  # [C, N]
    snll = np.stack([sweep_df.loc[sweep_df.config == c, "suffix_nll"].to_numpy(float) for c in comps])
    em0_rows, snll0_rows = baseline["exact_match"].to_numpy(float), baseline["suffix_nll"].to_numpy(float)
    wide = general.pivot(index="component", columns="row", values="mean_token_nll")
    gen, gen0 = wide.loc[comps].to_numpy(float), wide.loc["baseline"].to_numpy(float)  # [C, R], [R]
    if samples is None:
        rng = np.random.default_rng(seed)
        samples = [(rng.integers(0, em.shape[1], em.shape[1]), rng.integers(0, gen.shape[1], gen.shape[1]))
                   for _ in range(n_boot)]  # fmt: skip
    comp_label = np.asarray(comps)
    ranks, scores = [], []
    for t, r in samples:
        em0 = em0_rows[t].mean()
        if not em0 > 0:
            continue
        score = _selectivity_score(em0, em[:, t].mean(1), gen0[r].mean(), gen[:, r].mean(1), n_logits)
        tie = snll[:, t].mean(1) - snll0_rows[t].mean()
        order = np.lexsort((comp_label, -tie, -score))  # as rank(): score desc, tie-break desc, label asc
        rank_of = np.empty(len(comps), int)
        rank_of[order] = np.arange(1, len(comps) + 1)
        ranks.append(rank_of)
        scores.append(score)
    if not ranks:
        raise InputError("no bootstrap resample has a memorized row")
    ranks, scores = np.array(ranks), np.array(scores)
    return pd.DataFrame(
        {"component": comps, "p_first": (ranks == 1).mean(0),
         "rank_lo": np.percentile(ranks, 2.5, axis=0), "rank_hi": np.percentile(ranks, 97.5, axis=0),
         "score_lo": np.percentile(scores, 2.5, axis=0), "score_hi": np.percentile(scores, 97.5, axis=0),
         "n_used": len(ranks)}
    )  # fmt: skip
