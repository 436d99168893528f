"""Activation patching on memorized sequences, following Zhang and Nanda, "Towards Best Practices
of Activation Patching in Language Models: Metrics and Methods" (ICLR 2024, arXiv 2309.16042),
and Meng et al. (2022) / Wang et al. (2023) for the clean/corrupted set-up.

Runs. A row is ``prefix (P tokens) + suffix (T tokens)`` and the model reads ``row[:-1]``, so
the logits at positions ``P-1 .. P+T-2`` score the suffix teacher-forced. The *clean* run reads
the memorized row; the *corrupted* run reads the same row with ``n_corrupt`` prefix tokens
replaced (``corrupt_prefix``: a seeded policy documented there). The suffix is never changed, so
both runs score the same tokens.

Metrics (per sequence, then averaged over sequences before normalizing, as Zhang and Nanda
advise, so small per-sequence denominators cannot blow up):

- ``suffix_logprob``: sum over the T suffix positions of log p(true suffix token) (nats);
- ``logit_diff``: mean over suffix positions of ``logit[true token] - logit[foil]``, where the
  foil is the corrupted run's top prediction at that position among tokens other than the true
  one (fixed once from the unpatched corrupted run).

Directions. *Denoising* patches a clean activation into the corrupted run (is this component
sufficient to restore memorization?); *noising* patches a corrupted activation into the clean
run (is it necessary?). Both are normalized so that 1 means "this activation alone carries the
whole clean-corrupted difference" and 0 means "no effect":

    denoising:  (patched - corrupted) / (clean - corrupted)
    noising:    (clean - patched)     / (clean - corrupted)

Sites: the residual stream before each block (``resid_pre``), the attention and MLP outputs
(``attn_out``, ``mlp_out``) per (layer, position), and each head's ``z`` over all positions
(``head``). The engine replicates the base batch once per patched cell so many cells share one
forward pass; ``transformer_lens.patching.get_act_patch_*`` runs on the bridge for both
families and is used in the tests as an independent cross-check (it runs one forward per cell
and cannot hide its progress bar). Attention-pattern patching is not offered: on GPT-Neo the
bridge discards edits at ``hook_pattern``, so ``get_act_patch_attn_head_pattern_*`` returns
exactly the unpatched corrupted metric there (with only a warning).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.errors import check_finite
from interp import sites
from interp.data import validate_for_model

log = logging.getLogger(__name__)

SITES = ("resid_pre", "attn_out", "mlp_out", "head")
DIRECTIONS = ("denoising", "noising")
PATCH_METRICS = ("suffix_logprob", "logit_diff")


def corrupt_prefix(
    rows: Int[Tensor, "batch row"] | np.ndarray,
    prefix_len: int,
    n_corrupt: int,
    vocab_size: int,
    *,
    seed: int = 0,
) -> Int[Tensor, "batch row"]:
    """Corrupted copy of ``rows``: in each row, ``n_corrupt`` distinct prefix positions chosen
    uniformly at random get a token id drawn uniformly from ``0..vocab_size-1`` other than the
    original. Every replacement is one token id, so lengths and positions are unchanged; the
    suffix is untouched. Seeded (``torch.Generator``), so the same inputs give the same output.
    """
    rows = torch.as_tensor(rows, dtype=torch.long)
    if not 1 <= n_corrupt <= prefix_len:
        raise ValueError(f"n_corrupt must be within 1..prefix_len ({prefix_len}); got {n_corrupt}")
    gen = torch.Generator().manual_seed(seed)
    out = rows.clone()
    for i in range(len(rows)):
        positions = torch.randperm(prefix_len, generator=gen)[:n_corrupt]
        shift = torch.randint(1, vocab_size, (n_corrupt,), generator=gen)  # never 0: always a new id
        out[i, positions] = (rows[i, positions] + shift) % vocab_size
    return out


def default_n_corrupt(prefix_len: int) -> int:
    """A quarter of the prefix, at least one token."""
    return max(1, prefix_len // 4)


@dataclass(frozen=True)
class SuffixTarget:
    """What the patching metrics score: the true suffix and, per suffix position, the foil."""

    prefix_len: int
    suffix: Int[Tensor, "batch T"]
    foil: Int[Tensor, "batch T"]


def suffix_positions(logits: Float[Tensor, "batch pos vocab"], target: SuffixTarget) -> Tensor:
    T = target.suffix.shape[1]
    return logits[:, target.prefix_len - 1 : target.prefix_len - 1 + T].double()


def suffix_logprob(logits: Float[Tensor, "batch pos vocab"], target: SuffixTarget) -> Float[Tensor, " batch"]:
    """Sum over suffix positions of log p(true token), nats."""
    logp = torch.log_softmax(suffix_positions(logits, target), dim=-1)
    return logp.gather(-1, target.suffix[..., None].to(logp.device)).squeeze(-1).sum(-1)


def logit_diff(logits: Float[Tensor, "batch pos vocab"], target: SuffixTarget) -> Float[Tensor, " batch"]:
    """Mean over suffix positions of logit(true token) - logit(foil)."""
    lg = suffix_positions(logits, target)
    true = lg.gather(-1, target.suffix[..., None].to(lg.device)).squeeze(-1)
    foil = lg.gather(-1, target.foil[..., None].to(lg.device)).squeeze(-1)
    return (true - foil).mean(-1)


METRIC_FNS = {"suffix_logprob": suffix_logprob, "logit_diff": logit_diff}


def all_metrics(logits: Float[Tensor, "batch pos vocab"], target: SuffixTarget) -> dict[str, Tensor]:
    return {name: fn(logits, target) for name, fn in METRIC_FNS.items()}


def make_target(corrupted_logits: Float[Tensor, "batch pos vocab"], rows: Tensor, prefix_len: int) -> SuffixTarget:
    """Foils = the corrupted run's top prediction at each suffix position, excluding the true token."""
    suffix = rows[:, prefix_len:]
    tmp = SuffixTarget(prefix_len, suffix, suffix)
    lg = suffix_positions(corrupted_logits, tmp).clone()
    lg.scatter_(-1, suffix[..., None].to(lg.device), float("-inf"))
    return SuffixTarget(prefix_len, suffix, lg.argmax(-1).cpu())


