"""Knockout of the top-k components: the drop in memorization on the target rows, on other
memorized rows, and in general scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from interp import sites
from interp.errors import check_finite
from interp.generation import batches, teacher_forced_logits
from interp.interventions import AttentionBypass, Intervention, ZeroAblation
from interp.memorization import evaluate


def knockout_interventions(components: Sequence[str], how: str = "bypass") -> list[Intervention]:
    """Interventions removing ``components`` (``block:L`` / ``L{l}H{h}``): attention bypass or
    zero ablation; heads of one layer are grouped into one intervention."""
    if how not in ("bypass", "zero"):
        raise ValueError(f"how must be 'bypass' or 'zero'; got {how!r}")
    cls = AttentionBypass if how == "bypass" else ZeroAblation
    blocks, heads = set(), {}
    for label in components:
        layer, head = sites.parse_component(label)
        if head is None:
            blocks.add(layer)
        else:
            heads.setdefault(layer, []).append(head)
    out: list[Intervention] = [cls(layer) for layer in sorted(blocks)]
    out += [cls(layer, heads=sorted(hs)) for layer, hs in sorted(heads.items()) if layer not in blocks]
    return out


@torch.no_grad()
def token_nll_per_row(
    model, rows: np.ndarray, interventions: Sequence[Intervention] = (), *, batch_size: int = 32
) -> np.ndarray:
    """Mean next-token NLL (nats) over every position of each row of ``rows``, as a float64
    array (reduced per batch, so no [rows, pos, vocab] tensor is kept)."""
    tokens = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    out = []
    for sl in batches(len(tokens), batch_size):
        logits = teacher_forced_logits(model, tokens[sl, :-1], interventions, batch_size=batch_size)
        check_finite(logits, "logits on the held-out rows")
        out.append(-torch.log_softmax(logits.double(), -1).gather(-1, tokens[sl, 1:, None])[..., 0].mean(1))
    return torch.cat(out).numpy()


def mean_token_nll(model, rows: np.ndarray, interventions: Sequence[Intervention] = (), *, batch_size: int = 32) -> float:
    """General-ability score: mean next-token NLL (nats) over every position of ``rows``."""
    return float(token_nll_per_row(model, rows, interventions, batch_size=batch_size).mean())


@dataclass(frozen=True)
class GeneralScore:
    """A general-ability score of a model under interventions: ``fn(model, interventions)``;
    ``higher_is_better`` orients the knockout's ``drop`` (positive = worse)."""

    name: str
    fn: Callable[[object, Sequence[Intervention]], float]
    higher_is_better: bool = False


def nll_score(rows: np.ndarray, *, batch_size: int = 32) -> GeneralScore:
    """Mean next-token NLL on held-out ``rows`` (lower is better)."""
    return GeneralScore("mean_token_nll", lambda m, ivs: mean_token_nll(m, rows, ivs, batch_size=batch_size))


def benchmark_score(tasks: Sequence, *, batch_size: int = 32) -> GeneralScore:
    """Mean zero-shot multiple-choice accuracy over ``tasks`` (``interp.benchmarks``)."""
    from interp.benchmarks import evaluate_task

    def fn(model, ivs) -> float:
        return float(np.mean([evaluate_task(model, t, ivs, batch_size=batch_size, progress=False)["acc"] for t in tasks]))

    return GeneralScore("benchmark_acc", fn, higher_is_better=True)


def knockout(
    model,
    components: Sequence[str],
    prefix_len: int,
    *,
    target_rows: np.ndarray,
    other_rows: np.ndarray | None = None,
    general: Sequence[GeneralScore] = (),
    how: str = "bypass",
    batch_size: int = 32,
    baseline: dict[tuple[str, str], float] | None = None,
) -> pd.DataFrame:
    """Knock out ``components`` together; tidy rows ``set, metric, baseline, knocked, drop``.

    Sets: ``target`` and ``other`` (memorized rows: exact match and token accuracy) and
    ``general`` (one row per ``GeneralScore``, e.g. ``nll_score`` or ``benchmark_score``).
    ``drop`` is oriented so that positive means worse (memorization lost, ability lost).
    ``baseline`` (from ``knockout_scores`` with no interventions) saves recomputing it.
    """
    sets = dict(target_rows=target_rows, other_rows=other_rows, general=general, batch_size=batch_size)
    base = baseline if baseline is not None else knockout_scores(model, [], prefix_len, **sets)
    knocked = knockout_scores(model, knockout_interventions(components, how), prefix_len, **sets)
    better = {s.name: s.higher_is_better for s in general} | {"exact_match": True, "token_accuracy": True}
    records = [
        dict(set=name, metric=metric, baseline=base[name, metric], knocked=k,
             drop=(base[name, metric] - k) if better[metric] else (k - base[name, metric]))
        for (name, metric), k in knocked.items()
    ]  # fmt: skip
    df = pd.DataFrame.from_records(records, columns=["set", "metric", "baseline", "knocked", "drop"])
    return df.assign(components=",".join(components), how=how, n_components=len(components))


def knockout_scores(
    model,
    interventions: Sequence[Intervention],
    prefix_len: int,
    *,
    target_rows: np.ndarray,
    other_rows: np.ndarray | None = None,
    general: Sequence[GeneralScore] = (),
    batch_size: int = 32,
) -> dict[tuple[str, str], float]:
    """``{(set, metric): value}`` under ``interventions``: mean exact match and token accuracy
    on the target and other rows, and each general score."""
    out: dict[tuple[str, str], float] = {}
    for name, rows in (("target", target_rows), ("other", other_rows)):
        if rows is not None and len(rows):
            df = evaluate(model, rows, prefix_len, interventions, batch_size=batch_size)
            out |= {(name, m): float(df[m].mean()) for m in ("exact_match", "token_accuracy")}
    for score in general:
        out["general", score.name] = float(score.fn(model, list(interventions)))
    return out


def knockout_curve(model, ranking: pd.DataFrame, ks: Sequence[int], prefix_len: int, **kwargs) -> pd.DataFrame:
    """``knockout`` of the top-k components of ``ranking`` for each k (baseline computed once),
    stacked with ``k`` and ``method`` columns."""
    ordered = ranking.sort_values("rank")["component"].tolist()
    sets = {k: v for k, v in kwargs.items() if k in ("target_rows", "other_rows", "general", "batch_size")}
    base = knockout_scores(model, [], prefix_len, **sets)
    frames = [knockout(model, ordered[:k], prefix_len, baseline=base, **kwargs).assign(k=k) for k in ks]
    return pd.concat(frames, ignore_index=True).assign(method=ranking["method"].iloc[0])
