"""Final metrics of an organism folder, measured through the same path as any other model.

The folder is loaded with ``interp.models.load_model`` (a raw-mode TransformerBridge) and
scored with ``interp.generation`` and ``interp.metrics``:

- canary exact match and token accuracy per duplication level D (greedy continuation of the
  suffix from the prefix), teacher-forced accuracy and suffix negative log-likelihood, for
  held-out canaries (never trained on) and injected ones if any;
- perplexity on unseen real text: the first blocks of the held-out stdlib files;
- rule-task accuracy on fresh examples per family: greedy generation of the answer (exact
  match) and multiple choice among the answer and 3 distractors by summed log-likelihood of the
  answer tokens (chance 0.25).
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from interp import metrics
from interp.generation import greedy_generate, teacher_forced_logits
from interp.models import load_model
from interp.organism import canaries as C
from interp.organism import rules
from interp.organism.corpus import heldout_blocks

N_RULE_ITEMS = 64  # per family
N_DISTRACTORS = 3
N_HELDOUT_BLOCKS = 128


def load_folder_canaries(folder: str | Path) -> tuple[list[C.Canary], int, int]:
    return C.load_canaries(Path(folder) / "canaries.json")


def canary_em(model, rows: np.ndarray, prefix_len: int) -> dict:
    """For ``rows`` (n, row_len): mean exact match and token accuracy of greedy suffixes, and
    teacher-forced accuracy and suffix negative log-likelihood (nats, summed over the suffix)."""
    t = torch.from_numpy(rows)
    suffix_len = t.shape[1] - prefix_len
    gen = greedy_generate(model, t[:, :prefix_len], suffix_len)
    suffix = t[:, prefix_len:]
    logits = metrics.suffix_slice(teacher_forced_logits(model, t), prefix_len, suffix_len)
    return {"n": len(rows), "em": float(metrics.exact_match(gen, suffix).float().mean()),
            "ta": float(metrics.token_accuracy(gen, suffix).mean()),
            "tf_acc": float(metrics.teacher_forced_accuracy(logits, suffix).mean()),
            "suffix_nll": float(metrics.suffix_nll(logits, suffix).mean())}  # fmt: skip


def heldout_perplexity(model, tokenizer, n_ctx: int, n_blocks: int = N_HELDOUT_BLOCKS) -> dict:
    """Perplexity (exp of mean next-token NLL in nats) over held-out corpus blocks."""
    blocks = torch.from_numpy(heldout_blocks(tokenizer, n_ctx, n_blocks))
    logits = teacher_forced_logits(model, blocks, batch_size=16)[:, :-1]
    nll = metrics.suffix_token_nll(logits, blocks[:, 1:]).mean()
    return {"tokens": int(blocks[:, 1:].numel()), "nll": float(nll), "perplexity": float(math.exp(nll))}


def _logprob_sums(model, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
    """Summed log-probability of each answer given its context, batched by lengths."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, (c, a) in enumerate(pairs):
        groups[(len(c), len(a))].append(i)
    out = [0.0] * len(pairs)
    for (lc, la), idx in groups.items():
        toks = torch.tensor([pairs[i][0] + pairs[i][1] for i in idx])
        logits = teacher_forced_logits(model, toks, start=lc - 1)[:, :la]
        lp = -metrics.suffix_token_nll(logits, toks[:, lc:]).sum(1)
        for j, i in enumerate(idx):
            out[i] = float(lp[j])
    return out