def site_hook_name(site: str, layer: int) -> str:
    if site == "head":
        return sites.z(layer)
    return {"resid_pre": sites.resid_pre, "attn_out": sites.attn_out, "mlp_out": sites.mlp_out}[site](layer)


def normalize(patched: float, clean: float, corrupted: float, direction: str) -> float:
    """Zhang and Nanda's normalized effect, oriented so that 1 = the whole clean/corrupted gap."""
    gap = clean - corrupted
    if gap == 0:
        return float("nan")
    return (patched - corrupted) / gap if direction == "denoising" else (clean - patched) / gap


@dataclass(frozen=True)
class Runs:
    """Clean and corrupted inputs (``row[:-1]``), the scoring target, and unpatched metric means."""

    clean: Int[Tensor, "batch pos"]
    corrupted: Int[Tensor, "batch pos"]
    target: SuffixTarget
    clean_metrics: dict[str, float]
    corrupted_metrics: dict[str, float]


@torch.no_grad()
def prepare_runs(
    model, rows, prefix_len: int, *, n_corrupt: int | None = None, seed: int = 0, batch_size: int = 64
) -> Runs:
    """Build the corrupted rows, the foils, and the unpatched clean/corrupted metric means."""
    rows_np = np.asarray(rows)
    validate_for_model(rows_np, prefix_len, model)
    rows_t = torch.as_tensor(rows_np, dtype=torch.long)
    n_corrupt = n_corrupt or default_n_corrupt(prefix_len)
    vocab = min(int(model.cfg.d_vocab), len(model.tokenizer)) if model.tokenizer is not None else int(model.cfg.d_vocab)
    corrupted_rows = corrupt_prefix(rows_t, prefix_len, n_corrupt, vocab, seed=seed)
    clean, corrupted = rows_t[:, :-1], corrupted_rows[:, :-1]
    device = model.cfg.device
    foils, sums = [], {"clean": dict.fromkeys(PATCH_METRICS, 0.0), "corrupted": dict.fromkeys(PATCH_METRICS, 0.0)}
    for sl in _row_slices(len(rows_t), batch_size):
        corrupted_logits = model(corrupted[sl].to(device), return_type="logits")
        check_finite(corrupted_logits, "logits on the corrupted rows")
        target = make_target(corrupted_logits, rows_t[sl], prefix_len)
        foils.append(target.foil)
        for run, logits in (("clean", model(clean[sl].to(device), return_type="logits")), ("corrupted", corrupted_logits)):
            check_finite(logits, f"logits on the {run} rows")
            for k, v in all_metrics(logits, target).items():
                sums[run][k] += float(v.sum())
    target = SuffixTarget(prefix_len, rows_t[:, prefix_len:], torch.cat(foils))
    n = len(rows_t)
    means = {run: {k: v / n for k, v in d.items()} for run, d in sums.items()}
    return Runs(clean, corrupted, target, means["clean"], means["corrupted"])


def _row_slices(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, max(1, batch_size))]


def _cells(site: str, layer: int, n_pos: int, n_heads: int) -> list[tuple[int, int | None, int | None]]:
    """(layer, head, position) cells of one site at one layer."""
    if site == "head":
        return [(layer, h, None) for h in range(n_heads)]
    return [(layer, None, p) for p in range(n_pos)]


