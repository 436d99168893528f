"""Per-head attention bypass sweep: all heads of a layer in one batch, decoding only where the
teacher-forced argmax says it can differ (see the package docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp import metrics, sites
from interp.data import validate_for_model
from interp.errors import check_finite
from interp.generation import batches, greedy_generate
from interp.interventions import AttentionBypass, Hook, self_attention_hooks
from interp.memorization import decode_plan, metrics_frame


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
