"""Localizing memorization to components, and scoring localizations against ground truth.

- Per-head attention bypass (the identity-attention intervention of Menta, Agrawal and Agarwal,
  NAACL 2025, applied to one head instead of a whole block). The paper calls a per-head sweep
  too expensive; ``head_bypass_sweep`` makes it cheap with two observations. (1) Teacher-forced
  metrics of all H heads of a layer come from one forward pass over the batch replicated H
  times, where copy h bypasses head h. (2) Greedy decoding from the prefix reproduces the suffix
  exactly iff every teacher-forced argmax on the true row is right; otherwise the free-running
  and teacher-forced runs agree up to the first mismatch j, so generation is needed only after
  it, and only for those rows (the rule of ``interp.memorization.decode_plan``,
  which also decodes near-tie rows in full); the open rows of all heads are decoded together,
  each row with its own head bypassed (``RowHeadBypass``). The result equals
  ``interp.memorization.evaluate`` per head (tested).
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
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp import metrics, sites
from interp.data import validate_for_model
from interp.errors import InputError, check_finite
from interp.generation import batches, greedy_generate, teacher_forced_logits
from interp.interventions import AttentionBypass, Hook, Intervention, ZeroAblation, self_attention_hooks
from interp.memorization import decode_plan, evaluate, metrics_frame

log = logging.getLogger(__name__)

RANKING_COLUMNS = ["method", "component", "score", "rank"]


# ---------------------------------------------------------------- per-head bypass sweep


def _every_head_bypass_hooks(layer: int, n_heads: int, n: int) -> list[Hook]:
    """Hooks for a batch of ``n_heads`` stacked copies of ``n`` rows: copy h bypasses head h."""

    def edit(z: Tensor, v: Tensor) -> Tensor:
        zv, vv = z.view(n_heads, n, *z.shape[1:]), v.reshape(n_heads, n, *v.shape[1:])
        for h in range(n_heads):
            zv[h, :, :, h] = vv[h, :, :, h]
        return z

    return self_attention_hooks(layer, edit)


@torch.no_grad()
def every_head_tf_stats(
    model, tokens: Int[Tensor, "batch row"], prefix_len: int, layer: int, *, batch_size: int = 32
) -> list[dict[str, Tensor]]:
    """Per head h of ``layer``, the teacher-forced statistics of
    ``interp.memorization.teacher_forced_stats`` with head h bypassed, from passes over the batch
    replicated H times (copy h bypasses head h); reduced per batch, so no logits are kept."""
    H, T = int(model.cfg.n_heads), tokens.shape[1] - prefix_len
    parts: list[dict[str, list[Tensor]]] = [{k: [] for k in _TF_KEYS} for _ in range(H)]
    for sl in batches(len(tokens), max(1, batch_size // H)):
        chunk = tokens[sl]
        inp = chunk[:, :-1].repeat(H, 1).to(model.cfg.device)
        logits = model.run_with_hooks(inp, fwd_hooks=_every_head_bypass_hooks(layer, H, len(chunk)))
        check_finite(logits, f"logits with a head of block {layer} bypassed")
        logits = logits[:, prefix_len - 1 :].float().view(H, len(chunk), T, -1)
        for h in range(H):
            for k, v in _tf_stats(logits[h], chunk[:, prefix_len:].to(logits.device)).items():
                parts[h][k].append(v.cpu())
    return [{k: torch.cat(v) for k, v in p.items()} for p in parts]


_TF_KEYS = ("completion_entropy", "suffix_nll", "argmax", "margin")


def _tf_stats(suffix_logits: Float[Tensor, "batch T vocab"], suffix: Int[Tensor, "batch T"]) -> dict[str, Tensor]:
    return metrics.teacher_forced_summary(suffix_logits, suffix)


@dataclass(frozen=True)
class RowHeadBypass:
    """Attention bypass (``z := v``) of one head per batch row: row b bypasses head
    ``heads[b]`` of block ``layers[b]``. Decodes many single-head configurations in one batch;
    the batch must have exactly ``len(heads)`` rows (pass ``batch_size=len(heads)`` to
    ``greedy_generate``)."""

    layers: tuple[int, ...]
    heads: tuple[int, ...]

    @property
    def label(self) -> str:
        return "rowwise-bypass"

    def hooks(self, model) -> list[Hook]:
        layers, heads = torch.tensor(self.layers), torch.tensor(self.heads)
        out: list[Hook] = []
        for layer in sorted(set(self.layers)):
            rows = (layers == layer).nonzero().squeeze(1)
            out.extend(_rows_bypass_hooks(layer, rows, heads[rows]))
        return out


def _rows_bypass_hooks(layer: int, rows: Tensor, heads: Tensor) -> list[Hook]:
    def edit(z: Tensor, v: Tensor) -> Tensor:
        z[rows, :, heads] = v[rows, :, heads]
        return z

    return self_attention_hooks(layer, edit)


def every_head_greedy(
    model,
    tokens: Int[Tensor, "batch row"],
    prefix_len: int,
    configs: Sequence[tuple[int, int]],
    stats: Sequence[dict[str, Tensor]],
    *,
    batch_size: int = 32,
) -> list[Int[Tensor, "batch T"]]:
    """Greedy continuations with each (layer, head) of ``configs`` bypassed in turn, decoding
    only what teacher forcing (``stats``, one per config) leaves open. The open rows of all
    configs are sorted by where they resume and decoded together in chunks (``RowHeadBypass``),
    each chunk from its earliest resume position: decoding a known stretch again reproduces it,
    since those tokens are the greedy ones (near-ties are decoded from the prefix anyway)."""
    suffix = tokens[:, prefix_len:]
    T = suffix.shape[1]
    plans = [decode_plan(suffix, tf) for tf in stats]
    gens = torch.stack([g for g, _, _ in plans])  # [config batch T]
    todo = sorted(
        (int(start[i]), c, i) for c, (_, start, need) in enumerate(plans) for i in need.nonzero().squeeze(1).tolist()
    )
    for chunk in _chunks(todo, batch_size):
        k = chunk[0][0]
        cs, rs = torch.tensor([c for _, c, _ in chunk]), torch.tensor([i for _, _, i in chunk])
        context = torch.cat([tokens[rs, :prefix_len], gens[cs, rs, :k]], dim=1)
        iv = RowHeadBypass(tuple(configs[c][0] for c in cs.tolist()), tuple(configs[c][1] for c in cs.tolist()))
        gens[cs, rs, k:] = greedy_generate(model, context, T - k, [iv], batch_size=len(chunk))
    return list(gens)


def _chunks(xs: list, size: int) -> list[list]:
    return [xs[i : i + size] for i in range(0, len(xs), size)]


def head_bypass_sweep(
    model,
    rows: np.ndarray,
    prefix_len: int,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    n_samples: int = 100,
    progress: bool = False,
) -> pd.DataFrame:
    """Memorization with each single head bypassed: one row per (head, sequence).

    Columns ``config`` (``L{l}H{h}``), ``layer``, ``head``, then those of
    ``interp.memorization.evaluate`` (same values, computed cheaply; see the module docstring).
    """
    validate_for_model(np.asarray(rows), prefix_len, model)
    tokens = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    H = int(model.cfg.n_heads)
    layers = range(int(model.cfg.n_layers)) if layers is None else layers
    configs, stats = [], []
    for layer in tqdm(list(layers), desc="head bypass", disable=not progress, leave=False):
        AttentionBypass(layer).hooks(model)  # validates the layer
        stats += every_head_tf_stats(model, tokens, prefix_len, layer, batch_size=batch_size)
        configs += [(layer, h) for h in range(H)]
    gens = every_head_greedy(model, tokens, prefix_len, configs, stats, batch_size=batch_size)
    frames = [
        metrics_frame(gen, tf, tokens[:, prefix_len:], n_samples).assign(config=sites.head_label(l, h), layer=l, head=h)
        for (l, h), tf, gen in zip(configs, stats, gens)
    ]
    out = pd.concat(frames, ignore_index=True)
    return out[["config", "layer", "head", *[c for c in out.columns if c not in ("config", "layer", "head")]]]


# ---------------------------------------------------------------- rankings


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


def rank_by_effect(effects: pd.DataFrame, method: str, *, value: str = "normalized") -> pd.DataFrame:
    """Rank per-head (or per-block) effects: ``effects`` has ``component`` and ``value``."""
    return rank(effects.rename(columns={value: "score"})[["component", "score"]], method)


# ---------------------------------------------------------------- ground truth


def injected_component(model_dir: str | Path) -> str | None:
    """The ``injected_component`` recorded in ``manifest.json`` of an injected organism, or None."""
    path = Path(model_dir) / "manifest.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("injected_component")


def _coarsen(label: str, to_blocks: bool) -> str:
    layer, head = sites.parse_component(label)
    return sites.block_label(layer) if to_blocks or head is None else label


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
