"""Batched greedy decoding and teacher-forced passes under interventions.

Rows are token ids used exactly as given: no BOS is prepended (the bridge prepends one only to
strings), no padding is needed (all rows of a batch share one length), and decoding never stops
at the end-of-text token, so a memorized suffix that contains it can still match (defect 4 of
the public code). Greedy ties resolve to the lowest token id (``torch.argmax``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp.interventions import Intervention, apply


def batches(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _as_tokens(tokens) -> Tensor:
    t = torch.as_tensor(tokens)
    if t.ndim != 2:
        raise ValueError(f"token ids must be a 2-D [batch, pos] array; got shape {tuple(t.shape)}")
    return t.long()


@torch.no_grad()
def greedy_generate(
    model,
    prefixes: Int[Tensor, "batch prefix"],
    n_new: int,
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 64,
    use_cache: bool = True,
    progress: bool = False,
) -> Int[Tensor, "batch n_new"]:
    """Greedy continuation of ``n_new`` tokens for each row of ``prefixes`` (no early stop).

    With ``use_cache`` the prefix is run once and each step feeds only the newest token with
    the HF KV cache; without it every step reruns the whole sequence. Both give the same
    tokens (tested), under any interventions.
    """
    prefixes = _as_tokens(prefixes)
    device = model.cfg.device
    out = torch.empty((prefixes.shape[0], n_new), dtype=torch.long)
    with apply(model, *interventions):
        for sl in tqdm(list(batches(len(prefixes), batch_size)), desc="generate", disable=not progress, leave=False):
            step = _decode_cached if use_cache else _decode_uncached
            out[sl] = step(model, prefixes[sl].to(device), n_new).cpu()
    return out


def _decode_cached(model, prefix: Tensor, n_new: int) -> Tensor:
    logits, cache = model(prefix, return_type="logits_and_cache", use_cache=True)
    new = [logits[:, -1].argmax(-1)]
    for _ in range(n_new - 1):
        logits, cache = model(new[-1][:, None], return_type="logits_and_cache", past_key_values=cache)
        new.append(logits[:, -1].argmax(-1))
    return torch.stack(new, dim=1)


def _decode_uncached(model, prefix: Tensor, n_new: int) -> Tensor:
    seq = prefix
    for _ in range(n_new):
        nxt = model(seq, return_type="logits")[:, -1].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq[:, prefix.shape[1] :]


@torch.no_grad()
def teacher_forced_logits(
    model,
    tokens: Int[Tensor, "batch pos"],
    interventions: Sequence[Intervention] = (),
    *,
    start: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> Float[Tensor, "batch pos_out vocab"]:
    """Logits of one forward pass over ``tokens`` (no BOS added), kept from position ``start``
    on (``start = prefix_len - 1`` keeps exactly the positions that score the suffix)."""
    tokens = _as_tokens(tokens)
    device = model.cfg.device
    chunks = []
    with apply(model, *interventions):
        for sl in tqdm(list(batches(len(tokens), batch_size)), desc="forward", disable=not progress, leave=False):
            chunks.append(model(tokens[sl].to(device), return_type="logits")[:, start:].float().cpu())
    return torch.cat(chunks, dim=0)
