"""How well one ranking finds one known component, with ties broken uniformly at random (in
expectation, so a method that scores everything equal gets exactly the chance level), and
bootstrap intervals over organisms.

For a truth scored below ``a`` components and tied with ``e - 1`` others, its rank is uniform on
``a + 1 .. a + e``:

- Recall@k = P(rank <= k) = clip((k - a) / e, 0, 1); chance k / N;
- reciprocal rank = mean of 1 / r over those ranks; chance H_N / N (the mean of 1/r over 1..N);
- AUROC of the truth against the other N - 1 components = (components below it + half the
  others in its tie) / (N - 1); chance 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def truth_metrics(scores: Mapping[str, float], truth: str, ks: Sequence[int] = (1, 3)) -> dict[str, float]:
    """Recall@k for each k, reciprocal rank (``mrr`` for one organism) and AUROC of ``truth`` in
    ``scores`` (component -> score, higher = more responsible)."""
    if truth not in scores:
        raise ValueError(f"the true component {truth!r} has no score")
    values = np.asarray([float(v) for v in scores.values()])
    if not np.isfinite(values).all():
        raise ValueError("scores must be finite")
    t = float(scores[truth])
    n = len(values)
    above = int((values > t).sum())
    tied = int((values == t).sum())  # includes the truth
    below = n - above - tied
    out = {f"recall@{k}": float(np.clip((k - above) / tied, 0.0, 1.0)) for k in ks}
    out["mrr"] = float(np.mean(1.0 / np.arange(above + 1, above + tied + 1)))
    out["auroc"] = (below + 0.5 * (tied - 1)) / (n - 1) if n > 1 else 0.5
    return out


def chance_levels(n: int, ks: Sequence[int] = (1, 3)) -> dict[str, float]:
    """The metrics of a uniformly random ranking of ``n`` components (``truth_metrics`` of all-equal scores)."""
    out = {f"recall@{k}": min(k, n) / n for k in ks}
    out["mrr"] = float(np.mean(1.0 / np.arange(1, n + 1)))
    out["auroc"] = 0.5
    return out


def bootstrap_mean(values: Sequence[float], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of ``values`` (one per organism) and its percentile bootstrap interval over organisms."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        raise ValueError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(x.mean()), float(lo), float(hi)
