"""Per-head attribution of memorized suffixes: attribution patching and direct logit attribution.

Attribution patching (Nanda, "Attribution Patching: Activation Patching At Industrial Scale",
2023; Syed, Rager and Conmy, "Attribution Patching Outperforms Automated Circuit Discovery",
2023) replaces each exact patch of ``interp.patching`` by its first-order estimate: for head h
of layer l, ``sum_{pos, d_head} (z_src - z_base) * dM/dz`` with the gradient taken on the base
run (the corrupted run for denoising, the clean run for noising). It is normalized exactly like
exact patching, so the two can be compared head by head (``compare_to_patching``).

Direct logit attribution (Elhage et al., "A Mathematical Framework for Transformer Circuits",
2021) of head h to the memorized suffix token t at position i: the head's output
``o = z_h W_O^h`` (raw weights, the bridge in unprocessed mode) through the final LayerNorm
with its scale frozen from the clean run, i.e. ``((o - mean(o)) / s_i) . (gamma * W_U[:, t])``.
The mean-centering is part of the LayerNorm and is applied to every term; the LayerNorm bias
and the unembedding bias are constant terms. With the embeddings, each block's MLP output and
attention output bias, the terms sum exactly to the logit (``logit_decomposition``; tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from interp import sites
from interp.errors import InputError
from interp.patching import DIRECTIONS, METRIC_FNS, Runs, SuffixTarget, normalize

LN_FINAL_IN = sites.ln_final_in()  # residual stream entering the final LayerNorm
EMBED_HOOKS = (sites.embed(), sites.pos_embed())  # token and (GPT-Neo) learned position embeddings


# ---------------------------------------------------------------- attribution patching


def _z_and_grads(
    model, tokens: Int[Tensor, "batch pos"], target: SuffixTarget, metric: str
) -> tuple[list[Tensor], list[Tensor]]:
    """Per layer, z [batch pos head d_head] of the run on ``tokens`` and dM/dz (M summed over
    the batch, so each row's gradient is that of its own metric). A zero leaf is added to each
    z so the gradient is taken without touching parameter gradients."""
    n, pos = tokens.shape
    L, H, dh = int(model.cfg.n_layers), int(model.cfg.n_heads), int(model.cfg.d_head)
    deltas = [torch.zeros(n, pos, H, dh, device=model.cfg.device, requires_grad=True) for _ in range(L)]
    zs: list[Tensor] = [torch.empty(0)] * L

    def hook(layer: int):
        def fn(z: Tensor, hook) -> Tensor:
            zs[layer] = z.detach()
            return z + deltas[layer].to(z.dtype)

        return fn

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens.to(model.cfg.device), fwd_hooks=[(sites.z(l), hook(l)) for l in range(L)])
        total = METRIC_FNS[metric](logits, target).sum()
        grads = torch.autograd.grad(total, deltas)
    return zs, [g.detach() for g in grads]


@torch.no_grad()
def _z_cache(model, tokens: Int[Tensor, "batch pos"]) -> list[Tensor]:
    L = int(model.cfg.n_layers)
    names = {sites.z(l) for l in range(L)}
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names)
    return [cache[sites.z(l)] for l in range(L)]


def attribution_patching(
    model, runs: Runs, *, directions: Sequence[str] = DIRECTIONS, metric: str = "suffix_logprob", batch_size: int = 32
) -> pd.DataFrame:
    """First-order estimate of exact per-head patching (``interp.patching.patch`` with
    ``site="head"``). Tidy rows: ``method, direction, layer, head, component, metric, estimate,
    normalized``; ``estimate`` is the mean over sequences of the estimated (patched - base)."""
    records = []
    clean, corr = runs.clean_metrics[metric], runs.corrupted_metrics[metric]
    for direction in directions:
        per_head = _atp_per_head(model, runs, direction, metric, batch_size)  # [layer head]
        for (layer, h), est in np.ndenumerate(per_head.numpy()):
            patched = (corr if direction == "denoising" else clean) + float(est)
            records.append(dict(method="attribution_patching", direction=direction, layer=layer, head=h,
                                component=sites.head_label(layer, h), metric=metric, estimate=float(est),
                                normalized=normalize(patched, clean, corr, direction)))  # fmt: skip
    return pd.DataFrame.from_records(records)


def _atp_per_head(model, runs: Runs, direction: str, metric: str, batch_size: int) -> Float[Tensor, "layer head"]:
    """Mean over sequences of ``sum_{pos, d_head} (z_src - z_base) * dM/dz``, rows in chunks."""
    base, src = (runs.corrupted, runs.clean) if direction == "denoising" else (runs.clean, runs.corrupted)
    total = torch.zeros(int(model.cfg.n_layers), int(model.cfg.n_heads), dtype=torch.float64)
    for start in range(0, len(base), batch_size):
        rs = slice(start, start + batch_size)
        target = SuffixTarget(runs.target.prefix_len, runs.target.suffix[rs], runs.target.foil[rs])
        z_base, grads = _z_and_grads(model, base[rs], target, metric)
        z_src = _z_cache(model, src[rs])
        for layer, (zb, g, zs) in enumerate(zip(z_base, grads, z_src)):
            total[layer] += ((zs - zb) * g).sum(dim=(0, 1, 3)).double().cpu()
    return total / len(base)


# ---------------------------------------------------------------- direct logit attribution


def _ln_final(model) -> torch.nn.Module:
    return model.ln_final.original_component


def _unembed(model) -> tuple[Float[Tensor, "vocab d_model"], Tensor | None]:
    lin = model.unembed.original_component
    return lin.weight, getattr(lin, "bias", None)


def _out_proj(model, layer: int) -> torch.nn.Linear:
    """The raw output projection of a block's attention: weight [d_model, head * d_head]."""
    return model.blocks[layer].attn.o.original_component


@torch.no_grad()
def logit_decomposition(
    model, tokens: Int[Tensor, "batch pos"], positions: Int[Tensor, "batch k"], token_ids: Int[Tensor, "batch k"]
) -> dict[str, Float[Tensor, "batch k"]]:
    """Exact additive decomposition of ``logits[b, positions[b, j], token_ids[b, j]]``.

    Terms: ``L{l}H{h}`` (head outputs), ``attn_bias:L`` (output-projection bias), ``mlp:L``
    (MLP outputs), ``embed`` / ``pos_embed``, and ``const`` (final LayerNorm bias and
    unembedding bias). Each residual term c contributes ``((c - mean c) / s) . (gamma * W_U[t])``
    with ``s`` the clean run's final-LayerNorm scale."""
    L, H, dh = int(model.cfg.n_layers), int(model.cfg.n_heads), int(model.cfg.d_head)
    names = {sites.z(l) for l in range(L)} | {sites.mlp_out(l) for l in range(L)} | {LN_FINAL_IN, *EMBED_HOOKS}
    _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names)
    ln, (W_U, b_U) = _ln_final(model), _unembed(model)
    x = _gather_pos(cache[LN_FINAL_IN], positions).double()  # [b k d]
    centred = _is_layer_norm(ln)  # LayerNorm centres and scales; RMSNorm (Llama family) only scales
    eps = ln.eps if centred else ln.variance_epsilon
    scale = ((x.var(-1, unbiased=False, keepdim=True) if centred else x.pow(2).mean(-1, keepdim=True)) + eps).sqrt()
    direction = ln.weight.double() * W_U[token_ids.to(W_U.device)].double()  # [b k d]

    def project(c: Tensor) -> Tensor:
        c = c.double()
        return (((c - c.mean(-1, keepdim=True) if centred else c) / scale) * direction).sum(-1).float()

    terms: dict[str, Tensor] = {}
    for name, label in zip(EMBED_HOOKS, ("embed", "pos_embed")):
        if name in cache:
            terms[label] = project(_gather_pos(cache[name], positions))
    for layer in range(L):
        proj = _out_proj(model, layer)
        z = _gather_pos(cache[sites.z(layer)], positions)  # [b k H dh]
        W = proj.weight.view(-1, H, dh)  # [d_model H dh]
        per_head = torch.einsum("bkhe,dhe->bkhd", z.double(), W.double())
        for h in range(H):
            terms[sites.head_label(layer, h)] = project(per_head[:, :, h])
        if proj.bias is not None:
            terms[f"attn_bias:{layer}"] = project(proj.bias.expand_as(x))
        terms[f"mlp:{layer}"] = project(_gather_pos(cache[sites.mlp_out(layer)], positions))
    bias = getattr(ln, "bias", None)
    const = (bias.double() * W_U[token_ids.to(W_U.device)].double()).sum(-1) if bias is not None else 0.0
    if b_U is not None:
        const = const + b_U[token_ids.to(b_U.device)].double()
    terms["const"] = torch.as_tensor(const, dtype=torch.float64).expand(token_ids.shape).float()
    return terms


