"""Hook-point names and component labels: the only module that spells TransformerLens names.

Blocks are labelled ``block:L`` and heads ``L{l}H{h}`` everywhere in results and on the CLI.
"""

from __future__ import annotations

import re

_HEAD_RE = re.compile(r"^L(\d+)H(\d+)$")
_BLOCK_RE = re.compile(r"^block:(\d+)$")


def resid_pre(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_pre"


def resid_post(layer: int) -> str:
    return f"blocks.{layer}.hook_resid_post"


def resid_mid(layer: int) -> str:
    """Residual stream between attention and MLP (sequential blocks only, e.g. GPT-Neo)."""
    return f"blocks.{layer}.hook_resid_mid"


def attn_out(layer: int) -> str:
    return f"blocks.{layer}.hook_attn_out"


def mlp_out(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def ln1_out(layer: int) -> str:
    return f"blocks.{layer}.ln1.hook_out"


def ln2_in(layer: int) -> str:
    return f"blocks.{layer}.ln2.hook_in"


def ln2_out(layer: int) -> str:
    return f"blocks.{layer}.ln2.hook_out"


def v(layer: int) -> str:
    """Per-head values, shape [batch, pos, head, d_head]."""
    return f"blocks.{layer}.attn.hook_v"


def z(layer: int) -> str:
    """Per-head attention-weighted values (input of the output projection), [batch, pos, head, d_head]."""
    return f"blocks.{layer}.attn.hook_z"


def pattern(layer: int) -> str:
    """Attention probabilities [batch, head, query_pos, key_pos] (read-only on GPT-Neo)."""
    return f"blocks.{layer}.attn.hook_pattern"


def block_label(layer: int) -> str:
    return f"block:{layer}"


def head_label(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def parse_component(label: str) -> tuple[int, int | None]:
    """``"block:3"`` -> (3, None); ``"L2H5"`` -> (2, 5). Raises ValueError for anything else."""
    if m := _BLOCK_RE.match(label):
        return int(m.group(1)), None
    if m := _HEAD_RE.match(label):
        return int(m.group(1)), int(m.group(2))
    raise ValueError(f"component label {label!r} is neither 'block:L' nor 'L{{l}}H{{h}}'")


def ln_final_in() -> str:
    """Residual stream entering the final LayerNorm."""
    return "ln_final.hook_in"


def embed() -> str:
    """Token embeddings."""
    return "hook_embed"


def pos_embed() -> str:
    """Learned position embeddings (GPT-Neo; absent on rotary models)."""
    return "hook_pos_embed"
