"""Localizing memorization to components, and scoring localizations against ground truth.

- Per-head attention bypass (the identity-attention intervention of Menta, Agrawal and Agarwal,
  NAACL 2025, applied to one head instead of a whole block). The paper calls a per-head sweep
  too expensive; ``head_bypass_sweep`` makes it cheap with three observations. (1) Bypassing a
  head of block l leaves everything below block l as it was, so each head's teacher-forced pass
  runs only blocks l..L-1 from the unmodified pass's residual (``interp.reuse``). (2) Greedy
  decoding from the prefix reproduces the suffix exactly iff every teacher-forced argmax on
  the true row is right; otherwise the free-running and teacher-forced runs agree up to the
  first mismatch j, so generation is needed only after it, and only for those rows (the rule
  of ``interp.memorization.decode_plan``, which also decodes near-tie rows in full). (3) The
  open rows of all heads are decoded together, each under its own head's bypass, from their
  teacher-forced passes' KV caches (``interp.memorization.evaluate_many``). The result equals
  ``interp.memorization.evaluate`` per head (tested). ``RowHeadBypass`` bypasses one head per
  batch row.
- Rankings: a tidy table ``method, component, score, rank`` (rank 1 = most responsible). A
  bypass is ranked by necessity (the exact-match drop on the rows) or by selectivity (the
  memorization it removes minus the general ability it costs, the paper's two-axis reading made
  one number; ``selectivity`` and docs/selectivity.md).
- Ground truth, after Chang, Thomason and Jia, "Do Localization Methods Actually Localize
  Memorized Data in LLMs? A Tale of Two Benchmarks" (NAACL 2024): Recall@k of the injected
  component, and knockout of the top-k components measuring the drop in memorization on the
  target rows, on other memorized rows, and in general scores (the mean next-token NLL on
  held-out rows, benchmark accuracy, or any ``GeneralScore``); a localization is good when the
  first drop is much larger than the other two.

Modules: ``head_sweep`` (the per-head bypass sweep), ``ranking``, ``selectivity``,
``ground_truth`` (the injected component of an organism), ``recall`` (Recall@k),
``knockout``, ``key_scores`` (canary-specific removal scores for the answer key) and
``truth_metrics`` (Recall@k, MRR, AUROC with ties in expectation, bootstrap over
organisms); every public name is re-exported here.
"""

from __future__ import annotations

from interp.localize.head_sweep import RowHeadBypass, head_bypass_sweep, head_configs
from interp.localize.ranking import RANKING_COLUMNS, rank, rank_by_bypass, rank_by_effect
from interp.localize.selectivity import (
    SELECTIVITY_COLUMNS,
    check_selectivity_baseline,
    general_nll_by_component,
    rank_by_selectivity,
    selectivity,
    selectivity_bootstrap,
)
from interp.localize.ground_truth import injected_component
from interp.localize.recall import recall_at_k, recall_at_k_ties_random, recall_table
from interp.localize.truth_metrics import bootstrap_mean, chance_levels, truth_metrics
from interp.localize.key_scores import KEY_SCORE_COLUMNS, removal_scores, secret_nll
from interp.localize.knockout import (
    GeneralScore,
    benchmark_score,
    knockout,
    knockout_curve,
    knockout_interventions,
    knockout_scores,
    mean_token_nll,
    nll_score,
    token_nll_per_row,
)

__all__ = [
    "KEY_SCORE_COLUMNS",
    "bootstrap_mean",
    "chance_levels",
    "removal_scores",
    "secret_nll",
    "truth_metrics",
    "GeneralScore",
    "RANKING_COLUMNS",
    "RowHeadBypass",
    "SELECTIVITY_COLUMNS",
    "benchmark_score",
    "check_selectivity_baseline",
    "general_nll_by_component",
    "head_bypass_sweep",
    "head_configs",
    "injected_component",
    "knockout",
    "knockout_curve",
    "knockout_interventions",
    "knockout_scores",
    "mean_token_nll",
    "nll_score",
    "rank",
    "rank_by_bypass",
    "rank_by_effect",
    "rank_by_selectivity",
    "recall_at_k",
    "recall_at_k_ties_random",
    "recall_table",
    "selectivity",
    "selectivity_bootstrap",
    "token_nll_per_row",
]
