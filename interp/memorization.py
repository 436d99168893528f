"""Memorization under interventions and the per-block bypass sweep of Menta et al. (NAACL 2025).

``evaluate`` scores one configuration (a list of interventions) on a memorized set; ``sweep``
runs the unmodified model (``baseline``) and every requested block bypassed (``block:L``), and
returns one tidy row per (config, sequence). ``summarize`` gives the mean and a 95% percentile
bootstrap interval of each metric per config.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from interp import metrics, sites
from interp.data import validate_for_model
from interp.generation import greedy_generate, teacher_forced_logits
from interp.interventions import AttentionBypass, Intervention

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
    progress: bool = False,
) -> pd.DataFrame:
    """Per-sequence metrics of one configuration: columns ``sequence`` and ``METRICS``.

    ``extraction_logprob`` is the natural log of the probability of sampling the suffix at
    least once in ``n_samples`` draws at temperature 1.
    """
    validate_for_model(rows, prefix_len, model)
    tokens = torch.as_tensor(rows, dtype=torch.long)
    suffix = tokens[:, prefix_len:]
    gen = greedy_generate(model, tokens[:, :prefix_len], suffix.shape[1], interventions, batch_size=batch_size, progress=progress)
    logits = teacher_forced_logits(model, tokens[:, :-1], interventions, start=prefix_len - 1, batch_size=batch_size)
    nll = metrics.suffix_nll(logits, suffix)
    return pd.DataFrame(
        {
            "sequence": np.arange(len(rows)),
            "exact_match": metrics.exact_match(gen, suffix).float().numpy(),
            "token_accuracy": metrics.token_accuracy(gen, suffix).numpy(),
            "completion_entropy": metrics.completion_entropy(logits).numpy(),
            "match_length": metrics.match_length(gen, suffix).numpy(),
            "tf_accuracy": metrics.teacher_forced_accuracy(logits, suffix).numpy(),
            "suffix_nll": nll.numpy(),
            "extraction_logprob": metrics.extraction_log_prob(nll, n_samples).numpy(),
        }
    )


def block_configs(model, blocks: Sequence[int] | None = None) -> dict[str, list[Intervention]]:
    """``{"baseline": [], "block:L": [AttentionBypass(L)], ...}`` for ``blocks`` (default: all)."""
    n = int(model.cfg.n_layers)
    blocks = range(n) if blocks is None else blocks
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
    progress: bool = True,
) -> pd.DataFrame:
    """Baseline plus each block bypassed (or explicit ``configs``): one row per config x sequence."""
    validate_for_model(rows, prefix_len, model)
    configs = configs if configs is not None else block_configs(model, blocks)
    frames = []
    for name, ivs in tqdm(configs.items(), desc="configs", disable=not progress):
        df = evaluate(model, rows, prefix_len, ivs, batch_size=batch_size)
        frames.append(df.assign(config=name))
    out = pd.concat(frames, ignore_index=True)
    return out[["config", *[c for c in out.columns if c != "config"]]]


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
