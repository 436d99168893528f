"""Reuse below the intervention: run only the blocks an intervention can change.

An intervention whose earliest hook sits in block ``l`` leaves the residual stream entering
block ``l`` (and every key and value of blocks ``0..l-1``) exactly as the unmodified model
computes it. So when the unmodified pass over the same rows has been run, the intervened pass
needs only blocks ``l..L-1``, started from the captured residual, and its KV cache takes the
lower blocks' keys and values from the unmodified pass.

TransformerBridge's own ``start_at_layer`` still runs blocks ``0..l-1`` (it discards their
output), so it saves nothing. ``forward_from`` runs the Hugging Face decoder stack cut to blocks
``l..L-1`` (the bridge's blocks are the HF model's modules, so every hook still fires) and lets
the bridge's ``start_at_layer`` put the residual in at block ``l``: the HF forward computes masks,
positions (rotary or learned) and the final norm as usual, and GPT-Neo's learned positions
added to the input are discarded when block ``l`` takes the residual.

Where a stack cannot be cut safely (a model whose decoder indexes per-layer settings by position
in its list, such as Qwen2 with mixed sliding and full attention), ``reusable`` says so and the
callers run the full forward.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor
from transformers.cache_utils import DynamicLayer

from interp import sites
from interp.interventions import Intervention, hooks_for

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def earliest_block(model, interventions: Sequence[Intervention]) -> int:
    """The lowest block any hook of ``interventions`` touches; ``n_layers`` when there are no
    hooks, 0 when a hook is outside the blocks (embeddings, final norm: nothing is reused)."""
    names = [name for name, _ in hooks_for(model, interventions)]
    if not names:
        return int(model.cfg.n_layers)
    blocks = [_BLOCK.match(n) for n in names]
    if any(m is None for m in blocks):
        return 0
    return min(int(m.group(1)) for m in blocks)


def plan(model, configs: dict[str, Sequence[Intervention]]) -> tuple[str | None, dict[str, int]]:
    """How a call over several configurations reuses: the unmodified configuration (None if
    there is none or the model's stack cannot be cut) and, for each other configuration whose
    hooks all sit in block 1 or above, the lowest such block (its passes start there)."""
    L = int(model.cfg.n_layers)
    earliest = {n: earliest_block(model, ivs) for n, ivs in configs.items()}
    base = next((n for n, e in earliest.items() if e == L), None)
    if base is None or not reusable(model):
        return None, {}
    return base, {n: e for n, e in earliest.items() if 0 < e < L}


def _stack(model) -> tuple[torch.nn.Module, str] | None:
    """The HF module holding the decoder layers and the attribute name of its ModuleList (the
    list whose entries are the bridge's blocks), or None."""
    hf = getattr(model, "original_model", None)
    blocks = list(getattr(model, "blocks", []))
    if hf is None or not blocks:
        return None
    for module in hf.modules():
        for name, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == len(blocks) and all(a is b for a, b in zip(child, blocks)):
                return module, name
    return None


def reusable(model) -> bool:
    """Whether ``forward_from`` can run this model's upper blocks alone: its decoder stack is
    found, and no per-layer setting is read by position in the list (``layer_types`` all alike)."""
    if _stack(model) is None:
        return False
    types = getattr(model.original_model.config, "layer_types", None)
    return not types or len(set(types)) == 1


@contextmanager
def _cut_stack(model, block: int) -> Iterator[None]:
    found = _stack(model)
    if found is None:
        raise RuntimeError("this model's decoder stack was not found; check reusable(model) first")
    parent, name = found
    full = getattr(parent, name)
    setattr(parent, name, torch.nn.ModuleList(list(full)[block:]))
    try:
        yield
    finally:
        setattr(parent, name, full)


def forward_from(model, resid: Float[Tensor, "batch pos d_model"], block: int, **kwargs):
    """``model(...)`` (same ``return_type``, ``logits_to_keep``, cache arguments and hooks) on the
    rows whose residual stream entering ``block`` is ``resid``, running only blocks
    ``block..L-1``. With a KV cache the lower blocks' layers come back empty: fill them with
    ``fill_lower_cache``."""
    if block == 0:
        raise ValueError("forward_from needs block >= 1 (block 0 is the full forward)")
    with _cut_stack(model, block):
        return model(resid, start_at_layer=block, **kwargs)


@contextmanager
def capture_resid(model, blocks: Sequence[int]) -> Iterator[dict[int, Tensor]]:
    """Inside the context each forward pass stores the residual entering each of ``blocks``
    (``hook_resid_pre``) in the yielded dict, keyed by block."""
    store: dict[int, Tensor] = {}

    def keeper(layer: int):
        def fn(x: Tensor, hook) -> None:
            store[layer] = x.detach()

        return fn

    with model.hooks(fwd_hooks=[(sites.resid_pre(b), keeper(b)) for b in sorted(set(blocks))]):
        yield store


def lower_layers(cache) -> list[tuple[Tensor, Tensor]] | None:
    """The (keys, values) of every layer of a KV cache, or None when a layer is not a plain
    dynamic layer (sliding windows: then callers recompute instead)."""
    layers = getattr(cache, "layers", None)
    if layers is None or any(type(layer) is not DynamicLayer or not layer.is_initialized for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def fill_lower_cache(cache, base: list[tuple[Tensor, Tensor]] | None, block: int) -> bool:
    """Put the unmodified pass's keys and values (``lower_layers``) into layers ``0..block-1`` of
    ``cache`` (from ``forward_from``); False (cache untouched) when either cache has layers that
    are not plain dynamic ones."""
    layers = getattr(cache, "layers", None)
    if base is None or layers is None or any(type(layer) is not DynamicLayer for layer in layers):
        return False
    for layer, (k, v) in zip(layers[:block], base[:block]):
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
    return True
