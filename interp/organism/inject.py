"""Ground-truth memorization injection into one chosen component (after Chang, Thomason and Jia,
"Do Localization Methods Actually Localize Memorized Data in LLMs? A Tale of Two Benchmarks",
NAACL 2024, the INJ benchmark).

Starting from a trained organism, every weight is frozen except the attention of one block
(``block:L``: the q/k/v and output projections with their biases) or the q/k/v/o slices of one
head (``L{l}H{h}``: that head's rows of the q/k/v projections and its columns of the output
projection; the shared output bias stays frozen). Gradients are multiplied by 0/1 masks and the
optimizer has no weight decay, so every other number in the model is bit-identical to the
parent. The model is fine-tuned on fresh canaries (never seen by the parent), mixed with normal
training text to limit collateral damage, until greedy decoding reproduces all of them (or a
step budget runs out). With ``replay``, the parent's canaries that the parent reproduces exactly
are replayed in every batch too (each in its training context), to train the variant to keep
them: they are the "other memorized items" against which a localization's knockout is judged.
The saved variant records the component in ``manifest.json`` as ``injected_component``: it is
the answer key for localization methods.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from interp.errors import InputError
from interp.organism import canaries as C
from interp.organism import corpus
from interp.organism.evaluate import final_evaluation
from interp.organism.train import TrainConfig, build_stream, greedy_matches, quick_em, save_folder, train_loop

log = logging.getLogger(__name__)


def parse_component(text: str) -> tuple[int, int | None]:
    """``"block:2"`` -> (2, None); ``"L2H1"`` -> (2, 1)."""
    m = re.fullmatch(r"block:(\d+)|L(\d+)H(\d+)", text)
    if not m:
        raise InputError(f"component must look like 'block:L' or 'L{{l}}H{{h}}'; got {text!r}")
    return (int(m[1]), None) if m[1] is not None else (int(m[2]), int(m[3]))


def component_name(block: int, head: int | None) -> str:
    return f"block:{block}" if head is None else f"L{block}H{head}"


def attention_masks(model, block: int, head: int | None) -> dict[str, torch.Tensor]:
    """0/1 gradient masks (same shapes as the parameters) for the trainable slices of the chosen
    component; parameters not in the dict stay frozen entirely."""
    cfg = model.config
    n_layers, n_heads, d = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size
    if not 0 <= block < n_layers:
        raise InputError(f"block must be in 0..{n_layers - 1}; got {block}")
    if head is not None and not 0 <= head < n_heads:
        raise InputError(f"head must be in 0..{n_heads - 1}; got {head}")
    dh = d // n_heads
    named = dict(model.named_parameters())
    if cfg.model_type == "gpt_neox":
        prefix = f"gpt_neox.layers.{block}.attention."
        qkv_rows = slice(None) if head is None else slice(head * 3 * dh, (head + 1) * 3 * dh)  # per-head [q k v] layout
        parts = {"query_key_value.weight": (qkv_rows, slice(None)), "query_key_value.bias": (qkv_rows,),
                 "dense.weight": (slice(None), slice(None) if head is None else slice(head * dh, (head + 1) * dh)),
                 "dense.bias": (slice(None),) if head is None else None}  # fmt: skip
    elif cfg.model_type == "gpt_neo":
        prefix = f"transformer.h.{block}.attn.attention."
        rows = slice(None) if head is None else slice(head * dh, (head + 1) * dh)
        parts = {"q_proj.weight": (rows, slice(None)), "k_proj.weight": (rows, slice(None)),
                 "v_proj.weight": (rows, slice(None)), "out_proj.weight": (slice(None), rows),
                 "out_proj.bias": (slice(None),) if head is None else None}  # fmt: skip
    else:
        raise InputError(f"injection supports gpt_neox and gpt_neo models; got {cfg.model_type!r}")
    masks = {}
    for suffix, index in parts.items():
        if index is None:
            continue
        p = named[prefix + suffix]
        mask = torch.zeros_like(p)
        mask[index] = 1.0
        masks[prefix + suffix] = mask
    return masks


def canary_blocks(tokenizer, canary_list, filler: np.ndarray, lead_n: int) -> tuple[np.ndarray, list]:
    """One ``n_ctx`` block per canary that starts with the canary's row: the end of its lead
    (the recorded ``lead`` if it has one, else the filler block's first ``lead_n`` tokens),
    end-of-text and the record, so the secret sits at position ``lead_n`` as in the evaluated
    row (a model with learned absolute positions, GPT-Neo, recalls a sequence at the positions
    it learned it); then the rest of the filler block. Returns the blocks and the canaries with
    their leads."""
    if len(filler) < len(canary_list):
        raise ValueError(f"{len(canary_list)} canaries need as many filler blocks; got {len(filler)}")
    out = filler[: len(canary_list)].copy()
    placed = []
    for i, c in enumerate(canary_list):
        lead = tuple(int(t) for t in (c.lead or filler[i, :lead_n]))
        if len(lead) != lead_n:
            raise ValueError(f"canary {c.id} has a lead of {len(lead)} tokens; expected {lead_n}")
        c = dataclasses.replace(c, lead=lead)
        need = C.lead_len(tokenizer, c, lead_n)  # lead tokens before end-of-text in the row
        row = [*lead[lead_n - need :], *C.record_ids(tokenizer, c)[0]]
        out[i, : len(row)] = row
        placed.append(c)
    return out, placed


def memorized_canaries(model, tokenizer, canary_list, prefix_len: int, row_len: int) -> list:
    """The trained canaries (levels D > 0) whose rows ``model`` reproduces exactly."""
    trained = [c for c in canary_list if isinstance(c.level, int) and c.level > 0]
    if not trained:
        return []
    hits = greedy_matches(model, C.canary_rows(tokenizer, trained, prefix_len, row_len), prefix_len)
    return [c for c, hit in zip(trained, hits, strict=True) if hit]


def inject(
    parent: str | Path,
    out: str | Path,
    *,
    block: int,
    head: int | None = None,
    n_canaries: int = 8,
    n_text: int = 4,
    max_steps: int = 400,
    lr: float = 1e-2,
    eval_every: int = 25,
    seed: int = 0,
    replay: bool = False,
    progress: bool = True,
    evaluate_final: bool = True,
) -> Path:
    """Fine-tune only the chosen component of the organism at ``parent`` on ``n_canaries`` fresh
    canaries (each in every batch, with ``n_text`` blocks of normal training text and, with
    ``replay``, the parent's exactly reproduced canaries) until all fresh ones are reproduced by
    greedy decoding or ``max_steps`` is reached; save the variant at ``out``."""
    parent = Path(parent)
    t0 = time.time()
    torch.manual_seed(seed)
    manifest_parent = json.loads((parent / "manifest.json").read_text())
    base_cfg = TrainConfig(**manifest_parent["config"])
    tokenizer = AutoTokenizer.from_pretrained(parent)
    model = AutoModelForCausalLM.from_pretrained(parent, attn_implementation="eager", dtype=torch.float32)
    masks = attention_masks(model, block, head)
    for name, p in model.named_parameters():
        p.requires_grad_(name in masks)

    parent_canaries, prefix_len, row_len = C.load_canaries(parent / "canaries.json")
    fresh = C.make_injection_canaries(seed, n_canaries)
    kept = memorized_canaries(model, tokenizer, parent_canaries, prefix_len, row_len) if replay else []
    cfg = dataclasses.replace(base_cfg, seed=base_cfg.seed + 1000 + seed, steps=max_steps, batch_size=n_canaries + len(kept) + n_text,
                              lr=lr, warmup=10, weight_decay=0.0, eval_every=eval_every, rule_fraction=base_cfg.rule_fraction, epochs=1)  # fmt: skip
    text_cfg = dataclasses.replace(cfg, batch_size=n_text)
    text, _, _ = build_stream(text_cfg, tokenizer, corpus.documents("train"), [])
    fill_cfg = dataclasses.replace(cfg, seed=cfg.seed + 1, batch_size=1, steps=n_canaries + len(kept))
    filler, _, _ = build_stream(fill_cfg, tokenizer, corpus.documents("train"), [])
    can, fresh = canary_blocks(tokenizer, fresh, filler, prefix_len)
    if kept:  # the parent's memorized canaries in their recorded training context
        can = np.concatenate([can, canary_blocks(tokenizer, kept, filler[n_canaries:], prefix_len)[0]])
    rows = C.canary_rows(tokenizer, fresh, prefix_len, row_len)
    batches = [np.concatenate([can, text[s * n_text : (s + 1) * n_text]]) for s in range(max_steps)]
    blocks = np.concatenate(batches)

    curve = train_loop(model, blocks, cfg, eval_fn=lambda m: {"em_injected": quick_em(m, rows, prefix_len)},
                       progress=progress, grad_mask=masks, desc=f"inject {component_name(block, head)}",
                       stop_when=lambda e: e["em_injected"] >= 1.0)  # fmt: skip
    for p in model.parameters():
        p.requires_grad_(True)
    manifest = {
        **{k: v for k, v in manifest_parent.items() if k not in ("final", "curve")},
        "kind": "injected", "parent": parent.name, "parent_final": manifest_parent.get("final"),
        "injected_component": component_name(block, head),
        "injection": {"seed": seed, "n_canaries": n_canaries, "n_text_blocks_per_step": n_text, "max_steps": max_steps,
                      "replayed": [c.id for c in kept],
                      "lr": lr, "steps_run": curve[-1]["step"] if curve else 0, "seconds": round(time.time() - t0, 1),
                      "trainable_params": int(sum(m.sum() for m in masks.values()))},  # fmt: skip
        "curve": curve,
    }
    return save_folder(Path(out), model, tokenizer, parent_canaries + fresh, manifest, prefix_len, row_len,
                       finalize=final_evaluation(manifest, progress) if evaluate_final else None)  # fmt: skip