def _patch_hook(cells: Sequence[tuple], source: Tensor, n: int):
    """Hook for a batch replicated ``len(cells)`` times: chunk k gets cell k from ``source``."""

    def fn(act: Tensor, hook) -> Tensor:
        act = act.clone()
        view = act.view(len(cells), n, *act.shape[1:])
        src = source.to(act)
        for k, (_, head, pos) in enumerate(cells):
            if head is not None:
                view[k, :, :, head] = src[:, :, head]
            else:
                view[k, :, pos] = src[:, pos]
        return act

    return fn


@torch.no_grad()
def _patched_sums(model, base: Tensor, source: Tensor, name: str, cells, target: SuffixTarget) -> dict[str, Tensor]:
    """Metric sums over rows per cell, ``{metric: [len(cells)]}``, from one forward pass of
    ``base`` replicated once per cell."""
    n = base.shape[0]
    tokens = base.repeat(len(cells), 1).to(model.cfg.device)
    logits = model.run_with_hooks(tokens, fwd_hooks=[(name, _patch_hook(cells, source, n))])
    big = SuffixTarget(target.prefix_len, target.suffix.repeat(len(cells), 1), target.foil.repeat(len(cells), 1))
    return {k: v.view(len(cells), n).sum(1).cpu() for k, v in all_metrics(logits, big).items()}


def patch(
    model,
    rows,
    prefix_len: int,
    *,
    sites_: Sequence[str] = SITES,
    directions: Sequence[str] = DIRECTIONS,
    layers: Sequence[int] | None = None,
    n_corrupt: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    runs: Runs | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Exact activation patching; one tidy row per (direction, site, cell, metric).

    Columns: ``direction, site, layer, head, position, component, metric, value, clean,
    corrupted, normalized``. ``value`` is the patched metric's mean over sequences; ``head`` is
    NA except for ``site == "head"``, whose ``position`` is NA (all positions patched).
    ``component`` is ``L{l}H{h}`` for heads and ``block:L`` otherwise. ``batch_size`` bounds
    the rows of one forward pass (sequences x cells; sequences are chunked when they alone
    exceed it).
    """
    runs = runs or prepare_runs(model, rows, prefix_len, n_corrupt=n_corrupt, seed=seed, batch_size=batch_size)
    _check_choices(sites_, SITES, "site")
    _check_choices(directions, DIRECTIONS, "direction")
    layers = list(range(int(model.cfg.n_layers))) if layers is None else list(layers)
    n_pos = runs.clean.shape[1]
    jobs = [(d, s, l) for d in directions for s in sites_ for l in layers]
    records = []
    for direction, site, layer in tqdm(jobs, desc="patching", disable=not progress, leave=False):
        records.extend(_patch_layer(model, runs, direction, site, layer, n_pos, batch_size))
    return pd.DataFrame.from_records(records).astype({"head": "Int64", "position": "Int64"})


def _check_choices(given: Sequence[str], allowed: Sequence[str], what: str) -> None:
    bad = [g for g in given if g not in allowed]
    if bad:
        raise ValueError(f"unknown {what}(s) {bad}; expected any of {list(allowed)}")


def _patch_layer(model, runs: Runs, direction: str, site: str, layer: int, n_pos: int, batch_size: int) -> list[dict]:
    base, src_tokens = (runs.corrupted, runs.clean) if direction == "denoising" else (runs.clean, runs.corrupted)
    name = site_hook_name(site, layer)
    cells = _cells(site, layer, n_pos, int(model.cfg.n_heads))
    sums = {m: torch.zeros(len(cells), dtype=torch.float64) for m in PATCH_METRICS}
    for rs in _row_slices(len(base), batch_size):
        _, cache = model.run_with_cache(src_tokens[rs].to(model.cfg.device), names_filter=lambda x: x == name)
        target = SuffixTarget(runs.target.prefix_len, runs.target.suffix[rs], runs.target.foil[rs])
        per_pass = max(1, batch_size // len(base[rs]))
        for start in range(0, len(cells), per_pass):
            part = _patched_sums(model, base[rs], cache[name], name, cells[start : start + per_pass], target)
            for m in PATCH_METRICS:
                sums[m][start : start + per_pass] += part[m].double()
    out = []
    for k, (l, head, pos) in enumerate(cells):
        comp = sites.head_label(l, head) if head is not None else sites.block_label(l)
        for metric in PATCH_METRICS:
            clean, corr = runs.clean_metrics[metric], runs.corrupted_metrics[metric]
            v = float(sums[metric][k]) / len(base)
            out.append(dict(direction=direction, site=site, layer=l, head=head, position=pos, component=comp,
                            metric=metric, value=v, clean=clean, corrupted=corr,
                            normalized=normalize(v, clean, corr, direction)))  # fmt: skip
    return out
