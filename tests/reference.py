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


def _output_projection(attn) -> torch.nn.Module:
    for name in ("dense", "o_proj", "out_proj"):  # GPT-NeoX, Llama/Qwen2, GPT-Neo
        if hasattr(attn, name):
            return getattr(attn, name)
    raise ValueError(f"no output projection found on {type(attn).__name__}")


def bypass_hook(n_heads: int):
    """Forward hook for an HF self-attention module: identity attention for every head (the
    output is the value/output projection of each token's own value; with a KV cache the
    module's input is the new tokens, whose own values these are)."""

    def hook(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        v, proj = _values_and_proj(module, x, n_heads)
        return (proj(v.reshape(*x.shape[:2], -1)), *output[1:])

    return hook


class HFBypass:
    """Context manager applying the reference bypass to ``layers`` of an HF model: every head,
    or only ``heads``. For some heads, a pre-hook on the attention module keeps its input and a
    pre-hook on its output projection overwrites those heads' slices of the projection's input
    (HF's attention output, heads one after another) with each token's own values; the other
    heads keep HF's own attention. Both work with a KV cache."""

    def __init__(self, hf, layers, heads=None):
        self.hf, self.layers, self.heads = hf, list(layers), heads
        self.handles = []

    def __enter__(self):
        mods = attention_modules(self.hf)
        n_heads = self.hf.config.num_attention_heads if hasattr(self.hf.config, "num_attention_heads") else self.hf.config.num_heads
        for layer in self.layers:
            if self.heads is None:
                self.handles.append(mods[layer].register_forward_hook(bypass_hook(n_heads), with_kwargs=True))
                continue
            store = {}

            def keep_input(module, args, kwargs, store=store):
                store["x"] = args[0] if args else kwargs["hidden_states"]

            def overwrite(proj, args, module=mods[layer], store=store):
                v, _ = _values_and_proj(module, store.pop("x"), n_heads)
                z = args[0].view(*v.shape).clone()
                z[:, :, self.heads] = v[:, :, self.heads]
                return (z.reshape(args[0].shape), *args[1:])

            proj = _output_projection(mods[layer])
            self.handles.append(mods[layer].register_forward_pre_hook(keep_input, with_kwargs=True))
            self.handles.append(proj.register_forward_pre_hook(overwrite))
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
