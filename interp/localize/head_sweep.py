"""Per-head attention bypass sweep: every single head bypassed in turn, through
``interp.memorization.evaluate_many`` (see the package docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from interp import sites
from interp.data import validate_for_model
from interp.interventions import AttentionBypass, Hook, Intervention, self_attention_hooks
from interp.memorization import evaluate_many


@dataclass(frozen=True)
class RowHeadBypass:
    """Attention bypass (``z := v``) of one head per batch row: row b bypasses head
    ``heads[b]`` of block ``layers[b]``. Runs many single-head configurations in one batch;
    the batch must have exactly ``len(heads)`` rows (pass ``batch_size=len(heads)``)."""

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


def head_configs(model, layers: Sequence[int] | None = None) -> dict[str, list[Intervention]]:
    """``{"L{l}H{h}": [AttentionBypass(l, heads=h)], ...}`` for every head of ``layers`` (default: all)."""
    layers = range(int(model.cfg.n_layers)) if layers is None else list(layers)
    configs: dict[str, list[Intervention]] = {}
    for layer in layers:
        AttentionBypass(layer).hooks(model)  # validates the layer
        for h in range(int(model.cfg.n_heads)):
            configs[sites.head_label(layer, h)] = [AttentionBypass(layer, heads=h)]
    return configs


def head_bypass_sweep(
    model,
    rows: np.ndarray,
    prefix_len: int,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    n_samples: int = 100,
    progress: bool = False,
    decode_rows: int | None = None,
) -> pd.DataFrame:
    """Memorization with each single head bypassed: one row per (head, sequence).

    Columns ``config`` (``L{l}H{h}``), ``layer``, ``head``, then those of
    ``interp.memorization.evaluate`` (the same values: this is ``evaluate_many`` over the head
    configurations plus the unmodified model, whose pass lets each head's teacher-forced pass
    run only the blocks from its own up, and whose rows are not returned).
    """
    validate_for_model(np.asarray(rows), prefix_len, model)
    configs = head_configs(model, layers)
    frames = evaluate_many(model, np.asarray(rows), prefix_len, {"baseline": [], **configs}, batch_size=batch_size,
                           n_samples=n_samples, progress=progress, decode_rows=decode_rows)  # fmt: skip
    out = pd.concat(
        [frames[name].assign(config=name, layer=iv[0].layers[0], head=iv[0].heads[0]) for name, iv in configs.items()],
        ignore_index=True,
    )
    return out[["config", "layer", "head", *[c for c in out.columns if c not in ("config", "layer", "head")]]]
