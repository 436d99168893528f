"""Memorization metrics, with the indexing of the paper's protocol.

A row is ``prefix (P tokens) + suffix (T tokens)``. Logits at position t predict token t+1, so
suffix token ``s_j`` (j = 0..T-1, at position P+j) is scored by the logits at position P-1+j.
Functions that take ``suffix_logits`` expect exactly those T positions, i.e.
``logits[:, P-1 : P-1+T]``.

Fixes relative to the public code (paper defects 2-4): token accuracy is a fraction, not cast
to int; completion entropy is taken over the vocabulary and summed over the T suffix positions
only, at the right offset; generation never masks the end-of-text token.

Definitions: exact match and token accuracy (Biderman et al.'s memorization score) compare the
free-running greedy continuation with the suffix; completion entropy, teacher-forced accuracy
and suffix negative log-likelihood are teacher-forced on the true row; the probability of
extracting the suffix in n samples is ``1 - (1 - p)^n`` with ``p = exp(-suffix_nll)`` (Carlini
et al. 2021/2023), returned as a natural log; exposure (Carlini et al. 2019) is
``log2 |R| - log2 rank`` of a canary among |R| candidates ranked by likelihood.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def _check_same_shape(generated: Tensor, suffix: Tensor) -> None:
    if generated.shape != suffix.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and suffix {tuple(suffix.shape)} shapes differ")


def suffix_slice(logits: Float[Tensor, "batch pos vocab"], prefix_len: int, suffix_len: int) -> Tensor:
    """The T positions whose logits score the suffix: ``logits[:, P-1 : P-1+T]``."""
    if prefix_len < 1 or logits.shape[1] < prefix_len - 1 + suffix_len:
        raise ValueError(f"logits of length {logits.shape[1]} cannot score a suffix of {suffix_len} after {prefix_len}")
    return logits[:, prefix_len - 1 : prefix_len - 1 + suffix_len]


def exact_match(generated: Int[Tensor, "batch T"], suffix: Int[Tensor, "batch T"]) -> Bool[Tensor, " batch"]:
    """1 when the greedy continuation equals the suffix at every position."""
    _check_same_shape(generated, suffix)
    return (generated == suffix).all(dim=1)


def token_accuracy(generated: Int[Tensor, "batch T"], suffix: Int[Tensor, "batch T"]) -> Float[Tensor, " batch"]:
    """Fraction of suffix positions where the free-running greedy token equals the true one."""
    _check_same_shape(generated, suffix)
    return (generated == suffix).float().mean(dim=1)


def match_length(generated: Int[Tensor, "batch T"], suffix: Int[Tensor, "batch T"]) -> Int[Tensor, " batch"]:
    """Number of leading suffix tokens reproduced before the first mismatch (T if none)."""
    _check_same_shape(generated, suffix)
    return (generated == suffix).long().cumprod(dim=1).sum(dim=1)


_CHUNK = 16  # positions per pass: a chunk's logits stay in cache (about 2x faster on CPU than whole-tensor passes)


def _per_position(x: Float[Tensor, "*pos vocab"], tokens: Tensor | None = None, top2: bool = False) -> dict[str, Tensor]:
    """Per-position statistics of float32 logits ``x``, computed ``_CHUNK`` positions at a time
    (each row on its own, so chunking changes no value): ``lse`` (logsumexp), ``entropy``
    (``lse - E_p[x]``, nats; ``-inf`` logits have probability 0 and contribute 0), with
    ``tokens`` the ``nll`` of each token (``lse - x[token]`` in float64 from the float32 ``lse``:
    within about 1e-6 nats of a float64 log-softmax per position), with ``top2`` the ``argmax``
    and the top-1 minus top-2 ``margin``."""
    shape, V = x.shape[:-1], x.shape[-1]
    flat = x.reshape(-1, V)
    flat_tokens = None if tokens is None else tokens.reshape(-1)
    out: dict[str, list[Tensor]] = {"lse": [], "entropy": []}
    if tokens is not None:
        out["nll"] = []
    if top2:
        out["argmax"], out["margin"] = [], []
    for i in range(0, flat.shape[0], _CHUNK):
        c = flat[i : i + _CHUNK]
        lse = torch.logsumexp(c, dim=-1)
        p = torch.softmax(c, dim=-1)  # (not exp(c - lse): softmax keeps the whole-tensor values bit for bit)
        finite = c.nan_to_num(0.0, neginf=0.0) if bool(torch.isneginf(c).any()) else c
        out["lse"].append(lse)
        out["entropy"].append(lse - (p * finite).sum(dim=-1))
        if flat_tokens is not None:
            out["nll"].append(lse.double() - c.gather(-1, flat_tokens[i : i + _CHUNK, None]).squeeze(-1).double())
        if top2:
            t2 = c.topk(2, dim=-1)
            out["argmax"].append(t2.indices[:, 0])
            out["margin"].append(t2.values[:, 0] - t2.values[:, 1])
    return {k: torch.cat(v).reshape(shape) for k, v in out.items()}


def completion_entropy(suffix_logits: Float[Tensor, "batch T vocab"]) -> Float[Tensor, " batch"]:
    """Sum over the T suffix positions of the next-token entropy in nats (teacher-forced)."""
    return _per_position(suffix_logits.float())["entropy"].sum(dim=1)


def teacher_forced_accuracy(
    suffix_logits: Float[Tensor, "batch T vocab"], suffix: Int[Tensor, "batch T"]
) -> Float[Tensor, " batch"]:
    """Fraction of suffix positions whose teacher-forced argmax is the true token."""
    return (suffix_logits.argmax(dim=-1) == suffix).float().mean(dim=1)


def suffix_token_nll(suffix_logits: Float[Tensor, "batch T vocab"], suffix: Int[Tensor, "batch T"]) -> Float[Tensor, "batch T"]:
    """Per-position negative log-likelihood (nats) of the true suffix tokens,
    ``logsumexp(x) - x[token]`` (the logsumexp in float32, the difference in float64)."""
    return _per_position(suffix_logits.float(), suffix)["nll"]


def teacher_forced_summary(suffix_logits: Float[Tensor, "batch T vocab"], suffix: Int[Tensor, "batch T"]) -> dict[str, Tensor]:
    """The per-row teacher-forced statistics of a sweep in one pass over the suffix logits:
    ``completion_entropy`` and ``suffix_nll`` [batch], the ``argmax`` token and the top-1 minus
    top-2 logit ``margin`` [batch, T]."""
    st = _per_position(suffix_logits.float(), suffix, top2=True)
    return {"completion_entropy": st["entropy"].sum(dim=1), "suffix_nll": st["nll"].sum(dim=1),
            "argmax": st["argmax"], "margin": st["margin"]}  # fmt: skip


def suffix_nll(suffix_logits: Float[Tensor, "batch T vocab"], suffix: Int[Tensor, "batch T"]) -> Float[Tensor, " batch"]:
    """Negative log-likelihood (nats) of the whole suffix given the prefix: -log p(suffix | prefix)."""
    return suffix_token_nll(suffix_logits, suffix).sum(dim=1)


def extraction_log_prob(nll: Float[Tensor, " batch"], n_samples: int) -> Float[Tensor, " batch"]:
    """Natural log of the probability that at least one of ``n_samples`` independent samples
    reproduces the suffix, ``log(1 - (1 - p)^n)`` with ``p = exp(-nll)``, computed stably."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1; got {n_samples}")
    nll = nll.double()
    log_not_p = torch.log1p(-torch.exp(-nll))  # log(1 - p), accurate for small p
    out = torch.log(-torch.expm1(n_samples * log_not_p))
    first_order = math.log(n_samples) - nll  # log(n p), the limit when p underflows
    return torch.where(torch.isfinite(out), out, first_order)


def exposure(canary_nll: float, candidate_nlls: Float[Tensor, " R"]) -> float:
    """Exposure in bits: ``log2 |R| - log2 rank``, where R holds the canary and the candidates
    and rank 1 is the most likely (lowest NLL). Ties count against the canary (rank is the
    number of members at least as likely as it)."""
    candidate_nlls = torch.as_tensor(candidate_nlls, dtype=torch.float64)
    size = candidate_nlls.numel() + 1
    rank = 1 + int((candidate_nlls <= canary_nll).sum())
    return math.log2(size) - math.log2(rank)
