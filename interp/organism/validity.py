"""The answer key's validity rule (docs/answer_key.md), fixed before any injected organism was
measured: ``measure`` takes the numbers from an organism folder and its parent, ``judge`` applies
the thresholds below and returns pass/fail per clause (V1-V5) with the numbers.

The thresholds are the pre-registered ones; they are constants here so that nothing in the
build can relax them for one organism.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open

from interp.organism import canaries as C

MIN_CANARIES = 32  # V1
MIN_EM = 0.90  # V1
MAX_PARENT_SECRET_TF_ACC = 0.30  # V2
MAX_HELDOUT_EM_SHIFT = 0.02  # V2
MAX_PPL_RATIO = 1.05  # V3
MAX_TASK_SHIFT = 0.03  # V3
MAX_PARENT_ROWS_LOST = 1  # V3
SHAM = "sham"  # the canary level of the sham's never-trained canaries


@dataclass
class Verdict:
    """``valid`` and, per clause, ``{"pass": bool, ...numbers}``."""

    valid: bool
    clauses: dict[str, dict] = field(default_factory=dict)

    def failed(self) -> list[str]:
        return [k for k, v in self.clauses.items() if not v["pass"]]

    def to_json(self) -> dict:
        return {"valid": self.valid, "clauses": self.clauses}


# ---------------------------------------------------------------- measurement


def secret_token_counts(tokenizer, canary_list: list[C.Canary]) -> list[int]:
    """Per canary: how many tokens of its suffix belong to the secret (tokens that start inside
    the secret's characters; the first starts the suffix)."""
    out = []
    for c in canary_list:
        enc = tokenizer(c.text, return_offsets_mapping=True, add_special_tokens=False)
        end = c.secret_start + len(c.secret)
        out.append(sum(1 for a, _ in enc["offset_mapping"] if c.secret_start <= a < end))
    return out


def _canary_numbers(model, rows: np.ndarray, prefix_len: int, n_secret: list[int] | None = None) -> dict:
    """Per-row exact match (greedy), and mean teacher-forced accuracy on the secret tokens."""
    from interp import metrics
    from interp.generation import greedy_generate, teacher_forced_logits

    if len(rows) == 0:
        return {"n": 0, "exact": [], "em": float("nan"), "secret_tf_acc": float("nan")}
    t = torch.from_numpy(rows)
    suffix_len = t.shape[1] - prefix_len
    gen = greedy_generate(model, t[:, :prefix_len], suffix_len)
    exact = metrics.exact_match(gen, t[:, prefix_len:]).tolist()
    out = {"n": len(rows), "exact": [bool(e) for e in exact], "em": float(np.mean(exact))}
    if n_secret is not None:
        logits = metrics.suffix_slice(teacher_forced_logits(model, t), prefix_len, suffix_len)
        hit = (logits.argmax(-1) == t[:, prefix_len:]).float()
        out["secret_tf_acc"] = float(np.mean([float(hit[i, :k].mean()) for i, k in enumerate(n_secret)]))
    return out


def model_numbers(folder: str | Path, *, injected: list[C.Canary], parent_memorized: list[C.Canary],
                  heldout: list[C.Canary], tasks=None, progress: bool = False) -> dict:  # fmt: skip
    """Everything the rule reads that depends on one model's weights (parent or organism)."""
    from transformers import AutoTokenizer

    from interp import benchmarks
    from interp.models import load_model
    from interp.organism import evaluate

    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    _, prefix_len, row_len = C.load_canaries(folder / "canaries.json")
    model = load_model(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = lambda cs: C.canary_rows(tokenizer, cs, prefix_len, row_len)  # noqa: E731
    tasks = benchmarks.resolve_tasks(sorted(_builtin())) if tasks is None else tasks
    acc = benchmarks.evaluate(model, tasks, {"base": []}, progress=progress)
    return {
        "injected": _canary_numbers(model, rows(injected), prefix_len, secret_token_counts(tokenizer, injected)),
        "parent_memorized": _canary_numbers(model, rows(parent_memorized), prefix_len),
        "heldout_canaries": _canary_numbers(model, rows(heldout), prefix_len),
        "heldout_perplexity": evaluate.heldout_perplexity(model, tokenizer, int(manifest["config"]["n_ctx"]))["perplexity"],
        "tasks": {r.task: float(r.acc) for r in acc.itertuples()},
    }


def target_numbers(folder: str | Path, targets: list[C.Canary]) -> dict:
    """``model_numbers``' ``injected`` entry alone (exact match and secret accuracy on ``targets``)."""
    from transformers import AutoTokenizer

    from interp.models import load_model

    folder = Path(folder)
    _, prefix_len, row_len = C.load_canaries(folder / "canaries.json")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = C.canary_rows(tokenizer, targets, prefix_len, row_len)
    return _canary_numbers(load_model(folder), rows, prefix_len, secret_token_counts(tokenizer, targets))


def _builtin() -> list[str]:
    from interp import tasks

    return list(tasks.BUILTIN)


def parent_memorized(parent: str | Path) -> list[C.Canary]:
    """The parent's trained canaries (any level D > 0) that it reproduces exactly (greedy)."""
    from transformers import AutoTokenizer

    from interp.models import load_model

    parent = Path(parent)
    canary_list, prefix_len, row_len = C.load_canaries(parent / "canaries.json")
    trained = [c for c in canary_list if isinstance(c.level, int) and c.level > 0]
    tokenizer = AutoTokenizer.from_pretrained(parent)
    hits = _canary_numbers(load_model(parent), C.canary_rows(tokenizer, trained, prefix_len, row_len), prefix_len)["exact"]
    return [c for c, h in zip(trained, hits, strict=True) if h]


def changed_outside(parent_weights: str | Path, organism_weights: str | Path, masks: dict[str, torch.Tensor]) -> dict:
    """V4's numbers: compare two safetensors files tensor by tensor. ``masks`` maps the declared
    component's parameter names to 0/1 tensors (1 = may change). Returns the names of tensors
    that differ, how many numbers differ inside and outside the component, and the tensors whose
    sets of names differ."""
    with safe_open(str(parent_weights), "pt") as a, safe_open(str(organism_weights), "pt") as b:
        ka, kb = set(a.keys()), set(b.keys())
        changed, inside, outside, where = [], 0, 0, []
        for name in sorted(ka & kb):
            x, y = a.get_tensor(name), b.get_tensor(name)
            if x.shape != y.shape:
                changed.append(name)
                outside += max(x.numel(), y.numel())
                where.append(name)
                continue
            diff = x != y
            if not diff.any():
                continue
            changed.append(name)
            mask = masks.get(_param_name(name, masks))
            allowed = mask.bool() if mask is not None else torch.zeros_like(diff)
            inside += int((diff & allowed).sum())
            n_out = int((diff & ~allowed).sum())
            outside += n_out
            if n_out:
                where.append(name)
    return {"changed_tensors": changed, "numbers_changed_inside": inside, "numbers_changed_outside": outside,
            "tensors_changed_outside": where, "tensor_sets_differ": sorted(ka ^ kb)}  # fmt: skip


def _param_name(stored: str, masks: dict) -> str:
    """Safetensors names may lack the model's top prefix (tied or saved without it): match by suffix."""
    if stored in masks:
        return stored
    hits = [m for m in masks if m.endswith("." + stored) or stored.endswith("." + m)]
    return hits[0] if len(hits) == 1 else stored


def context_needed(tokenizer, injected: list[C.Canary], prefix_len: int, row_len: int) -> dict:
    """V5's numbers: per canary, whether another injected canary has the same last prefix token
    and a different suffix (then the suffix cannot be read off that token alone)."""
    rows = C.canary_rows(tokenizer, injected, prefix_len, row_len)
    by_last: dict[int, set] = defaultdict(set)
    for r in rows:
        by_last[int(r[prefix_len - 1])].add(tuple(int(t) for t in r[prefix_len:]))
    ambiguous = [len(by_last[int(r[prefix_len - 1])]) >= 2 for r in rows]
    return {"n": len(rows), "needs_context": int(sum(ambiguous)), "last_prefix_tokens": len(by_last)}


def measure(organism: str | Path, parent: str | Path, masks: dict[str, torch.Tensor], *, tasks=None,
            parent_numbers: dict | None = None, parent_memorized_ids: list[str] | None = None,
            parent_retain_ids: Sequence[str] = (), progress: bool = False) -> dict:  # fmt: skip
    """All numbers the rule reads, from the files of ``organism`` and ``parent`` (HF folders with
    ``canaries.json`` and ``manifest.json``). ``parent_numbers`` / ``parent_memorized_ids`` may be
    passed from an earlier call with the same parent and canaries (the parent does not change).
    ``parent_retain_ids``: the parent's memorized canaries the retain term used; V3 checks only
    the others, and they must be at least half of all its memorized canaries."""
    from transformers import AutoTokenizer

    organism, parent = Path(organism), Path(parent)
    canary_list, prefix_len, row_len = C.load_canaries(organism / "canaries.json")
    injected = C.select(canary_list, C.INJECTED)
    sham = C.select(canary_list, SHAM)
    parent_list, _, _ = C.load_canaries(parent / "canaries.json")
    if parent_memorized_ids is None:
        kept = parent_memorized(parent)
    else:
        ids = set(parent_memorized_ids)
        kept = [c for c in parent_list if c.id in ids]
    retained = [c for c in kept if c.id in set(parent_retain_ids)]
    kept = [c for c in kept if c.id not in set(parent_retain_ids)]
    heldout = C.select(parent_list, C.HELDOUT)
    targets = injected or sham
    kw = dict(injected=targets, parent_memorized=kept, heldout=heldout, tasks=tasks, progress=progress)
    if parent_numbers is None:
        parent_numbers = model_numbers(parent, **kw)
    else:  # the parent's general numbers are reused; its numbers on these canaries are not
        parent_numbers = {**parent_numbers, "injected": target_numbers(parent, targets)}
    org = model_numbers(organism, **kw)
    tokenizer = AutoTokenizer.from_pretrained(organism)
    return {
        "kind": "sham" if sham and not injected else "injected",
        "organism": org, "parent": parent_numbers, "parent_memorized_ids": [c.id for c in kept],
        "parent_retained_ids": [c.id for c in retained],
        "weights": changed_outside(parent / "model.safetensors", organism / "model.safetensors", masks),
        "context": context_needed(tokenizer, targets, prefix_len, row_len) if targets else {"n": 0, "needs_context": 0},
    }  # fmt: skip


# ---------------------------------------------------------------- the rule


def judge(numbers: dict) -> Verdict:
    """Apply V1-V5 (injected) or V3-V4 (sham) to ``measure``'s numbers."""
    org, par = numbers["organism"], numbers["parent"]
    inj, pinj = org["injected"], par["injected"]
    c: dict[str, dict] = {}
    n_exact = int(sum(inj["exact"]))
    c["V1"] = {"pass": inj["n"] >= MIN_CANARIES and inj["n"] > 0 and n_exact >= MIN_EM * inj["n"],
               "n_canaries": inj["n"], "n_exact": n_exact, "em": inj["em"]}  # fmt: skip
    shift = abs(org["heldout_canaries"]["em"] - par["heldout_canaries"]["em"])
    p_exact = int(sum(pinj["exact"]))
    c["V2"] = {"pass": p_exact == 0 and pinj["secret_tf_acc"] <= MAX_PARENT_SECRET_TF_ACC and shift <= MAX_HELDOUT_EM_SHIFT + 1e-9,
               "parent_exact": p_exact, "parent_secret_tf_acc": pinj["secret_tf_acc"],
               "heldout_canaries_em": org["heldout_canaries"]["em"], "parent_heldout_canaries_em": par["heldout_canaries"]["em"]}  # fmt: skip
    ratio = org["heldout_perplexity"] / par["heldout_perplexity"]
    shifts = {t: org["tasks"][t] - par["tasks"][t] for t in par["tasks"] if t in org["tasks"]}
    worst = max((abs(v) for v in shifts.values()), default=0.0)
    kept, n_par = int(sum(org["parent_memorized"]["exact"])), org["parent_memorized"]["n"]
    n_retained = len(numbers.get("parent_retained_ids", ()))  # used by the retain term: not checked
    c["V3"] = {"pass": ratio <= MAX_PPL_RATIO and worst <= MAX_TASK_SHIFT + 1e-9 and n_par - kept <= MAX_PARENT_ROWS_LOST
               and n_par >= n_retained and set(org["tasks"]) == set(par["tasks"]) and len(par["tasks"]) > 0,
               "perplexity_ratio": ratio, "perplexity": org["heldout_perplexity"], "parent_perplexity": par["heldout_perplexity"],
               "task_shift": shifts, "worst_task_shift": worst, "parent_memorized": n_par, "parent_memorized_kept": kept,
               "parent_memorized_retained": n_retained}  # fmt: skip
    w = numbers["weights"]
    c["V4"] = {"pass": w["numbers_changed_outside"] == 0 and not w["tensor_sets_differ"], **w}
    ctx = numbers["context"]
    c["V5"] = {"pass": ctx["n"] > 0 and ctx["needs_context"] == ctx["n"], **ctx}
    used = ("V3", "V4") if numbers["kind"] == "sham" else ("V1", "V2", "V3", "V4", "V5")
    if numbers["kind"] == "sham":
        c = {k: v for k, v in c.items() if k in used}
    return Verdict(valid=all(c[k]["pass"] for k in used), clauses=c)
