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


def completion_entropy(suffix_logits: Float[Tensor, "batch T vocab"]) -> Float[Tensor, " batch"]:
    """Sum over the T suffix positions of the next-token entropy in nats (teacher-forced)."""
    x = suffix_logits.float()
    lse = torch.logsumexp(x, dim=-1)
    p = torch.softmax(x, dim=-1)
    ent = lse - (p * x.nan_to_num(0.0, neginf=0.0)).sum(dim=-1)  # H = logsumexp(x) - E_p[x]
    return ent.sum(dim=1)


def teacher_forced_accuracy(
    suffix_logits: Float[Tensor, "batch T vocab"], suffix: Int[Tensor, "batch T"]
) -> Float[Tensor, " batch"]:
    """Fraction of suffix positions whose teacher-forced argmax is the true token."""
    return (suffix_logits.argmax(dim=-1) == suffix).float().mean(dim=1)


def suffix_token_nll(suffix_logits: Float[Tensor, "batch T vocab"], suffix: Int[Tensor, "batch T"]) -> Float[Tensor, "batch T"]:
    """Per-position negative log-likelihood (nats) of the true suffix tokens."""
    logp = torch.log_softmax(suffix_logits.double(), dim=-1)
    return -logp.gather(-1, suffix[..., None]).squeeze(-1)


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
