"""Mitigation search: the set of heads and blocks whose bypass removes the most memorization
within a budget on general ability, checked on memorized rows the search never saw
(docs/mitigation.md).

The memorized rows are split (seeded) into a *search* half and a *held-out* half, and the general
rows (text outside the memorized set) likewise. The search reads only the search halves:

1. every single component (each head, each block) is scored: the memorization it removes (the
   search rows' suffix NLL, or their greedy match length) and the general ability it costs (the
   general rows' perplexity ratio, optionally the tasks' mean accuracy drop);
2. greedy forward selection with a beam: each set in the beam is extended by every component,
   the extensions are ranked by the memorization they remove, and the best ones that stay
   within the budget form the next beam; every extension is scored exactly (its own forward
   passes), not from the single-component scores. The search stops when no extension within
   the budget removes more than the best set so far, or at ``max_size`` components.

The chosen set and the baselines (no intervention; the best single block within the budget,
the paper's choice; the top-k components of each localization ranking; random sets of the
same composition) are then measured on the held-out halves, with bootstrap intervals.

Every forward pass runs only the blocks from the set's earliest one up, starting from the
unmodified model's residual stream (``interp.reuse``): the rows are fixed, so those residuals
are computed once. The scores are the full forward's (tests compare them).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from interp import reuse, sites
from interp.data import validate_for_model
from interp.errors import InputError, check_finite
from interp.generation import batches
from interp.interventions import AttentionBypass, Intervention, ZeroAblation, apply
from interp.localize.knockout import knockout_interventions

SCHEMA = "interp-interventions"
VERSION = 1
OBJECTIVES = ("nll", "match_length")
HOWS = ("bypass", "zero")


# ---------------------------------------------------------------- component sets


def normalize(components: Sequence[str]) -> tuple[str, ...]:
    """A canonical, sorted tuple of component labels: duplicates and the heads of a block that
    is itself in the set (its bypass covers them) are dropped. Raises ``InputError`` on a label
    that is neither ``block:L`` nor ``L{l}H{h}``."""
    parsed = set()
    for c in components:
        try:
            parsed.add(sites.parse_component(c))
        except ValueError as err:
            raise InputError(str(err)) from None
    blocks = {layer for layer, head in parsed if head is None}
    keep = sorted((layer, -1 if head is None else head) for layer, head in parsed if head is None or layer not in blocks)
    return tuple(sites.block_label(layer) if head < 0 else sites.head_label(layer, head) for layer, head in keep)


def candidate_pool(model, levels: Sequence[str] = ("head", "block")) -> list[str]:
    """Every head (``L{l}H{h}``) and/or every block (``block:L``) of ``model``."""
    bad = set(levels) - {"head", "block"}
    if bad or not levels:
        raise InputError(f"levels must be a non-empty subset of ('head', 'block'); got {list(levels)}")
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    out = [sites.head_label(layer, h) for layer in range(n_layers) for h in range(n_heads)] if "head" in levels else []
    return out + ([sites.block_label(layer) for layer in range(n_layers)] if "block" in levels else [])


def split_halves(n: int, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``range(n)`` into (search, held-out) index arrays, each sorted; the
    search half gets the extra row when ``n`` is odd."""
    if n < 2:
        raise InputError(f"{what}: the search and held-out halves need at least 2 rows; got {n}")
    perm = np.random.default_rng([seed, 0x6D697469]).permutation(n)  # "miti"
    k = (n + 1) // 2
    return np.sort(perm[:k]), np.sort(perm[k:])


# ---------------------------------------------------------------- teacher-forced scoring with reuse


RESID_BUDGET = 2 * 2**30  # bytes of kept residuals per scorer (interp.memorization's KV-cache budget)


