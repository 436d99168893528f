"""Memorization under interventions and the per-block bypass sweep of Menta et al. (NAACL 2025).

``evaluate`` scores one configuration (a list of interventions) on a memorized set,
``evaluate_many`` several at once (the same numbers, with one joint decode); ``sweep`` runs the
unmodified model (``baseline``) and every requested block bypassed (``block:L``) through
``evaluate_many``, and returns one tidy row per (config, sequence). ``summarize`` gives the
mean and a 95% percentile bootstrap interval of each metric per config.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicLayer

from interp import metrics, reuse, sites
from interp.data import validate_for_model
from interp.errors import InputError, check_finite
from interp.generation import batches, cached_step, concat_caches, greedy_generate
from interp.interventions import AttentionBypass, Intervention, RowGroups, apply
from interp.fingerprint import file_sha256
from interp.results import write_bytes, write_json

log = logging.getLogger(__name__)

METRICS = (
    "exact_match",
    "token_accuracy",
    "completion_entropy",
    "match_length",
    "tf_accuracy",
    "suffix_nll",
    "extraction_logprob",
)


def evaluate(
    model,
    rows: np.ndarray,
    prefix_len: int,
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 32,
    n_samples: int = 100,
    strategy: str = "shortcut",
    progress: bool = False,
) -> pd.DataFrame:
    """Per-sequence metrics of one configuration: columns ``sequence`` and ``METRICS``.

    ``extraction_logprob`` is the natural log of the probability of sampling the suffix at
    least once in ``n_samples`` draws at temperature 1.

    ``strategy="generate"`` decodes every suffix greedily (KV cache). ``"shortcut"`` (default)
    gives the same numbers faster: greedy decoding from the prefix follows the true row for as
    long as every teacher-forced argmax is right, so after one teacher-forced pass it only
    decodes the rows that diverge, from their first mismatch on. Rows where any top-2 logit
    margin up to the divergence is below ``TIE_MARGIN`` are decoded in full, so float noise
    between the teacher-forced and incremental passes cannot flip a near-tie.
    """
    if strategy not in ("shortcut", "generate"):
        raise ValueError(f"strategy must be 'shortcut' or 'generate'; got {strategy!r}")
    if strategy == "shortcut":
        return evaluate_many(model, rows, prefix_len, {"": interventions}, batch_size=batch_size, n_samples=n_samples,
                             progress=progress)[""]  # fmt: skip
    validate_for_model(rows, prefix_len, model)
    tokens = torch.as_tensor(rows, dtype=torch.long)
    suffix = tokens[:, prefix_len:]
    tf = teacher_forced_stats(model, tokens, prefix_len, interventions, batch_size=batch_size, progress=progress)
    gen = greedy_generate(model, tokens[:, :prefix_len], suffix.shape[1], interventions, batch_size=batch_size)
    return metrics_frame(gen, tf, suffix, n_samples)


TIE_MARGIN = 1e-3


@torch.no_grad()
def teacher_forced_stats(
    model,
    tokens: Int[Tensor, "batch pos"],
    prefix_len: int,
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 32,
    progress: bool = False,
) -> dict[str, Tensor]:
    """One teacher-forced pass over ``tokens``, reduced per batch so no [rows, T, vocab] tensor is
    kept: ``completion_entropy`` and ``suffix_nll`` [rows], ``argmax`` and ``margin`` (top-1 minus
    top-2 logit) [rows, T] at the T positions that score the suffix."""
    parts: dict[str, list[Tensor]] = {k: [] for k in _TF_KEYS}
    with apply(model, *interventions):
        for sl in tqdm(list(batches(len(tokens), batch_size)), desc="forward", disable=not progress, leave=False):
            stats, _ = _tf_batch(model, tokens[sl], prefix_len, keep_cache=False)
            for k in _TF_KEYS:
                parts[k].append(stats[k])
    return {k: torch.cat(v) for k, v in parts.items()}


_TF_KEYS = ("completion_entropy", "suffix_nll", "argmax", "margin")


@torch.no_grad()
def _tf_batch(
    model, tokens: Tensor, prefix_len: int, *, keep_cache: bool, start: tuple[int, Tensor, list | None] | None = None
) -> tuple[dict[str, Tensor], object]:
    """Teacher-forced statistics of one batch (hooks already installed), and the KV cache of
    the pass when ``keep_cache``. With ``start = (block, resid, lower)`` only blocks
    ``block..L-1`` run, from ``resid`` (the unmodified residual entering ``block``), and the
    cache's lower layers are ``lower`` (``interp.reuse``); the cache is None if they cannot be."""
    T = tokens.shape[1] - prefix_len
    device = model.cfg.device
    x = tokens[:, :-1].to(device)
    # logits_to_keep: only the T positions that score the suffix are unembedded
    if start is not None:
        block, resid, lower = start
        if keep_cache:
            logits, cache = reuse.forward_from(model, resid, block, return_type="logits_and_cache", use_cache=True, logits_to_keep=T)
            cache = cache if reuse.fill_lower_cache(cache, lower, block) else None
        else:
            logits, cache = reuse.forward_from(model, resid, block, return_type="logits", logits_to_keep=T), None
    elif keep_cache:
        logits, cache = model(x, return_type="logits_and_cache", use_cache=True, logits_to_keep=T)
    else:
        logits, cache = model(x, return_type="logits", logits_to_keep=T), None
    check_finite(logits, "logits in a teacher-forced pass")
    stats = metrics.teacher_forced_summary(logits, tokens[:, prefix_len:].to(device))
    return {k: v.cpu() for k, v in stats.items()}, cache


