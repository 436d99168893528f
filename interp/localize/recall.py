"""Recall@k of the ground-truth component in a ranking (ties broken at random, or by expectation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from interp import sites
from interp.localize.ground_truth import _coarsen


def recall_at_k(ranking: pd.DataFrame, truth: str | Sequence[str], k: int) -> float:
    """Fraction of the true components found among the top ``k`` of ``ranking``.

    When granularities differ, both sides are compared at the coarser one: a head truth
    against a block ranking counts its block; a block truth against a head ranking is found
    when any of its heads is in the top k."""
    truth = [truth] if isinstance(truth, str) else list(truth)
    ranked = ranking.sort_values("rank")["component"].tolist()
    to_blocks = any(sites.parse_component(c)[1] is None for c in ranked + truth)
    top = {_coarsen(c, to_blocks) for c in ranked[:k]}
    wanted = {_coarsen(c, to_blocks) for c in truth}
    return len(top & wanted) / len(wanted)


def recall_at_k_ties_random(ranking: pd.DataFrame, truth: str | Sequence[str], k: int) -> float:
    """Expected ``recall_at_k`` when ties in ``score`` are broken uniformly at random instead of by
    the ranking's tie-break: how much of a recall rests on the tie-break.

    The top ``k`` holds every component scoring above the tie group that straddles position
    ``k`` and a uniformly random ``r``-subset of that group (``r`` the places left, ``e`` its
    size). A truth is found for sure when one of its components (at the coarser granularity,
    as in ``recall_at_k``) scores above the group, with probability ``1 - C(e-w, r) / C(e, r)``
    when ``w`` of them are in the group, and never otherwise; the result is the mean over truths."""
    truth = [truth] if isinstance(truth, str) else list(truth)
    ordered = ranking.sort_values("rank")
    comps, scores = ordered["component"].tolist(), ordered["score"].to_numpy(float)
    to_blocks = any(sites.parse_component(c)[1] is None for c in comps + truth)
    coarse = [_coarsen(c, to_blocks) for c in comps]
    k = min(k, len(comps))
    if k == 0:
        return 0.0
    cut = scores[k - 1]  # the score at position k: its tie group straddles the cut
    above = scores > cut
    group = scores == cut
    e, r = int(group.sum()), k - int(above.sum())
    found = []
    for t in {_coarsen(c, to_blocks) for c in truth}:
        mine = np.array([c == t for c in coarse])
        if (mine & above).any():
            found.append(1.0)
        else:
            w = int((mine & group).sum())
            found.append((math.comb(e, r) - math.comb(e - w, r)) / math.comb(e, r))  # integers: 0.2, not 0.19999
    return float(np.mean(found))


def recall_table(ranking: pd.DataFrame, truth: str | Sequence[str], ks: Sequence[int] = (1, 3, 5)) -> pd.DataFrame:
    """Tidy ``method, truth, k, recall`` plus the rank of the (first) true component and
    ``recall_ties_random`` (``recall_at_k_ties_random``: the expected recall when ties in the
    score are broken at random, not by the ranking's tie-break)."""
    truth_l = [truth] if isinstance(truth, str) else list(truth)
    ranked = ranking.sort_values("rank")["component"].tolist()
    to_blocks = any(sites.parse_component(c)[1] is None for c in ranked + truth_l)
    coarse = [_coarsen(c, to_blocks) for c in ranked]
    wanted = {_coarsen(c, to_blocks) for c in truth_l}
    first = next((i + 1 for i, c in enumerate(coarse) if c in wanted), None)
    method = ranking["method"].iloc[0] if len(ranking) else ""
    return pd.DataFrame(
        [{"method": method, "truth": ",".join(truth_l), "k": k, "recall": recall_at_k(ranking, truth_l, k),
          "recall_ties_random": recall_at_k_ties_random(ranking, truth_l, k), "truth_rank": first, "n_components": len(ranked)} for k in ks]
    )  # fmt: skip