def rule_accuracy(model, tokenizer, seed: int, n_items: int = N_RULE_ITEMS) -> dict:
    """Per family and overall: generation exact match and 4-way multiple-choice accuracy."""
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    result = {}
    for family in sorted(rules.FAMILIES):
        rng = random.Random(f"rules-eval:{family}:{seed}")
        items = [rules.FAMILIES[family](rng) for _ in range(n_items)]
        choices = [[a, *rules.distractors(family, c, a, rng, N_DISTRACTORS)] for c, a in items]
        ctx_ids = [enc(c) for c, _ in items]
        # generation: group by (context length, answer length)
        gen_ok = [False] * n_items
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (c, a) in enumerate(items):
            groups[(len(ctx_ids[i]), len(enc(a)))].append(i)
        for (_, la), idx in groups.items():
            g = greedy_generate(model, torch.tensor([ctx_ids[i] for i in idx]), la)
            for j, i in enumerate(idx):
                gen_ok[i] = g[j].tolist() == enc(items[i][1])
        pairs = [(ctx_ids[i], enc(ch)) for i in range(n_items) for ch in choices[i]]
        lp = np.asarray(_logprob_sums(model, pairs)).reshape(n_items, 1 + N_DISTRACTORS)
        result[family] = {"n": n_items, "generation_em": float(np.mean(gen_ok)),
                          "mc_acc": float(np.mean(lp.argmax(1) == 0)), "mc_chance": 1 / (1 + N_DISTRACTORS)}  # fmt: skip
    result["mean_generation_em"] = float(np.mean([v["generation_em"] for v in result.values()]))
    result["mean_mc_acc"] = float(np.mean([v["mc_acc"] for k, v in result.items() if isinstance(v, dict)]))
    return result


def evaluate_folder(folder: str | Path, *, progress: bool = False) -> dict:
    """All final metrics of an organism folder (see the module docstring)."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    model = load_model(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    canary_list, prefix_len, row_len = load_folder_canaries(folder)
    em_by_level = {}
    for level in sorted({c.level for c in canary_list}, key=str):
        rows = C.canary_rows(tokenizer, C.select(canary_list, level), prefix_len, row_len)
        em_by_level[str(level)] = canary_em(model, rows, prefix_len)
    return {
        "canary_em": em_by_level,
        "heldout_perplexity": heldout_perplexity(model, tokenizer, int(manifest["config"]["n_ctx"])),
        "rules": rule_accuracy(model, tokenizer, int(manifest["seed"])),
    }


def markdown_summary(folders: list[str | Path]) -> str:
    """A Markdown table of the final metrics recorded in each folder's manifest."""
    head = ("| model | EM D=1 | D=4 | D=16 | D=64 | held-out canaries | injected | "
            "suffix NLL (nats) D=1/4/16/64, held-out | held-out ppl | rule MC acc (chance 0.25) | rule gen EM | train s |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for folder in folders:
        m = json.loads((Path(folder) / "manifest.json").read_text())
        f = m["final"]
        em = {k: v["em"] for k, v in f["canary_em"].items()}
        name = Path(folder).name + (f" ({m['injected_component']})" if "injected_component" in m else "")
        secs = m.get("injection", {}).get("seconds", m.get("train_seconds"))
        cells = [name, *(f"{em.get(str(d), float('nan')):.2f}" for d in (1, 4, 16, 64)), f"{em.get('0', float('nan')):.2f}",
                 f"{em[C.INJECTED]:.2f}" if C.INJECTED in em else "-", _nll_cell(f["canary_em"]),
                 f"{f['heldout_perplexity']['perplexity']:.1f}",
                 f"{f['rules']['mean_mc_acc']:.2f}", f"{f['rules']['mean_generation_em']:.2f}", f"{secs:.0f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _nll_cell(canary_em: dict) -> str:
    def get(level):
        v = canary_em.get(level, {}).get("suffix_nll")
        return "-" if v is None else f"{v:.1f}"

    return "/".join(get(str(d)) for d in (1, 4, 16, 64)) + ", " + get("0")


def final_evaluation(manifest: dict, progress: bool):
    """``finalize`` for ``save_folder``: record the saved folder's final metrics in its manifest."""
    def finalize(folder: Path) -> None:
        manifest["final"] = evaluate_folder(folder, progress=progress)
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))

    return finalize
