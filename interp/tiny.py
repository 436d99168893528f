"""Tiny seeded random models of the real architectures, saved as ordinary HF folders.

Tests, benchmarks and demos use them: a GPT-NeoX (Pythia-style: parallel residual, partial
rotary, biases on q/k/v/o), a GPT-Neo (sequential residual, learned positions, alternating
global/local attention with a small window), or a grouped-query Llama or Qwen2 (q/k/v biases),
each with a byte-level BPE tokenizer trained
offline on text shipped with CPython. Nothing is downloaded.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPTNeoConfig,
    GPTNeoForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

EOT = "<|endoftext|>"
ARCHS = ("neox", "neo")
GQA_ARCHS = ("llama", "qwen2")  # grouped-query attention (RMSNorm, gated SiLU MLP); Qwen2 has q/k/v biases


def stdlib_texts(max_files: int = 40) -> list[str]:
    """Source text of the first ``max_files`` modules (sorted by path) of CPython's ``json``,
    ``email`` and ``logging`` packages: real text present on every Python installation."""
    root = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    files = sorted(p for pkg in ("json", "email", "logging") for p in (root / pkg).glob("*.py"))
    return [p.read_text(encoding="utf-8", errors="replace") for p in files[:max_files]]


def train_bpe_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style) with ``<|endoftext|>`` as id 0, used as BOS, EOS and UNK."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)


@functools.lru_cache(maxsize=4)
def tiny_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    return train_bpe_tokenizer(stdlib_texts(), vocab_size)


def tiny_config(
    arch: str,
    *,
    n_layers: int = 3,
    d_model: int = 32,
    n_heads: int = 4,
    d_mlp: int | None = None,
    n_ctx: int = 128,
    vocab_size: int = 512,
    window: int = 8,
    rotary_pct: float = 0.25,
    n_kv_heads: int | None = None,
):
    """HF config of a tiny model; GPT-Neo layers alternate global, local, global, ...; Llama and
    Qwen2 have ``n_kv_heads`` key/value heads (default ``n_heads // 2``: grouped-query)."""
    d_mlp = d_mlp or 4 * d_model
    if arch in GQA_ARCHS:
        kind = LlamaConfig if arch == "llama" else Qwen2Config
        return kind(
            vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers, num_attention_heads=n_heads,
            num_key_value_heads=n_kv_heads or max(1, n_heads // 2), intermediate_size=d_mlp,
            max_position_embeddings=n_ctx, bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
        )  # fmt: skip
    if arch == "neox":
        return GPTNeoXConfig(
            vocab_size=vocab_size, hidden_size=d_model, num_hidden_layers=n_layers,
            num_attention_heads=n_heads, intermediate_size=d_mlp, max_position_embeddings=n_ctx,
            rotary_pct=rotary_pct, use_parallel_residual=True, bos_token_id=0, eos_token_id=0,
            tie_word_embeddings=False,
        )  # fmt: skip
    if arch == "neo":
        types = (["global", "local"] * n_layers)[:n_layers]
        return GPTNeoConfig(
            vocab_size=vocab_size, hidden_size=d_model, num_layers=n_layers, num_heads=n_heads,
            intermediate_size=d_mlp, max_position_embeddings=n_ctx,
            attention_types=[[[t], 1] for t in types], window_size=window,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
    raise ValueError(f"arch must be one of {ARCHS + GQA_ARCHS}; got {arch!r}")


def random_model(arch: str, *, seed: int = 0, weight_scale: float = 1.0, **config_kwargs):
    """A seeded randomly initialised HF causal LM in eval mode. ``weight_scale`` multiplies every
    weight matrix (not LayerNorm parameters) to make attention sharper or flatter."""
    torch.manual_seed(seed)
    config = tiny_config(arch, **config_kwargs)
    config._attn_implementation = "eager"
    kinds = {"neox": GPTNeoXForCausalLM, "neo": GPTNeoForCausalLM, "llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM}
    model = kinds[arch](config).eval()
    if weight_scale != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if p.ndim == 2 and "ln" not in name and "norm" not in name:
                    p.mul_(weight_scale)
    return model


def make_tiny_model(
    out_dir: str | Path,
    arch: str = "neox",
    *,
    seed: int = 0,
    tokenizer_vocab: int = 512,
    weight_scale: float = 1.0,
    **config_kwargs,
) -> Path:
    """Save a tiny random model with its tokenizer as an HF folder; return the folder.

    The model's vocabulary (``vocab_size``) defaults to the tokenizer's and may be larger
    (like Pythia's padded unembedding), never smaller.
    """
    tokenizer = tiny_tokenizer(tokenizer_vocab)
    config_kwargs.setdefault("vocab_size", len(tokenizer))
    if config_kwargs["vocab_size"] < len(tokenizer):
        raise ValueError("vocab_size must be at least the tokenizer's length")
    model = random_model(arch, seed=seed, weight_scale=weight_scale, **config_kwargs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
