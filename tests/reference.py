"""Independent computations written directly from the HF modules, for reference tests.

Nothing here goes through TransformerLens or interp's hooks: the attention bypass is applied
by replacing each HF self-attention module's output with the per-token value/output
projection (and, for a subset of heads, by recombining HF's own attention weights).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM


def load_hf(folder) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager").eval()


def attention_modules(hf) -> list[torch.nn.Module]:
    if hf.config.model_type == "gpt_neox":
        return [layer.attention for layer in hf.gpt_neox.layers]
    if hf.config.model_type in ("llama", "qwen2"):
        return [layer.self_attn for layer in hf.model.layers]
    return [block.attn.attention for block in hf.transformer.h]


def _values_and_proj(attn, x: torch.Tensor, n_heads: int):
    """Per-head values [batch, pos, head, d_head] of input x, and the output projection."""
    b, s, _ = x.shape
    if hasattr(attn, "query_key_value"):  # GPT-NeoX: per-head interleaved (q, k, v)
        qkv = attn.query_key_value(x).view(b, s, n_heads, -1)
        d = qkv.shape[-1] // 3
        return qkv[..., 2 * d :], attn.dense
    if hasattr(attn, "o_proj"):  # Llama / Qwen2: key/value heads shared by groups of query heads
        v = attn.v_proj(x).view(b, s, -1, attn.head_dim)
        return v[:, :, [j // attn.num_key_value_groups for j in range(n_heads)]], attn.o_proj
    return attn.v_proj(x).view(b, s, n_heads, -1), attn.out_proj


def bypass_hook(n_heads: int, heads: list[int] | None):
    """Forward hook for an HF self-attention module: identity attention for ``heads`` (all if None)."""

    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        v, proj = _values_and_proj(module, x, n_heads)
        if heads is None:
            z = v
        else:
            weights = output[1]  # [batch, head, q, k], HF eager attention probabilities
            z = torch.einsum("bhqk,bkhd->bqhd", weights, v).clone()
            z[:, :, heads] = v[:, :, heads]
        return (proj(z.reshape(*x.shape[:2], -1)), output[1])

    return hook


class HFBypass:
    """Context manager applying the reference bypass to ``layers`` of an HF model."""

    def __init__(self, hf, layers, heads=None):
        self.hf, self.layers, self.heads = hf, list(layers), heads
        self.handles = []

    def __enter__(self):
        mods = attention_modules(self.hf)
        n_heads = self.hf.config.num_attention_heads if hasattr(self.hf.config, "num_attention_heads") else self.hf.config.num_heads
        for layer in self.layers:
            self.handles.append(mods[layer].register_forward_hook(bypass_hook(n_heads, self.heads), with_kwargs=True))
        return self.hf

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def hf_logits(hf, tokens: torch.Tensor) -> torch.Tensor:
    return hf(tokens).logits


@torch.no_grad()
def hf_greedy(hf, prefix: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy decoding by full recomputation (no cache, no EOS stop)."""
    seq = prefix
    for _ in range(n_new):
        nxt = hf(seq).logits[:, -1].argmax(-1)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq[:, prefix.shape[1] :]
