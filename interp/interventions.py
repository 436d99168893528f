"""Interventions as data: frozen dataclasses that yield TransformerLens ``(hook_name, fn)`` pairs.

``AttentionBypass`` is the "short-circuit" of Menta, Agrawal and Agarwal (NAACL 2025): in the
chosen blocks (and heads) every token attends only to itself, so each head's output is its own
value vector, ``z := v``; LayerNorms, value/output projections with their biases, the MLP and
the residual connections are all kept. The edit is made at ``hook_z`` because GPT-Neo's bridge
discards edits at ``hook_pattern``; ``hook_z`` works on both GPT-NeoX and GPT-Neo. With a KV
cache, a decode step's ``z`` covers only the new query positions, which are the last positions
of ``v``, so the rule still puts all weight on the token itself.

Interventions are applied only inside ``apply(model, ...)`` (or ``model.hooks``/
``run_with_hooks``); composing interventions is concatenating their hook lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor

from interp import sites
from interp.errors import InputError

HookFn = Callable[..., Tensor | None]
Hook = tuple[str, HookFn]


@runtime_checkable
class Intervention(Protocol):
    """Anything with ``hooks(model) -> list[(hook_name, fn)]`` and a ``label``."""

    @property
    def label(self) -> str: ...

    def hooks(self, model) -> list[Hook]: ...


def _check_components(model, layers: Sequence[int], heads: Sequence[int] | None, what: str) -> None:
    n_layers, n_heads = int(model.cfg.n_layers), int(model.cfg.n_heads)
    if not layers:
        raise InputError(f"{what} needs at least one layer; got an empty list")
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise InputError(f"{what} layers {bad} are outside the model's blocks 0..{n_layers - 1}")
    if heads is not None:
        bad = [h for h in heads if not 0 <= h < n_heads]
        if bad or not heads:
            raise InputError(f"{what} heads {list(heads)} must be non-empty and within 0..{n_heads - 1}")
    for name, values in (("layers", layers), ("heads", heads or ())):
        if len(set(values)) != len(values):
            raise InputError(f"{what} {name} {list(values)} name one more than once; a selection is a set")


def _tuple(xs: int | Sequence[int] | None) -> tuple[int, ...] | None:
    if xs is None:
        return None
    return (int(xs),) if isinstance(xs, int) else tuple(int(x) for x in xs)


def _components_label(layers: tuple[int, ...], heads: tuple[int, ...] | None, prefix: str) -> str:
    if heads is None:
        return prefix + ",".join(sites.block_label(layer) for layer in layers)
    return prefix + ",".join(sites.head_label(layer, h) for layer in layers for h in heads)


@dataclass(frozen=True)
class _Components:
    """Blocks ``layers`` (an int or a sequence), all heads or only ``heads`` in each of them."""

    layers: tuple[int, ...]
    heads: tuple[int, ...] | None = None
    _prefix = ""

    def __init__(self, layers: int | Sequence[int], heads: int | Sequence[int] | None = None):
        object.__setattr__(self, "layers", _tuple(layers))
        object.__setattr__(self, "heads", _tuple(heads))

    @property
    def label(self) -> str:
        return _components_label(self.layers, self.heads, self._prefix)

    def _checked(self, model) -> None:
        _check_components(model, self.layers, self.heads, type(self).__name__)


@dataclass(frozen=True, init=False)
class AttentionBypass(_Components):
    """Identity attention (``z := v``) in ``layers``; all heads, or only ``heads`` in each layer."""

    def hooks(self, model) -> list[Hook]:
        self._checked(model)
        out: list[Hook] = []
        for layer in self.layers:
            out.extend(_bypass_hooks(layer, self.heads))
        return out


def self_attention_hooks(layer: int, edit: Callable[[Tensor, Tensor], Tensor]) -> list[Hook]:
    """Hooks that hand ``edit(z, v_self)`` a copy of block ``layer``'s ``z`` and each query's own
    value vector ``v_self`` (both [batch, qpos, head, d_head]); its return value replaces ``z``.
    The bypass variants (all heads, some heads, one head per row) differ only in ``edit``."""
    store: dict[str, Tensor] = {}

    def keep_v(v: Float[Tensor, "batch kpos head d_head"], hook) -> None:
        store["v"] = v

    def replace_z(z: Float[Tensor, "batch qpos head d_head"], hook) -> Tensor:
        v_self = store.pop("v")[:, -z.shape[1] :].to(z.dtype)  # queries are the newest key positions
        return edit(z.clone(), query_head_values(v_self, z.shape[2]))

    return [(sites.v(layer), keep_v), (sites.z(layer), replace_z)]


def query_head_values(v: Float[Tensor, "batch pos kv_head d_head"], n_heads: int) -> Float[Tensor, "batch pos head d_head"]:
    """Values per query head. Under grouped- or multi-query attention ``hook_v`` has fewer heads
    than ``hook_z``; query head ``j`` reads key/value head ``j // (n_heads // n_kv_heads)``, as in
    Hugging Face's ``repeat_kv``."""
    n_kv = v.shape[2]
    if n_kv == n_heads:
        return v
    if n_heads % n_kv:
        raise InputError(f"{n_heads} query heads cannot share {n_kv} key/value heads evenly")
    return v.repeat_interleave(n_heads // n_kv, dim=2)


def _bypass_hooks(layer: int, heads: tuple[int, ...] | None) -> list[Hook]:
    def edit(z: Tensor, v_self: Tensor) -> Tensor:
        if heads is None:
            return v_self.clone()
        z[:, :, list(heads)] = v_self[:, :, list(heads)]
        return z

    return self_attention_hooks(layer, edit)


@dataclass(frozen=True, init=False)
class ZeroAblation(_Components):
    """Zero the attention sublayer output of ``layers`` (``hook_attn_out := 0``, bias included),
    or, with ``heads``, only those heads' ``z`` (their contribution through W_O vanishes)."""

    _prefix = "zero:"

    def hooks(self, model) -> list[Hook]:
        self._checked(model)
        if self.heads is None:
            return [(sites.attn_out(layer), _set_to(0.0)) for layer in self.layers]
        return [(sites.z(layer), _set_heads_to(self.heads, None)) for layer in self.layers]


def _set_to(value: float) -> HookFn:
    def fn(x: Tensor, hook) -> Tensor:
        return torch.full_like(x, value)

    return fn


def _set_heads_to(heads: tuple[int, ...], means: Tensor | None) -> HookFn:
    def fn(z: Float[Tensor, "batch pos head d_head"], hook) -> Tensor:
        z = z.clone()
        idx = list(heads)
        z[:, :, idx] = 0.0 if means is None else means[idx].to(z)
        return z

    return fn


@dataclass(frozen=True)
class MeanAblation:
    """Replace the attention output of ``layers`` by its mean over a reference batch
    (over sequences and positions), or with ``heads`` only those heads' ``z``.

    Build it with ``MeanAblation.fit(model, tokens, layers, heads)``; ``means`` maps a layer to
    a ``[d_model]`` vector (whole block) or a ``[head, d_head]`` array (per head).
    """

    layers: tuple[int, ...]
    heads: tuple[int, ...] | None = None
    means: dict[int, Tensor] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    @torch.no_grad()
    def fit(
        cls,
        model,
        tokens: Tensor,
        layers: int | Sequence[int],
        heads: int | Sequence[int] | None = None,
    ) -> MeanAblation:
        layers_t, heads_t = _tuple(layers), _tuple(heads)
        _check_components(model, layers_t, heads_t, "MeanAblation")
        names = [sites.attn_out(layer) if heads_t is None else sites.z(layer) for layer in layers_t]
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        means = {layer: cache[name].float().mean(dim=(0, 1)) for layer, name in zip(layers_t, names)}
        return cls(layers_t, heads_t, means)

    def __post_init__(self):
        missing = [layer for layer in self.layers if layer not in self.means]
        if missing:
            raise InputError(f"MeanAblation has no means for layers {missing}; build it with MeanAblation.fit")

    @property
    def label(self) -> str:
        return _components_label(self.layers, self.heads, "mean:")

    def hooks(self, model) -> list[Hook]:
        _check_components(model, self.layers, self.heads, "MeanAblation")
        if self.heads is None:
            return [(sites.attn_out(layer), _replace_by(self.means[layer])) for layer in self.layers]
        return [(sites.z(layer), _set_heads_to(self.heads, self.means[layer])) for layer in self.layers]


def _replace_by(mean: Float[Tensor, " d_model"]) -> HookFn:
    def fn(x: Tensor, hook) -> Tensor:
        return mean.to(x).expand_as(x).clone()

    return fn


def hooks_for(model, interventions: Sequence[Intervention]) -> list[Hook]:
    """Concatenate the hook lists of ``interventions`` (composition)."""
    out: list[Hook] = []
    for iv in interventions:
        out.extend(iv.hooks(model))
    return out


def label_of(interventions: Sequence[Intervention]) -> str:
    return "+".join(iv.label for iv in interventions) or "baseline"


@dataclass(frozen=True)
class RowGroups:
    """Several configurations in one batch: the rows ``groups[i][0]`` (batch indices) run under
    the interventions ``groups[i][1]``; rows in no group run unmodified. Every hook of a group
    sees only its group's rows, so any intervention whose hooks act on each batch row on its
    own (all of ours) gives each row what it would give it in a batch of its own."""

    groups: tuple[tuple[tuple[int, ...], tuple[Intervention, ...]], ...]

    @property
    def label(self) -> str:
        return "row-groups"

    def hooks(self, model) -> list[Hook]:
        flat = [r for rows, _ in self.groups for r in rows]
        if len(set(flat)) != len(flat):
            raise InputError("RowGroups: a batch row belongs to more than one group")
        by_name: dict[str, list[tuple[Tensor, HookFn]]] = {}
        for rows, ivs in self.groups:
            index = torch.tensor(rows, dtype=torch.long)
            for name, fn in hooks_for(model, ivs):
                by_name.setdefault(name, []).append((index, fn))
        return [(name, _on_rows(pairs)) for name, pairs in by_name.items()]


def _on_rows(pairs: list[tuple[Tensor, HookFn]]) -> HookFn:
    def fn(act: Tensor, hook) -> Tensor:
        out = act.clone()
        for rows, f in pairs:  # in order, so hooks composed within a group see each other's edits
            rows = rows.to(act.device)
            sub = out[rows]
            res = f(sub, hook)
            out[rows] = sub if res is None else res
        return out

    return fn


@contextmanager
def apply(model, *interventions: Intervention) -> Iterator:
    """Context in which ``interventions`` are active on ``model``; all hooks are removed on exit."""
    with model.hooks(fwd_hooks=hooks_for(model, interventions)):
        yield model