def decode_plan(suffix: Int[Tensor, "batch T"], tf: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """What teacher forcing already tells about greedy decoding: the continuation known so far,
    the position each row must be decoded from, and which rows need decoding. A row follows the
    suffix up to its first wrong argmax k (whose token is that argmax) and is decoded from k+1;
    a row with a near-tie (``TIE_MARGIN``) up to k is decoded from 0."""
    T = suffix.shape[1]
    wrong = tf["argmax"] != suffix
    first = torch.where(wrong.any(1), wrong.float().argmax(1), torch.full((len(suffix),), T))
    ambiguous = ((tf["margin"] < TIE_MARGIN) & (torch.arange(T)[None, :] <= first[:, None])).any(1)
    gen, rows, diverged = suffix.clone(), torch.arange(len(suffix)), first < T
    gen[rows[diverged], first[diverged]] = tf["argmax"][rows[diverged], first[diverged]]
    start = torch.where(ambiguous, torch.zeros_like(first), first + 1)
    return gen, start, ambiguous | (first < T - 1)


@torch.no_grad()
def forced_greedy(
    model,
    prefix: Int[Tensor, "batch prefix"],
    known: Int[Tensor, "batch T"],
    start: Int[Tensor, " batch"],
    *,
    cache=None,
) -> Int[Tensor, "batch T"]:
    """Greedy decoding of T tokens after ``prefix`` where row b's first ``start[b]`` tokens are
    given (``known[b, :start[b]]``, fed as if generated) and the rest are the model's argmax.
    Hooks already installed on ``model`` stay active. The shared part (the prefix and the
    tokens every row knows) is one cached forward pass; then one token per step.

    ``cache`` may be the KV cache of a teacher-forced pass over these rows under the same hooks
    whose tokens agree with ``prefix`` and ``known[:, :min(start) - 1]``; it is cropped and
    extended in place instead of running the shared part again."""
    T, P = known.shape[1], prefix.shape[1]
    k0 = int(start.min())
    out = known.clone()
    device = model.cfg.device
    context = torch.cat([prefix, known[:, :k0]], 1)
    if cache is not None and _crop(cache, P + k0 - 1):
        logits, cache = cached_step(model, context[:, -1:].to(device), cache)
    else:
        logits, cache = model(context.to(device), return_type="logits_and_cache", use_cache=True, logits_to_keep=1)
    for j in range(k0, T):
        pred = logits[:, -1].argmax(-1).cpu()
        out[:, j] = torch.where(start <= j, pred, known[:, j])
        if j + 1 < T:
            logits, cache = cached_step(model, out[:, j : j + 1].to(device), cache)
    return out


def _crop(cache, length: int) -> bool:
    """Cut ``cache`` to its first ``length`` positions in place; False if it cannot be cut
    (a sliding-window layer that has dropped old positions)."""
    extra = cache.get_seq_length() - length
    if extra < 0:
        return False
    if all(not getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", [])):
        cache.crop(-extra)
        return True
    return False


def metrics_frame(gen: Tensor, tf: dict[str, Tensor], suffix: Tensor, n_samples: int = 100) -> pd.DataFrame:
    """The columns of ``evaluate`` from greedy continuations and teacher-forced statistics."""
    nll = tf["suffix_nll"]
    return pd.DataFrame(
        {
            "sequence": np.arange(len(suffix)),
            "exact_match": metrics.exact_match(gen, suffix).float().numpy(),
            "token_accuracy": metrics.token_accuracy(gen, suffix).numpy(),
            "completion_entropy": tf["completion_entropy"].numpy(),
            "match_length": metrics.match_length(gen, suffix).numpy(),
            "tf_accuracy": (tf["argmax"] == suffix).float().mean(1).numpy(),
            "suffix_nll": nll.numpy(),
            "extraction_logprob": metrics.extraction_log_prob(nll, n_samples).numpy(),
        }
    )


@torch.no_grad()
def evaluate_many(
    model,
    rows: np.ndarray,
    prefix_len: int,
    configs: dict[str, Sequence[Intervention]],
    *,
    batch_size: int = 32,
    n_samples: int = 100,
    progress: bool = False,
    decode_rows: int | None = None,
) -> dict[str, pd.DataFrame]:
    """``evaluate`` (shortcut strategy) of several configurations: the same numbers, computed
    batch by batch with one teacher-forced pass per configuration, after which the rows that
    every configuration leaves open are decoded together in one batch (each row under its own
    configuration, ``RowGroups``), resuming from the concatenation of their teacher-forced
    passes' KV caches. Per row, a decode step in a batch of a few hundred rows costs about 30%
    less than in a batch of 64 (CPU, 2 threads).

    The KV caches held for a joint decode grow with its rows: up to ``len(configs) *
    batch_size`` rows, against ``batch_size`` for one configuration at a time. ``decode_rows``
    caps them: configurations are added to a joint decode while its open rows stay within
    ``decode_rows``, and the next one starts a new decode. It must be at least ``batch_size``.
    None (the default) takes as many rows as fit ``DECODE_CACHE_BUDGET`` bytes of KV cache
    (``auto_decode_rows``; on a Pythia-70m-sized model that is every config of a batch of 64
    together, on Pythia-1.4B about 80 rows). The numbers do not depend on it."""
    validate_for_model(rows, prefix_len, model)
    if decode_rows is None:
        decode_rows = auto_decode_rows(model, np.shape(rows)[1], batch_size)
    elif decode_rows < batch_size:
        raise InputError(f"decode_rows ({decode_rows}) must be at least batch_size ({batch_size}); lower batch_size to go lower")
    tokens = torch.as_tensor(rows, dtype=torch.long)
    names = list(configs)
    tf_parts: dict[str, dict[str, list[Tensor]]] = {n: {k: [] for k in _TF_KEYS} for n in names}
    gens: dict[str, list[Tensor]] = {n: [] for n in names}
    base, needs = reuse.plan(model, configs)
    order = names if base is None else [base, *[n for n in names if n != base]]
    for sl in tqdm(list(batches(len(tokens), batch_size)), desc="forward", disable=not progress, leave=False):
        batch = tokens[sl]
        plans, open_rows = {}, []
        resid, lower = {}, None
        for n in order:
            if n == base:  # the unmodified pass: keep what the others reuse below their interventions
                with reuse.capture_resid(model, sorted(set(needs.values()))) as resid:
                    stats, cache = _tf_batch(model, batch, prefix_len, keep_cache=True)
                lower = reuse.lower_layers(cache)
            else:
                start = (needs[n], resid[needs[n]], lower) if n in needs else None
                with apply(model, *configs[n]):
                    stats, cache = _tf_batch(model, batch, prefix_len, keep_cache=True, start=start)
            for k in _TF_KEYS:
                tf_parts[n][k].append(stats[k])
            plans[n] = decode_plan(batch[:, prefix_len:], stats)
            todo = plans[n][2]
            if todo.any():  # keep only the open rows' cache, up to where their decode resumes
                idx = torch.arange(len(batch))[todo]
                keep = prefix_len + int(plans[n][1][idx].min()) - 1
                for layer in getattr(cache, "layers", []):
                    if type(layer) is DynamicLayer:
                        layer.keys, layer.values = layer.keys[idx, :, :keep].clone(), layer.values[idx, :, :keep].clone()
                    else:
                        cache = None  # concat_caches cannot merge it; the decode recomputes
                        break
                if sum(len(i) for _, i, _ in open_rows) + len(idx) > decode_rows:  # full: decode what is held
                    _joint_decode(model, batch, prefix_len, configs, plans, open_rows)
                    open_rows = []
                open_rows.append((n, idx, cache))
            del cache
        if open_rows:
            _joint_decode(model, batch, prefix_len, configs, plans, open_rows)
            open_rows = []
        for n in names:
            gens[n].append(plans[n][0])
    suffix = tokens[:, prefix_len:]
    return {
        n: metrics_frame(torch.cat(gens[n]), {k: torch.cat(v) for k, v in tf_parts[n].items()}, suffix, n_samples)
        for n in names
    }


DECODE_CACHE_BUDGET = 2 * 2**30  # bytes of KV cache one joint decode may hold by default
# rows of one joint decode by default, whatever the budget: on the Pythia-70m-shaped speed
# workload (2 threads) 64 rows took 55 s at 192-row decodes, 59 s at 256 and 145 s at 384
DECODE_MAX_ROWS = 256


def auto_decode_rows(model, row_len: int, batch_size: int, budget: int | None = None) -> int:
    """The default cap on the rows of one joint decode: as many rows as fit ``budget`` bytes
    (default ``DECODE_CACHE_BUDGET``) of keys and values (every block, ``row_len`` positions, the
    model's dtype) up to ``DECODE_MAX_ROWS``, and at least ``batch_size``. The cache holds
    key/value heads, fewer than the query heads under grouped-query attention."""
    budget = DECODE_CACHE_BUDGET if budget is None else budget
    cfg = model.cfg
    kv_heads = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    bytes_per_row = 2 * cfg.n_layers * kv_heads * cfg.d_head * row_len * torch.finfo(cfg.dtype).bits // 8
    return max(batch_size, min(DECODE_MAX_ROWS, budget // bytes_per_row))


def _joint_decode(model, batch: Tensor, prefix_len: int, configs, plans: dict, open_rows: list) -> None:
    """Decode the open rows of ``open_rows`` ((config name, row indices, cropped KV cache or None)
    per configuration) in one batch, each under its own configuration, and write the results into
    ``plans``. The caches are merged into one and released."""
    sizes = [len(idx) for _, idx, _ in open_rows]
    bounds = np.cumsum([0, *sizes])
    groups = tuple((tuple(range(int(a), int(b))), tuple(configs[n])) for (n, _, _), a, b in zip(open_rows, bounds[:-1], bounds[1:]))
    known = torch.cat([plans[n][0][idx] for n, idx, _ in open_rows])
    start = torch.cat([plans[n][1][idx] for n, idx, _ in open_rows])
    prefix = torch.cat([batch[idx, :prefix_len] for _, idx, _ in open_rows])
    caches = [c for _, _, c in open_rows]
    cache = None if any(c is None for c in caches) else concat_caches(caches, capacity=batch.shape[1])
    open_rows[:] = [(n, idx, None) for n, idx, _ in open_rows]
    del caches
    with apply(model, RowGroups(groups)):
        out = forced_greedy(model, prefix, known, start, cache=cache)
    for (n, idx, _), a, b in zip(open_rows, bounds[:-1], bounds[1:]):
        plans[n][0][idx] = out[int(a) : int(b)]


def block_configs(model, blocks: Sequence[int] | None = None) -> dict[str, list[Intervention]]:
    """``{"baseline": [], "block:L": [AttentionBypass(L)], ...}`` for ``blocks`` (default: all)."""
    n = int(model.cfg.n_layers)
    blocks = range(n) if blocks is None else list(blocks)
    if len(set(blocks)) != len(blocks):
        raise InputError(f"blocks {list(blocks)} name a block more than once; a selection is a set")
    configs: dict[str, list[Intervention]] = {"baseline": []}
    for layer in blocks:
        AttentionBypass(layer).hooks(model)  # validates the block index against the model
        configs[sites.block_label(layer)] = [AttentionBypass(layer)]
    return configs


def sweep(
    model,
    rows: np.ndarray,
    prefix_len: int,
    *,
    blocks: Sequence[int] | None = None,
    configs: dict[str, list[Intervention]] | None = None,
    batch_size: int = 32,
    checkpoint: str | Path | None = None,
    chunk_rows: int = 256,
    progress: bool = True,
    decode_rows: int | None = None,
) -> pd.DataFrame:
    """Baseline plus each block bypassed (or explicit ``configs``): one row per config x sequence.
    ``decode_rows`` caps the rows of one joint decode, and with them its KV caches
    (``evaluate_many``; default: as many as fit ``DECODE_CACHE_BUDGET``).

    With ``checkpoint`` (a folder), each (config, chunk of ``chunk_rows`` rows) is saved as a
    parquet part (atomically) as soon as its chunk is done (all configs of a chunk finish
    together, ``evaluate_many``), and parts already there are reused: a sweep killed midway
    resumes without duplicating rows, losing at most the chunk in progress. The folder must
    belong to this sweep only (the CLI keys it by a hash of the sweep's settings).
    """
    validate_for_model(rows, prefix_len, model)
    configs = configs if configs is not None else block_configs(model, blocks)
    chunks = list(batches(len(rows), chunk_rows))
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in configs}
    with tqdm(total=len(configs) * len(chunks), desc="sweep", disable=not progress) as bar:
        for i, sl in enumerate(chunks):
            parts = {name: None if checkpoint is None else Path(checkpoint) / f"{name.replace(':', '_')}__{i:05d}.parquet"
                     for name in configs}  # fmt: skip
            reused = {name: _read_part(parts[name], name, sl) for name in configs if parts[name] is not None}
            todo = [name for name in configs if reused.get(name) is None]
            done = evaluate_many(model, rows[sl], prefix_len, {n: configs[n] for n in todo}, batch_size=batch_size,
                                 decode_rows=decode_rows) if todo else {}  # fmt: skip
            for name in configs:
                if name in done:
                    df = done[name].assign(sequence=done[name].sequence + sl.start, config=name)
                    if parts[name] is not None:
                        _write_part(df, parts[name], name, sl)
                else:
                    df = reused[name]
                frames[name].append(df)
                bar.update()
    out = pd.concat([df for name in configs for df in frames[name]], ignore_index=True)
    return out[["config", *[c for c in out.columns if c != "config"]]]


def _part_meta(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".parquet") + ".json")


def _write_part(df: pd.DataFrame, path: Path, config: str, sl: slice) -> None:
    """Save a finished part's record (config, row range, sha256 of the file), then the part: a
    kill between the two leaves a record without its part, which is recomputed, never a part
    without its record."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    data = buf.getvalue()
    write_json({"config": config, "rows": [sl.start, sl.stop], "sha256": hashlib.sha256(data).hexdigest()}, _part_meta(path))
    write_bytes(data, path)


def _read_part(path: Path, config: str, sl: slice) -> pd.DataFrame | None:
    """A saved part if it is whole and is the part of ``config`` over rows ``sl``; otherwise None
    (it is deleted, with a warning, and recomputed): a truncated file, a part copied over
    another, or one without its record is never reused."""
    if not path.exists():
        return None
    problem = None
    try:
        meta = json.loads(_part_meta(path).read_text())
        if meta != {"config": config, "rows": [sl.start, sl.stop], "sha256": file_sha256(path, cache={})}:
            problem = "its record does not match it (another part's file, or changed since)"
        else:
            df = pd.read_parquet(path)
            if missing := {"config", "sequence", *METRICS} - set(df.columns):
                problem = f"it lacks columns {sorted(missing)} (written by another version)"
            elif not ((df["config"] == config).all() and np.array_equal(df["sequence"].to_numpy(), np.arange(sl.start, sl.stop))):
                problem = "it holds other rows than its name says"
    except FileNotFoundError:
        problem = "its record is missing"
    except Exception as err:  # noqa: BLE001 (JSON, Arrow, OS errors: an unreadable part is recomputed)
        problem = f"it cannot be read ({type(err).__name__})"
    if problem is None:
        return df
    log.warning("discarding saved part %s: %s; recomputing it", path.name, problem)
    path.unlink(missing_ok=True)
    _part_meta(path).unlink(missing_ok=True)
    return None


def bootstrap_ci(values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def summarize(df: pd.DataFrame, *, metrics_: Sequence[str] = METRICS, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per config (in order of appearance): each metric's mean, then ``<metric>_ci_low``
    and ``<metric>_ci_high`` (95% bootstrap), and ``n_sequences``."""
    records = []
    for config, group in df.groupby("config", sort=False):
        rec: dict = {"config": config}
        for m in metrics_:
            rec[m] = float(group[m].mean())
        for m in metrics_:
            rec[f"{m}_ci_low"], rec[f"{m}_ci_high"] = bootstrap_ci(group[m].to_numpy(), n_boot=n_boot, seed=seed)
        rec["n_sequences"] = len(group)
        records.append(rec)
    return pd.DataFrame.from_records(records)