def _is_layer_norm(ln) -> bool:
    """LayerNorm (GPT-NeoX, GPT-Neo) or RMSNorm (Llama, Qwen2: ``variance_epsilon``, no bias)."""
    if isinstance(ln, torch.nn.LayerNorm):
        return True
    if hasattr(ln, "variance_epsilon"):
        return False
    raise InputError(f"final norm {type(ln).__name__} is neither LayerNorm nor an RMSNorm with variance_epsilon")


def _gather_pos(act: Tensor, positions: Tensor) -> Tensor:
    """act [batch pos ...] -> [batch k ...] at ``positions`` [batch k]."""
    idx = positions.to(act.device).view(*positions.shape, *([1] * (act.ndim - 2)))
    return act.gather(1, idx.expand(*positions.shape, *act.shape[2:]))


def suffix_positions_and_tokens(rows: Int[Tensor, "batch row"], prefix_len: int) -> tuple[Tensor, Tensor]:
    """Positions ``P-1 .. P+T-2`` (of the input ``row[:-1]``) and the suffix tokens they score."""
    n, T = rows.shape[0], rows.shape[1] - prefix_len
    positions = torch.arange(prefix_len - 1, prefix_len - 1 + T).expand(n, T)
    return positions, rows[:, prefix_len:]


def direct_logit_attribution(model, rows, prefix_len: int, *, batch_size: int = 32) -> pd.DataFrame:
    """Per-head DLA to the true suffix tokens on the clean (memorized) rows, averaged over
    sequences and suffix positions. Tidy rows: ``method, layer, head, component, dla`` (logit
    units)."""
    rows = torch.as_tensor(np.asarray(rows), dtype=torch.long)
    positions, tokens = suffix_positions_and_tokens(rows, prefix_len)
    sums: dict[str, float] = {}
    for start in range(0, len(rows), batch_size):
        rs = slice(start, start + batch_size)
        for label, value in logit_decomposition(model, rows[rs, :-1], positions[rs], tokens[rs]).items():
            sums[label] = sums.get(label, 0.0) + float(value.double().sum())
    records = []
    for label, total in sums.items():
        try:
            layer, head = sites.parse_component(label)
        except ValueError:
            continue
        records.append(dict(method="dla", layer=layer, head=head, component=label, dla=total / positions.numel()))
    return pd.DataFrame.from_records(records)


