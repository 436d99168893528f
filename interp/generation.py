"""Batched greedy decoding and teacher-forced passes under interventions.

Rows are token ids used exactly as given: no BOS is prepended (the bridge prepends one only to
strings), no padding is needed (all rows of a batch share one length), and decoding never stops
at the end-of-text token, so a memorized suffix that contains it can still match (defect 4 of
the public code). Greedy ties resolve to the lowest token id (``torch.argmax``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicLayer

from interp.interventions import Intervention, apply
from interp.reuse import forward_from


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


def cached_step(model, tokens: Int[Tensor, "batch new"] | Float[Tensor, "batch new d_model"], cache, *,
                start_at: int | None = None, **kwargs) -> tuple[Tensor, object]:  # fmt: skip
    """Logits of ``tokens`` after the positions held in ``cache`` (a Hugging Face KV cache from an
    earlier ``return_type="logits_and_cache"`` call), and the extended cache. With ``start_at``,
    ``tokens`` is the residual stream entering that block and only blocks from it up run
    (``interp.reuse.forward_from``; the cache's lower layers must already hold those positions'
    predecessors). ``kwargs`` (an attention mask over cache and new positions, position ids)
    go to the model.

    The bridge hands the cache to the Hugging Face model as ``past_key_values``, which
    transformers 5.24 deprecates (renamed ``cache``, to be removed in 5.40; pyproject keeps
    transformers below 5.40). The FutureWarning it raises at every decode step is not actionable
    here, so it is silenced for this call only."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated", category=FutureWarning)
        if start_at is not None:
            return forward_from(model, tokens, start_at, return_type="logits_and_cache", past_key_values=cache, **kwargs)
        return model(tokens, return_type="logits_and_cache", past_key_values=cache, **kwargs)


def _decode_cached(model, prefix: Tensor, n_new: int) -> Tensor:
    logits, cache = model(prefix, return_type="logits_and_cache", use_cache=True, logits_to_keep=1)
    merged = concat_caches([cache], capacity=prefix.shape[1] + n_new)
    cache = cache if merged is None else merged
    new = [logits[:, -1].argmax(-1)]
    for _ in range(n_new - 1):
        logits, cache = cached_step(model, new[-1][:, None], cache)
        new.append(logits[:, -1].argmax(-1))
    return torch.stack(new, dim=1)


def _decode_uncached(model, prefix: Tensor, n_new: int) -> Tensor:
    seq = prefix
    for _ in range(n_new):
        nxt = model(seq, return_type="logits")[:, -1].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq[:, prefix.shape[1] :]


def concat_caches(caches: list, capacity: int):
    """One KV cache holding the rows of ``caches`` one after another, cut to the shortest one's
    length, in buffers of ``capacity`` positions (``_PreallocatedLayer``); each source layer is
    released once copied. None when a layer is not a plain dynamic layer (then the decode
    recomputes the shared part)."""
    layers = [getattr(c, "layers", None) for c in caches]
    if any(ls is None or any(type(layer) is not DynamicLayer for layer in ls) for ls in layers):
        return None
    n = min(c.get_seq_length() for c in caches)
    merged = caches[0]
    new_layers = []
    for i in range(len(merged.layers)):
        parts = [(ls[i].keys[:, :, :n], ls[i].values[:, :, :n]) for ls in layers]
        new_layers.append(_PreallocatedLayer.from_parts(parts, capacity))
        for ls in layers:  # release the source (its cache is not to be used again)
            ls[i].keys = ls[i].values = None
            ls[i].is_initialized = False
    merged.layers = new_layers
    return merged


class _PreallocatedLayer(DynamicLayer):
    """A dynamic cache layer that writes new positions into a buffer of ``capacity`` positions
    instead of concatenating (``DynamicLayer.update`` copies the whole cache at every decode
    step, which dominated the decode of a few hundred rows). Falls back to concatenation when
    the buffer is full or the keys no longer view it (after a row selection)."""

    def __init__(self, keys: Tensor, values: Tensor, capacity: int):
        self._init_from([(keys, values)], capacity)

    @classmethod
    def from_parts(cls, parts: list[tuple[Tensor, Tensor]], capacity: int) -> "_PreallocatedLayer":
        """The rows of ``parts`` ((keys, values) of one length) one after another."""
        layer = cls.__new__(cls)
        layer._init_from(parts, capacity)
        return layer

    def _init_from(self, parts: list[tuple[Tensor, Tensor]], capacity: int) -> None:
        super().__init__()
        k0, v0 = parts[0]
        B, H, n, d = sum(k.shape[0] for k, _ in parts), k0.shape[1], k0.shape[2], k0.shape[3]
        self._k = k0.new_empty(B, H, max(capacity, n), d)
        self._v = v0.new_empty(B, H, max(capacity, n), v0.shape[-1])
        row = 0
        for k, v in parts:
            self._k[row : row + len(k), :, :n], self._v[row : row + len(v), :, :n] = k, v
            row += len(k)
        self.keys, self.values = self._k[:, :, :n], self._v[:, :, :n]
        self.device, self.is_initialized = k0.device, True

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if not self.is_initialized or self.keys is None or self._k is None:
            return super().update(key_states, value_states, *args, **kwargs)
        n, m = self.keys.shape[-2], key_states.shape[-2]
        views_buffer = self.keys.data_ptr() == self._k.data_ptr() and self.keys.shape[0] == self._k.shape[0]
        if not views_buffer or n + m > self._k.shape[-2]:
            self._k = self._v = None  # from now on an ordinary dynamic layer; release the buffer
            return super().update(key_states, value_states, *args, **kwargs)
        self._k[:, :, n : n + m], self._v[:, :, n : n + m] = key_states, value_states
        self.keys, self.values = self._k[:, :, : n + m], self._v[:, :, : n + m]
        return self.keys, self.values


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