class RowScorer:
    """Per-row reductions of the logits of fixed ``rows`` under component sets. The unmodified
    pass is run once, keeping its residual stream entering the blocks in ``kept`` (every block
    when that fits ``budget`` bytes, else every k-th), and a set's pass runs only the blocks from
    the highest kept block at or below its earliest one (``interp.reuse``: the residual entering
    any block below an intervention is the unmodified one), batch by batch, so no
    ``[rows, pos, vocab]`` tensor is held. ``reduce(logits, tokens)`` maps one batch's logits
    (positions ``start`` on) and its token rows to a ``[batch, k]`` tensor."""

    def __init__(self, model, rows: np.ndarray, reduce: Callable[[Tensor, Tensor], Tensor], *, start: int = 0,
                 how: str = "bypass", batch_size: int = 32, budget: int | None = None):  # fmt: skip
        self.model, self.reduce, self.start, self.how = model, reduce, start, how
        self.tokens = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        self.slices = list(batches(len(self.tokens), batch_size))
        L = int(model.cfg.n_layers)
        per_block = self.tokens.numel() * int(model.cfg.d_model) * torch.finfo(model.cfg.dtype).bits // 8
        fits = int((RESID_BUDGET if budget is None else budget) // max(1, per_block))
        stride = 1 if fits >= L - 1 else (L - 1 + fits - 1) // fits if fits > 0 else L
        self.kept = [b for b in range(1, L) if b % stride == 0] if reuse.reusable(model) else []
        self.resid: list[dict[int, Tensor]] = []
        parts = []
        with torch.no_grad():
            for sl in self.slices:
                with reuse.capture_resid(model, self.kept) as store:
                    logits = model(self.tokens[sl].to(model.cfg.device), return_type="logits")
                self.resid.append(dict(store))
                parts.append(self._reduced(logits, sl))
        self.base = torch.cat(parts)

    def _reduced(self, logits: Tensor, sl: slice) -> Tensor:
        logits = logits[:, self.start :].float()
        check_finite(logits, "logits")
        return self.reduce(logits.cpu(), self.tokens[sl]).double()

    @torch.no_grad()
    def __call__(self, components: Sequence[str]) -> Tensor:
        """``[rows, k]``: the reduction under the removal of ``components`` (the unmodified
        model's for an empty set)."""
        if not components:
            return self.base
        ivs = knockout_interventions(list(components), self.how)
        earliest = reuse.earliest_block(self.model, ivs)
        first = max([b for b in self.kept if b <= earliest], default=0)
        parts = []
        with apply(self.model, *ivs):
            for i, sl in enumerate(self.slices):
                if first > 0:
                    logits = reuse.forward_from(self.model, self.resid[i][first], first, return_type="logits")
                else:
                    logits = self.model(self.tokens[sl].to(self.model.cfg.device), return_type="logits")
                parts.append(self._reduced(logits, sl))
        return torch.cat(parts)


def suffix_reduction(prefix_len: int, cap: float) -> Callable[[Tensor, Tensor], Tensor]:
    """Per memorized row: ``[mean suffix-token NLL clipped at cap, teacher-forced exact (0/1),
    greedy match length]``. Greedy decoding follows the true suffix exactly as long as each
    teacher-forced argmax is right, so the last two are greedy exact match and match length."""

    def reduce(logits: Tensor, tokens: Tensor) -> Tensor:
        target = tokens[:, prefix_len:]
        lp = torch.log_softmax(logits[:, : target.shape[1]].double(), -1)
        nll = -lp.gather(-1, target[..., None])[..., 0]
        right = logits[:, : target.shape[1]].argmax(-1) == target
        match = torch.where(right.all(1), target.shape[1], (~right).int().argmax(1))
        return torch.stack([nll.mean(1).clamp(max=cap), right.all(1).double(), match.double()], 1)

    return reduce


def token_nll_reduction(logits: Tensor, tokens: Tensor) -> Tensor:
    """Per general row: the mean next-token NLL over all its positions."""
    lp = torch.log_softmax(logits[:, :-1].double(), -1)
    return -lp.gather(-1, tokens[:, 1:, None])[..., 0].mean(1, keepdim=True)


# ---------------------------------------------------------------- the search


@dataclass(frozen=True)
class Budget:
    """What the chosen set may cost, on the general rows' search half: ``ppl``, the largest
    relative increase of their perplexity (0.05 = +5%); ``acc``, the largest drop in mean accuracy
    over the tasks (absolute, e.g. 0.02). None leaves that score unbounded."""

    ppl: float | None = 0.05
    acc: float | None = None

    def __post_init__(self):
        if self.ppl is None and self.acc is None:
            raise InputError("a budget needs a perplexity bound, an accuracy bound, or both")
        for name, v in (("ppl", self.ppl), ("acc", self.acc)):
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise InputError(f"budget {name} must be a finite number >= 0; got {v}")


@dataclass
class SearchResult:
    """The search's outcome. ``scores``: every set evaluated on the search halves (``step`` 0 is
    the single-component sweep, ``step`` >= 1 the beam's extensions; columns ``set`` (labels
    joined by ``+``), ``n_components``, ``removed`` (the objective: higher = more memorization
    removed), ``nll``, ``exact_match``, ``match_length``, ``ppl_ratio``, ``acc_drop``,
    ``feasible``, ``in_beam``). ``chosen``: the best feasible set."""

    chosen: tuple[str, ...]
    scores: pd.DataFrame
    settings: dict
    split: dict[str, list[int]]
    baselines: dict[str, tuple[str, ...] | None] = field(default_factory=dict)  # None: no such set (no block within the budget)


class _Evaluator:
    """Search-half scores of component sets, cached by set."""

    def __init__(self, model, rows, prefix_len, general_rows, tasks, how, batch_size, objective):
        V = int(model.cfg.d_vocab)
        self.model, self.tasks, self.how, self.batch_size, self.objective = model, tasks, how, batch_size, objective
        self.mem = RowScorer(model, rows, suffix_reduction(prefix_len, math.log(V)), start=prefix_len - 1, how=how, batch_size=batch_size)
        self.gen = RowScorer(model, general_rows, token_nll_reduction, how=how, batch_size=batch_size)
        self._mem: dict[tuple[str, ...], dict] = {}
        self._ppl: dict[tuple[str, ...], float] = {}
        self._acc: dict[tuple[str, ...], float] = {}
        self.acc0 = self._accuracy(()) if tasks else None

    def memorization(self, s: tuple[str, ...]) -> dict:
        if s not in self._mem:
            r = self.mem(s)
            nll, exact, match = (float(v) for v in r.mean(0))
            removed = nll if self.objective == "nll" else -match
            self._mem[s] = {"removed": removed, "nll": nll, "exact_match": exact, "match_length": match}
        return self._mem[s]

    def ppl_ratio(self, s: tuple[str, ...]) -> float:
        if s not in self._ppl:
            self._ppl[s] = float(torch.exp(self.gen(s).mean() - self.gen(()).mean()))
        return self._ppl[s]

    def _accuracy(self, s: tuple[str, ...]) -> float:
        from interp.benchmarks import evaluate_task

        ivs = knockout_interventions(list(s), self.how) if s else []
        return float(np.mean([evaluate_task(self.model, t, ivs, batch_size=self.batch_size, progress=False)["acc"] for t in self.tasks]))

    def acc_drop(self, s: tuple[str, ...]) -> float | None:
        if not self.tasks:
            return None
        if s not in self._acc:
            self._acc[s] = self.acc0 - self._accuracy(s)
        return self._acc[s]

    def feasible(self, s: tuple[str, ...], budget: Budget) -> bool:
        """Within the budget (perplexity checked first: it is the cheaper score)."""
        if budget.ppl is not None and self.ppl_ratio(s) > 1 + budget.ppl:
            return False
        return budget.acc is None or not self.tasks or self.acc_drop(s) <= budget.acc

    def record(self, s: tuple[str, ...], step: int, feasible: bool | None, in_beam: bool) -> dict:
        return {"step": step, "set": "+".join(s) or "none", "n_components": len(s), **self.memorization(s),
                "ppl_ratio": self._ppl.get(s, math.nan), "acc_drop": self._acc.get(s, math.nan) if self.tasks else math.nan,
                "feasible": feasible, "in_beam": in_beam}  # fmt: skip


def search(
    model,
    rows: np.ndarray,
    prefix_len: int,
    general_rows: np.ndarray,
    *,
    budget: Budget = Budget(),
    tasks: Sequence = (),
    how: str = "bypass",
    levels: Sequence[str] = ("head", "block"),
    objective: str = "nll",
    beam: int = 3,
    max_size: int = 8,
    max_checks: int = 12,
    n_random: int = 5,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> SearchResult:
    """Split ``rows`` (memorized) and ``general_rows`` (general text) into seeded search and
    held-out halves and search the search halves (module docstring). ``tasks`` (with
    ``budget.acc``) are split item by item into halves the same way. ``max_checks`` bounds the
    budget checks per beam step (extensions are checked in order of memorization removed);
    ``n_random`` random sets of the chosen set's composition are drawn as the null.
    Returns the chosen set, every score and the baselines' sets; ``report`` measures them on the
    held-out halves."""
    if how not in HOWS:
        raise InputError(f"how must be one of {HOWS}; got {how!r}")
    if objective not in OBJECTIVES:
        raise InputError(f"objective must be one of {OBJECTIVES}; got {objective!r}")
    for name, v in (("beam", beam), ("max_size", max_size), ("max_checks", max_checks)):
        if not (isinstance(v, int) and v >= 1):
            raise InputError(f"{name} must be a positive integer; got {v!r}")
    if budget.acc is not None and not tasks:
        raise InputError("an accuracy budget needs tasks to measure accuracy on")
    rows, general_rows = np.asarray(rows), np.asarray(general_rows)
    validate_for_model(rows, prefix_len, model)
    if general_rows.ndim != 2 or general_rows.shape[1] < 2:
        raise InputError(f"general rows must be a 2-D array of token rows of length >= 2; got shape {general_rows.shape}")
    validate_for_model(general_rows, 1, model)
    mem_s, mem_h = split_halves(len(rows), seed, "memorized rows")
    gen_s, gen_h = split_halves(len(general_rows), seed + 1, "general rows")
    task_halves = [_task_halves(t, seed) for t in tasks]
    pool = candidate_pool(model, levels)
    ev = _Evaluator(model, rows[mem_s], prefix_len, general_rows[gen_s], [a for a, _ in task_halves], how, batch_size, objective)
    base = ev.memorization(())
    if base["exact_match"] == 0:
        raise InputError("the unmodified model reproduces none of the search half's rows exactly: there is no memorization to remove")
    ev.ppl_ratio(())  # 1 by definition; recorded so the "none" row reads as the others
    if tasks:
        ev.acc_drop(())
    records = [ev.record((), 0, True, False)]
    bar = tqdm(total=len(pool) + max_size, desc="mitigation search", disable=not progress)
    for c in pool:  # the single-component sweep: every score, for the rankings and the baselines
        s = (c,)
        ev.memorization(s)
        ev.ppl_ratio(s)
        if tasks:
            ev.acc_drop(s)
        records.append(ev.record(s, 0, ev.feasible(s, budget), False))
        bar.update()
    # Extensions use only components within the budget on their own: a component whose removal
    # alone costs more than the budget is not expected to cost less beside others (costs add
    # roughly), and pruning it keeps a beam step to a few dozen exact evaluations.
    usable = [c for c in pool if ev.feasible((c,), budget)]
    best, current, path = (), [()], []
    for step in range(1, max_size + 1):
        exts = [e for e in {normalize((*s, c)) for s in current for c in usable} if len(e) == step]  # a head added to its own bypassed block changes nothing
        exts.sort(key=lambda e: (-ev.memorization(e)["removed"], e))
        checked: dict[tuple[str, ...], bool] = {}
        for e in exts:
            if sum(checked.values()) == beam or len(checked) == max_checks:
                break
            checked[e] = ev.feasible(e, budget)
        nxt = [e for e, ok in checked.items() if ok]
        stop = not nxt or ev.memorization(nxt[0])["removed"] <= ev.memorization(best)["removed"]
        records += [ev.record(e, step, checked.get(e), e in nxt and not stop) for e in exts]
        bar.update()
        if stop:
            break  # nothing within the budget removes more than the best set so far
        best, current = nxt[0], nxt
        path.append(best)
    bar.close()
    scores = pd.DataFrame.from_records(records)
    settings = {"budget": asdict(budget), "how": how, "levels": list(levels), "objective": objective, "beam": beam,
                "max_size": max_size, "max_checks": max_checks, "seed": seed, "prefix_len": prefix_len,
                "tasks": [t.name for t in tasks]}  # fmt: skip
    split = {"search": mem_s.tolist(), "heldout": mem_h.tolist(), "general_search": gen_s.tolist(), "general_heldout": gen_h.tolist()}
    result = SearchResult(chosen=best, scores=scores, settings=settings, split=split)
    steps = {f"search step {i + 1}": p for i, p in enumerate(path[:-1])}  # the greedy path, for the figure's front
    result.baselines = {"none": ()} | steps | _baselines(model, ev, scores, best, pool, budget, rows[mem_s], prefix_len, n_random, seed, batch_size)
    return result


def _task_halves(task, seed: int):
    from interp.benchmarks import Task

    if len(task.items) < 2:
        raise InputError(f"task {task.name!r} needs at least 2 items to split into search and held-out halves")
    s, h = split_halves(len(task.items), seed + 2, f"task {task.name!r}")
    return (Task(task.name, tuple(task.items[i] for i in s), task.kind), Task(task.name, tuple(task.items[i] for i in h), task.kind))


def _baselines(model, ev: _Evaluator, scores: pd.DataFrame, chosen, pool, budget, search_rows, prefix_len, n_random, seed,
               batch_size) -> dict[str, tuple[str, ...] | None]:  # fmt: skip
    """The sets the chosen one is compared with (docs/mitigation.md)."""
    single = scores[(scores.step == 0) & (scores.n_components == 1)].set_index("set")
    base = ev.memorization(())
    k = max(1, len(chosen))
    out: dict[str, tuple[str, ...] | None] = {"search": tuple(chosen)}
    blocks = single[single.index.str.startswith("block:")]
    if len(blocks):  # the paper's choice: the block whose bypass removes the most (within the budget, and at any cost)
        within = blocks[blocks.feasible.astype(bool)]
        out["best block within budget"] = (str(within.removed.idxmax()),) if len(within) else None
        out["best block at any cost"] = (str(blocks.removed.idxmax()),)
    heads = single[~single.index.str.startswith("block:")]
    out[f"top-{k} bypass effect"] = _top_k(single.removed, k)
    gen_cost = np.log(single.ppl_ratio)  # the general rows' mean token NLL increase, nats
    out[f"top-{k} selectivity"] = _top_k((single.nll - base["nll"]) - gen_cost, k)
    if len(heads):
        from interp.attribution import direct_logit_attribution

        dla = direct_logit_attribution(model, search_rows, prefix_len, batch_size=batch_size).set_index("component").dla
        out[f"top-{min(k, len(heads))} dla heads"] = _top_k(dla, k)
    n_blocks = sum(c.startswith("block:") for c in chosen)
    for i in range(n_random):  # the null: random sets with the chosen set's numbers of heads and blocks
        rng = random.Random(f"mitigation-random:{seed}:{i}")
        pick = rng.sample([c for c in pool if c.startswith("block:")], n_blocks) if n_blocks else []
        free = [c for c in pool if not c.startswith("block:") and sites.block_label(sites.parse_component(c)[0]) not in pick]
        pick += rng.sample(free, min(len(free), len(chosen) - n_blocks))
        out[f"random {i}"] = normalize(pick)
    return {name: None if s is None else normalize(s) for name, s in out.items()}


def _top_k(score: pd.Series, k: int) -> tuple[str, ...]:
    """The k best components by ``score`` (index: labels), skipping one that a block already
    taken covers, so the set has k members."""
    out: tuple[str, ...] = ()
    for c in score.sort_values(ascending=False, kind="stable").index:
        grown = normalize((*out, c))
        if len(grown) > len(out):
            out = grown
        if len(out) == k:
            break
    return out


# ---------------------------------------------------------------- the held-out report


def report(model, result: SearchResult, rows: np.ndarray, prefix_len: int, general_rows: np.ndarray, *, tasks: Sequence = (),
           n_boot: int = 1000, batch_size: int = 32, progress: bool = True) -> pd.DataFrame:  # fmt: skip
    """Each of ``result``'s sets (the chosen one and the baselines) on the held-out halves: one row
    per set with greedy exact match, token accuracy, extraction log-probability and suffix NLL
    (``interp.memorization.evaluate``; means and 95% bootstrap intervals over rows), the held-out
    general rows' perplexity ratio (paired bootstrap over rows), and with ``tasks`` the mean
    accuracy drop on the tasks' held-out items."""
    from interp.memorization import evaluate_many

    how = result.settings["how"]
    held = np.asarray(rows)[result.split["heldout"]]
    general = np.asarray(general_rows)[result.split["general_heldout"]]
    sets = {name: s for name, s in result.baselines.items()}
    unique = {s: knockout_interventions(list(s), how) if s else [] for s in set(sets.values()) if s is not None}
    key = {s: f"set{i}" for i, s in enumerate(unique)}
    frames = evaluate_many(model, held, prefix_len, {key[s]: ivs for s, ivs in unique.items()}, batch_size=batch_size, progress=progress)
    gen = RowScorer(model, general, token_nll_reduction, how=how, batch_size=batch_size)
    nll0 = gen(()).numpy()[:, 0]
    halves = [_task_halves(t, result.settings["seed"])[1] for t in tasks]
    acc0 = _mean_acc(model, halves, [], batch_size) if tasks else None
    rng = np.random.default_rng(result.settings["seed"])
    boot = rng.integers(0, len(nll0), size=(n_boot, len(nll0)))
    records = []
    for name, s in tqdm(sets.items(), desc="held-out report", disable=not progress):
        if s is None:  # e.g. no block within the budget: a row that says so, with no numbers
            records.append({"method": name, "set": "(none within the budget)", "n_components": 0, "n_rows": 0})
            continue
        df = frames[key[s]]
        rec = {"method": name, "set": "+".join(s) or "none", "n_components": len(s), "n_rows": len(df)}
        for m in ("exact_match", "token_accuracy", "extraction_logprob", "suffix_nll"):
            v = df[m].to_numpy(float)
            means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
            rec |= {m: float(v.mean()), f"{m}_low": float(np.quantile(means, 0.025)), f"{m}_high": float(np.quantile(means, 0.975))}
        nll = gen(s).numpy()[:, 0] if s else nll0
        d = nll - nll0
        ratios = np.exp(d[boot].mean(1))
        rec |= {"ppl_ratio": float(np.exp(d.mean())), "ppl_ratio_low": float(np.quantile(ratios, 0.025)),
                "ppl_ratio_high": float(np.quantile(ratios, 0.975))}  # fmt: skip
        if tasks:
            rec["acc_drop"] = acc0 - _mean_acc(model, halves, knockout_interventions(list(s), how) if s else [], batch_size)
        records.append(rec)
    return pd.DataFrame.from_records(records)


def _mean_acc(model, tasks, ivs, batch_size) -> float:
    from interp.benchmarks import evaluate_task

    return float(np.mean([evaluate_task(model, t, ivs, batch_size=batch_size, progress=False)["acc"] for t in tasks]))


# ---------------------------------------------------------------- the exported file


def intervention_specs(interventions: Sequence[Intervention]) -> list[dict]:
    """JSON-ready records of bypass and zero-ablation interventions."""
    out = []
    for iv in interventions:
        if type(iv) not in (AttentionBypass, ZeroAblation):
            raise InputError(f"only AttentionBypass and ZeroAblation can be exported; got {type(iv).__name__}")
        out.append({"type": type(iv).__name__, "layers": list(iv.layers), "heads": None if iv.heads is None else list(iv.heads)})
    return out


def export(path: str | Path, model, result: SearchResult, table: pd.DataFrame | None = None, *, name: str = "mitigation",
           extra: dict | None = None, weights_sha256: str | None = None) -> Path:  # fmt: skip
    """Write the chosen set as a versioned interventions file (docs/mitigation.md), with the
    model's weight fingerprint, the search's settings and split, and (``table``) its held-out
    numbers."""
    from interp import __version__
    from interp.fingerprint import model_weights_sha256
    from interp.models import model_name
    from interp.results import write_json

    how = result.settings["how"]
    ivs = knockout_interventions(list(result.chosen), how) if result.chosen else []
    heldout = None
    if table is not None:
        heldout = {r["method"]: {k: _plain(v) for k, v in r.items() if k != "method"} for r in table.to_dict("records")}
    doc = {
        "schema": SCHEMA,
        "version": VERSION,
        "name": name,
        "model": {"name": model_name(model), "weights_sha256": weights_sha256 or model_weights_sha256(model),
                  "n_layers": int(model.cfg.n_layers), "n_heads": int(model.cfg.n_heads)},
        "how": how,
        "components": list(result.chosen),
        "interventions": intervention_specs(ivs),
        "search": {**result.settings, "split": result.split,
                   "baselines": {k: None if v is None else list(v) for k, v in result.baselines.items()}},
        "heldout": heldout,
        "made_by": {"interp_version": __version__, **(extra or {})},
    }  # fmt: skip
    return write_json(doc, path)


def _plain(v):
    """A JSON value: numpy scalars as Python numbers, NaN as null."""
    v = v.item() if isinstance(v, np.generic) else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


_TYPES = {"AttentionBypass": AttentionBypass, "ZeroAblation": ZeroAblation}


def load_interventions(path: str | Path, model=None) -> list[Intervention]:
    """The interventions of a file written by ``export`` (or by hand in its schema). With
    ``model``, the file must have been made for these weights (its ``weights_sha256``) and its
    components must exist in the model; otherwise ``InputError`` says why in one sentence."""
    doc = read_interventions_file(path)
    ivs = [_TYPES[spec["type"]](spec["layers"], spec["heads"]) for spec in doc["interventions"]]
    if model is not None:
        from interp.fingerprint import model_weights_sha256

        want, have = doc["model"]["weights_sha256"], model_weights_sha256(model)
        if want != have:
            raise InputError(f"{path} was made for another model ({doc['model'].get('name', '?')}, weights sha256 {want[:12]}...), "
                             f"not these weights (sha256 {have[:12]}...)")  # fmt: skip
        for iv in ivs:
            iv.hooks(model)  # validates layers and heads against the model
    return ivs


def read_interventions_file(path: str | Path) -> dict:
    """The file's JSON after checking its schema, version and intervention records."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"interventions file {str(path)!r} does not exist") from None
    except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError; so are over-long integers
        raise InputError(f"interventions file {str(path)!r} is not JSON (or nests or numbers beyond what can be read)") from None
    except IsADirectoryError:
        raise InputError(f"interventions file {str(path)!r} is a folder, not a file") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise InputError(f"{path} is not an interventions file (its 'schema' is not {SCHEMA!r})")
    if doc.get("version") != VERSION:
        raise InputError(f"{path} has interventions format version {doc.get('version')!r}; this interp reads version {VERSION}")
    model = doc.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("weights_sha256"), str):
        raise InputError(f"{path} names no model weights (model.weights_sha256)")
    specs = doc.get("interventions")
    if not isinstance(specs, list):
        raise InputError(f"{path}: 'interventions' must be a list")
    for i, spec in enumerate(specs):
        ok = (isinstance(spec, dict) and spec.get("type") in _TYPES and isinstance(spec.get("layers"), list) and spec["layers"]
              and all(type(x) is int for x in spec["layers"])
              and (spec.get("heads") is None or (isinstance(spec["heads"], list) and spec["heads"] and all(type(x) is int for x in spec["heads"]))))  # fmt: skip
        if not ok:
            raise InputError(f"{path}: intervention {i} must be {{'type': one of {sorted(_TYPES)}, 'layers': [int, ...], "
                             f"'heads': [int, ...] or null}}; got {spec!r}")  # fmt: skip
    return doc