# ---------------------------------------------------------------- agreement with exact patching


def compare_to_patching(exact: pd.DataFrame, estimates: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Correlation of per-head estimates with exact per-head patching.

    ``exact`` is ``interp.patching.patch`` output (rows with ``site == "head"`` are used, on
    their ``normalized`` column); ``estimates`` maps a method name to a frame with ``component``
    and either ``direction`` + ``normalized`` (attribution patching: compared within the same
    direction) or ``dla`` (compared with every direction). Tidy rows: ``method, direction,
    metric, pearson, spearman, n`` (Spearman = Pearson of the ranks)."""
    heads = exact[exact["site"] == "head"]
    records = []
    for (direction, metric), ex in heads.groupby(["direction", "metric"]):
        ex = ex.set_index("component")["normalized"]
        for method, est in estimates.items():
            if "direction" in est:
                est = est[(est["direction"] == direction) & (est["metric"] == metric)]
                if est.empty:
                    continue
            col = "normalized" if "normalized" in est else "dla"
            pair = pd.concat([ex, est.set_index("component")[col]], axis=1, join="inner").dropna()
            pair.columns = ["exact", "estimate"]
            records.append(dict(method=method, direction=direction, metric=metric,
                                pearson=pair["exact"].corr(pair["estimate"]),
                                spearman=pair["exact"].rank().corr(pair["estimate"].rank()), n=len(pair)))  # fmt: skip
    return pd.DataFrame.from_records(records)
