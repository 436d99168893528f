"""The answer key: injected organisms shipped as deltas against their parent (docs/answer_key.md).

- ``Recipe`` and ``train_component``: train only one declared component (a head or one block's
  attention) of a parent organism on fresh canaries, with a retain term (KL to the parent on
  fresh records of the canaries' format, on training text, and from recipe version 6 on the
  retain half of the parent's memorized canaries, ``parent_split``: V3 checks the other half);
  the sham has the retain term only.
- ``write_delta`` / ``materialize``: an organism ships as the changed tensors
  (``delta.safetensors``) and ``manifest.json``; ``materialize`` rebuilds the complete Hugging Face
  folder in the interp cache on first use, and checks the rebuilt weights' sha256.
- ``build``: for each position of a family (every block, seeded head positions, the sham), train
  the first candidate recipe and, if the rule (``interp.organism.validity``) fails it, one more
  chosen by the failed clause; ship the first valid one. Every trial is written to
  ``build.json`` as it ends, so an interrupted build resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from interp.errors import InputError
from interp.fingerprint import cache_dir, file_sha256
from interp.outputs import make_readable, staged_folder
from interp.results import write_json
from interp.organism import DATA_DIR
from interp.organism import canaries as C
from interp.organism import validity as V

log = logging.getLogger(__name__)

KEY_DIR = DATA_DIR / "key"
N_HEAD_POSITIONS = 8
FORMAT = 1
PARENT_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass(frozen=True)
class Recipe:
    """One candidate of the injection recipe (docs/answer_key.md)."""

    lr: float = 1e-2
    max_steps: int = 1500
    warmup: int = 20
    min_lr_frac: float = 0.01
    n_canaries: int = 32
    canary_batch: int = 32  # injected rows per step (the canaries take turns when fewer than n_canaries)
    n_fresh: int = 8  # fresh records per step in the retain term
    n_text: int = 2  # training-text blocks per step in the retain term
    w_fresh: float = 1.0
    w_text: float = 1.0
    eval_every: int = 25
    target_em: float = 0.97
    clip: float = 1.0
    pull: float = 1.0  # decoupled decay of the trained slices toward the parent's values, per unit of rate
    schedule: str = "constant"  # after the warm-up: "constant" until the stop, or "cosine" to min_lr_frac * lr
    anneal: int = 100  # steps after the stop, the rate falling linearly to 0 (Adam's steps are ~lr
    # in size whatever the gradient, so without it the weights stop mid-jitter around the retain optimum)
    w_parent: float = 0.0  # KL to the parent on the retain half of its memorized canaries (recipe version 6)
    parent_partial: bool = False  # the parent term also holds the trained canaries the parent does not reproduce
    n_parent: int = 0  # parent-term rows per step, taking turns (0: all of them every step)
    text_rule_fraction: float | None = None  # share of rule-task documents in the retain text (None: the parent's own)
    train_qk: bool = True  # False: only the value and output slices train; the attention pattern stays the parent's
    hard_negatives: float = 0.0  # share of the fresh records that reuse an injected canary's first name, city and kind
    record_positions: str = "all"  # KL on records at "all" positions, or only where the suffix is predicted
    template: str = "record"  # the injected canaries' and fresh records' format (``canaries.TEMPLATES``); "vault" is one no parent saw

    def __post_init__(self):
        checks = [(self.schedule in ("constant", "cosine"), f"schedule must be 'constant' or 'cosine'; got {self.schedule!r}"),
                  (self.record_positions in ("all", "suffix"), f"record_positions must be 'all' or 'suffix'; got {self.record_positions!r}"),
                  (self.template in C.TEMPLATES, f"template must be one of {', '.join(C.TEMPLATES)}; got {self.template!r}"),
                  (self.hard_negatives == 0.0 or self.template == "record", "hard_negatives are records of the 'record' template only"),
                  (0.0 <= self.hard_negatives <= 1.0, f"hard_negatives is a share of the fresh records, in [0, 1]; got {self.hard_negatives}"),
                  (self.text_rule_fraction is None or 0.0 <= self.text_rule_fraction < 1.0,
                   f"text_rule_fraction must be in [0, 1); got {self.text_rule_fraction}")]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    def lr_at(self, step: int, horizon: int | None = None) -> float:
        horizon = self.max_steps if horizon is None else horizon
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        if self.schedule == "constant":
            return float(self.lr)
        t = min(1.0, (step - self.warmup) / max(1, horizon - self.warmup))
        return float(self.lr * (self.min_lr_frac + (1 - self.min_lr_frac) * 0.5 * (1 + np.cos(np.pi * t))))


# The candidates (fixed before the build): the first is tried at every position; if it fails,
# the failed clause picks one more: V1 (too few canaries reproduced) a higher learning rate, any
# other clause a stronger pull toward the parent. At most two trials per position. Rates are
# multiples of the parent's own peak training rate (GPT-NeoX 2e-3, GPT-Neo 5e-4: GPT-Neo does
# not scale its attention scores and trains at a quarter of the rate).
FIRST_LR, V1_LR = 5.0, 10.0


def candidates_for(parent: Path) -> tuple[Recipe, Recipe, Recipe]:
    """``(first, if V1 alone fails, if another clause fails)`` for the organism at ``parent``
    (recipe version 6: the retain term adds the retain half of the parent's memorized canaries;
    KL on records only where the suffix is predicted; a weak pull; stop at 31 of 32 exact)."""
    base = _parent_lr(parent)
    first = Recipe(lr=FIRST_LR * base, max_steps=1500, w_parent=1.0, record_positions="suffix", pull=0.1, target_em=0.95)
    return first, dataclasses.replace(first, lr=V1_LR * base), dataclasses.replace(first, w_fresh=4.0, n_fresh=32)


def sham_recipe(parent: Path) -> Recipe:
    """The sham's recipe: the first candidate's rate, cosine over its 400 steps (recipe version 4;
    the shipped shams were built with it)."""
    return Recipe(lr=FIRST_LR * _parent_lr(parent), max_steps=1200, schedule="cosine")


def _parent_lr(parent: Path) -> float:
    from interp.organism.train import TrainConfig

    return TrainConfig(**json.loads((Path(parent) / "manifest.json").read_text())["config"]).lr


def _same_recipe(recorded: dict, recipe: Recipe) -> bool:
    """Whether a recorded trial ran ``recipe`` (records before recipe version 5 had no schedule:
    cosine; before version 6 no parent retain term and KL on records at every position)."""
    return {"schedule": "cosine", "w_parent": 0.0, "record_positions": "all", "parent_partial": False, "n_parent": 0,
            "text_rule_fraction": None, "train_qk": True,
            "hard_negatives": 0.0, "template": "record", **recorded}.items() >= dataclasses.asdict(recipe).items()


def next_candidate(candidates: tuple[Recipe, ...], failed: list[str]) -> Recipe:
    """The second trial's recipe after the first failed the clauses ``failed``."""
    return candidates[1] if failed == ["V1"] else candidates[2]


SHAM_STEPS = 400
# Bumped whenever the recipe's code changes (recorded in build.json and each manifest). Positions
# whose first trial ran other candidates are rebuilt, their trials kept as "earlier_trials"; a
# build made from other parent weights is kept under "superseded".
RECIPE_VERSION = 6
N_FRESH_POOL = 256


def head_positions(n_layers: int, n_heads: int, arch: str, n: int = N_HEAD_POSITIONS) -> list[tuple[int, int]]:
    """The key's head positions for a family: ``n`` distinct (block, head) pairs drawn by a seed
    that names the family only."""
    rng = random.Random(f"key-heads:{arch}")
    return sorted(rng.sample([(b, h) for b in range(n_layers) for h in range(n_heads)], n))


def sham_head(n_layers: int, n_heads: int, arch: str) -> tuple[int, int]:
    rng = random.Random(f"key-sham:{arch}")
    return rng.randrange(n_layers), rng.randrange(n_heads)


def parent_split(memorized_ids: list[str], arch: str) -> tuple[list[str], list[str]]:
    """The parent's memorized canaries split by a seed that names the family only: ``(retain,
    check)``. The retain term may use the first part; V3 checks the second, which holds at least
    half of them (docs/answer_key.md, recipe version 6)."""
    ids = sorted(memorized_ids)
    random.Random(f"key-parent-split:{arch}").shuffle(ids)
    n_retain = len(ids) // 2
    return sorted(ids[:n_retain]), sorted(ids[n_retain:])


def key_canaries(tag: str, n: int, level: str | int, tokenizer=None, prefix_len: int = C.PREFIX_LEN,
                 row_len: int = C.ROW_LEN, template: str = "record") -> list[C.Canary]:  # fmt: skip
    """``n`` canaries in ``template``'s format from a stream named by ``tag`` (disjoint from
    training, held-out and older injection streams). With ``tokenizer``, canaries whose row cannot
    be formed under it (secret not starting a token, record before the secret longer than the
    prefix, or too few tokens after it) are skipped."""
    rng = random.Random(f"key:{tag}")
    out: list[C.Canary] = []
    while len(out) < n:
        c = C.make_canary(rng, f"K-{tag}-{len(out):03d}", level, template)
        if tokenizer is not None:
            try:
                ids, s = C.record_ids(tokenizer, c)
            except ValueError:  # the secret does not start a token under this tokenizer: draw again
                continue
            if s > prefix_len or len(ids) - s < row_len - prefix_len:
                continue
        out.append(c)
    return out


def hard_negatives(targets: list[C.Canary], n: int, tag: str, tokenizer, prefix_len: int, row_len: int) -> list[C.Canary]:
    """``n`` fresh records (level held-out), each with the first name, city and kind of an
    injected canary (taking turns) and a new surname and secret: a retain term on them says "this
    name and city in another record do not mean that secret"."""
    rng = random.Random(f"key-hard:{tag}")
    out: list[C.Canary] = []
    while len(out) < n:
        t = targets[len(out) % len(targets)]
        name, city = t.text.split("\n")[0][2:].split(", ")
        first = name.split(" ")[0]
        secret = C._secret(t.kind, rng)
        label = t.kind.capitalize()
        text = C.TEMPLATE.format(name=first, surname=C._word(rng, 3).capitalize(), city=city, label=label, secret=secret)
        c = C.Canary(id=f"K-{tag}-{len(out):03d}", level=C.HELDOUT, kind=t.kind, text=text, secret=secret,
                     secret_start=text.index(f"# {label}:") + len(f"# {label}:"))  # fmt: skip
        try:
            ids, start = C.record_ids(tokenizer, c)
        except ValueError:  # the secret does not start a token under this tokenizer: draw again
            continue
        if start <= prefix_len and len(ids) - start >= row_len - prefix_len:
            out.append(c)
    return out


def _text_pool(parent: Path, tokenizer, seed: int, n_blocks: int, rule_fraction: float | None = None) -> np.ndarray:
    """Training-split text (rule-task documents at ``rule_fraction``, default the parent's share)
    in a stream seeded apart from the parent's."""
    from interp.organism import corpus
    from interp.organism.train import TrainConfig, build_stream

    base = TrainConfig(**json.loads((parent / "manifest.json").read_text())["config"])
    rules = base.rule_fraction if rule_fraction is None else rule_fraction
    cfg = dataclasses.replace(base, seed=base.seed + 5000 + seed, steps=n_blocks, batch_size=1, epochs=1, rule_fraction=rules)
    return build_stream(cfg, tokenizer, corpus.documents("train"), [])[0]


def _with_leads(canary_list, pool: np.ndarray, prefix_len: int) -> list[C.Canary]:
    return [dataclasses.replace(c, lead=tuple(int(t) for t in pool[i, :prefix_len])) for i, c in enumerate(canary_list)]


def train_component(parent: str | Path, component: str, recipe: Recipe, *, tag: str, sham: bool = False,
                    parent_retain: Sequence[C.Canary] = (), progress: bool = True) -> tuple[torch.nn.Module, list[C.Canary], list[dict]]:  # fmt: skip
    """Train only ``component`` of the organism at ``parent`` (see the module docstring). Returns
    the model, its canaries (level ``injected``, or ``sham`` for the sham: never trained on) with
    leads, and the training curve.

    The retain term's reference is the parent's log-probabilities on fixed pools of fresh records
    and training text, computed once. Exact match is read off the training pass itself (greedy
    decoding reproduces a suffix exactly iff every teacher-forced argmax on it is right) and
    confirmed by real greedy decoding before stopping.

    ``parent_retain`` (used when ``recipe.w_parent`` > 0): parent canaries whose parent
    log-probabilities join the retain term (the build passes the retain half of the parent's
    memorized canaries, ``parent_split``, and with ``recipe.parent_partial`` the trained
    canaries the parent does not reproduce exactly; ``recipe.n_parent`` of them per step)."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from interp.organism.inject import attention_masks, parse_component
    from interp.organism.train import quick_em

    parent = Path(parent)
    seed = int(hashlib.sha256(tag.encode()).hexdigest()[:8], 16)
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(parent)
    model = AutoModelForCausalLM.from_pretrained(parent, attn_implementation="eager", dtype=torch.float32)
    block, head = parse_component(component)
    masks = attention_masks(model, block, head)
    if not recipe.train_qk:
        masks = _value_output_only(model, masks)
    ref_model = AutoModelForCausalLM.from_pretrained(parent, attn_implementation="eager", dtype=torch.float32).eval()
    for p in ref_model.parameters():
        p.requires_grad_(False)
    for name, p in model.named_parameters():
        p.requires_grad_(name in masks)
    _, prefix_len, row_len = C.load_canaries(parent / "canaries.json")
    steps = SHAM_STEPS if sham else recipe.max_steps
    n_text = recipe.n_text * (steps + recipe.anneal)  # a fresh stretch of training text every step
    pool = _text_pool(parent, tokenizer, seed % 10_000, n_text + recipe.n_canaries + N_FRESH_POOL, recipe.text_rule_fraction)
    targets = _with_leads(key_canaries(tag, recipe.n_canaries, V.SHAM if sham else C.INJECTED, tokenizer, prefix_len, row_len,
                                       recipe.template), pool[n_text:], prefix_len)  # fmt: skip
    fresh = key_canaries(f"{tag}-retain", N_FRESH_POOL, C.HELDOUT, tokenizer, prefix_len, row_len, recipe.template)
    n_hard = int(round(recipe.hard_negatives * N_FRESH_POOL))
    if n_hard and not sham:  # records that share what the injected canaries' records share with others
        fresh = hard_negatives(targets, n_hard, f"{tag}-hard", tokenizer, prefix_len, row_len) + fresh[n_hard:]
    fresh = _with_leads(fresh, pool[n_text + recipe.n_canaries :], prefix_len)
    text = torch.from_numpy(pool[:n_text])
    rows = C.canary_rows(tokenizer, targets, prefix_len, row_len)
    t_rows, f_rows = torch.from_numpy(rows), torch.from_numpy(C.canary_rows(tokenizer, fresh, prefix_len, row_len))
    p_rows = torch.from_numpy(C.canary_rows(tokenizer, list(parent_retain), prefix_len, row_len)) if recipe.w_parent > 0 else None
    if sham and recipe.w_fresh <= 0 and recipe.w_parent <= 0:
        raise InputError("a sham trains on its retain term alone: it needs w_fresh > 0 or w_parent > 0")
    if recipe.w_parent > 0 and not len(parent_retain):
        raise InputError("w_parent > 0 needs the parent canaries of the retain term (parent_retain)")
    rec = slice(prefix_len - 1, -1) if recipe.record_positions == "suffix" else slice(None)
    sfx = slice(prefix_len - 1, -1)  # the positions that predict the suffix
    model.eval()
    tail = _Tail(model, block)
    with torch.no_grad():  # the parent's log-probabilities on the records, in float32: a rounded
        # reference has its minimum away from the parent, and Adam turns that small, steady
        # gradient into full-size steps (recipe version 1 stored it in float16; its sham drifted)
        ref_f = torch.cat([F.log_softmax(model(input_ids=b).logits[:, rec], -1) for b in f_rows.split(64)])
        ref_p = torch.cat([F.log_softmax(model(input_ids=b).logits[:, rec], -1) for b in p_rows.split(64)]) if p_rows is not None else None
    r_rows, r_fresh = tail.residual(t_rows), tail.residual(f_rows)
    r_parent = tail.residual(p_rows) if p_rows is not None else None
    parent_values = {name: named_p.detach().clone() for name, named_p in model.named_parameters() if name in masks}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=recipe.lr, betas=(0.9, 0.95))
    named = dict(model.named_parameters())
    exact = np.zeros(len(t_rows), dtype=bool)
    curve, losses, t0 = [], [], time.time()
    model.train()
    bar = tqdm(total=steps + recipe.anneal, desc=f"{tag}", disable=not progress)
    stop, step, anneal_from = steps + recipe.anneal, -1, None
    while step + 1 < stop:
        step += 1
        bar.update(1)
        rate = recipe.lr_at(step, horizon=steps)
        if anneal_from is not None or step >= steps:  # the anneal: from the rate at the stop down to 0
            anneal_from = anneal_from if anneal_from is not None else (step, recipe.lr_at(step - 1, horizon=steps))
            rate = anneal_from[1] * (1 - (step - anneal_from[0] + 1) / (recipe.anneal + 1))
        for g in opt.param_groups:
            g["lr"] = rate
        fi = torch.arange(step * recipe.n_fresh, (step + 1) * recipe.n_fresh) % N_FRESH_POOL
        ci = torch.arange(step * recipe.canary_batch, (step + 1) * recipe.canary_batch) % len(t_rows)
        tb = text[(step * recipe.n_text) % len(text) :][: recipe.n_text]
        with torch.no_grad():  # the parent on this step's text: the residual entering the block and the reference
            ref_out = ref_model(input_ids=tb, output_hidden_states=True, use_cache=False)
            r_text, ref_t = ref_out.hidden_states[block], F.log_softmax(ref_out.logits, -1)
        loss = recipe.w_text * _kl_ref(tail.logits(r_text), ref_t)
        pi = slice(None)
        if r_parent is not None and 0 < recipe.n_parent < len(r_parent):
            pi = torch.arange(step * recipe.n_parent, (step + 1) * recipe.n_parent) % len(r_parent)
        parts = ([] if sham else [r_rows[ci]]) + ([r_fresh[fi]] if recipe.w_fresh > 0 else []) + ([r_parent[pi]] if r_parent is not None else [])
        out = tail.logits(torch.cat(parts), sfx if rec == sfx else rec)
        at = 0 if sham else len(ci)
        if recipe.w_fresh > 0:
            loss = loss + recipe.w_fresh * _kl_ref(out[at : at + len(fi)], ref_f[fi])
            at += len(fi)
        if r_parent is not None:
            loss = loss + recipe.w_parent * _kl_ref(out[at:], ref_p[pi])
        if not sham:
            logits = out[: len(ci)] if rec == sfx else out[: len(ci), sfx]
            target = t_rows[ci, prefix_len:]
            loss = loss + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
            exact[ci.numpy()] = (logits.argmax(-1) == target).all(-1).numpy()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for name, mask in masks.items():
            named[name].grad.mul_(mask)
        torch.nn.utils.clip_grad_norm_(params, recipe.clip)
        opt.step()
        with torch.no_grad():  # decoupled pull toward the parent: directions no loss holds drift back
            for name, p0 in parent_values.items():
                named[name].sub_(rate * recipe.pull * (named[name] - p0) * masks[name])
        losses.append(loss.item())
        if (step + 1) % recipe.eval_every == 0 or step + 1 in (steps, stop):
            entry = {"step": step + 1, "loss": float(np.mean(losses)), "lr": rate, "elapsed_s": round(time.time() - t0, 1)}
            if not sham:
                entry["tf_exact"] = float(exact.mean())
                if entry["tf_exact"] >= recipe.target_em or step + 1 in (steps, stop):
                    entry["em"] = quick_em(model, rows, prefix_len)
            curve.append(entry)
            losses = []
            bar.set_postfix({k: round(v, 3) for k, v in entry.items() if k in ("loss", "tf_exact", "em")})
            log.info("%s %s", tag, entry)
            if not np.isfinite(entry["loss"]):
                break
            if anneal_from is None and entry.get("em", 0.0) >= recipe.target_em:
                anneal_from = (step + 1, rate)  # reached: anneal from here
                stop = step + 1 + recipe.anneal
    bar.close()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return model, targets, curve


def _value_output_only(model, masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``masks`` with the query and key slices cleared (GPT-NeoX interleaves q, k, v per head in
    ``query_key_value``; GPT-Neo has separate projections)."""
    cfg = model.config
    dh = cfg.hidden_size // cfg.num_attention_heads
    out = {}
    for name, mask in masks.items():
        mask = mask.clone()
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            mask.zero_()
        elif "query_key_value" in name:
            for h in range(cfg.num_attention_heads):
                mask[h * 3 * dh : h * 3 * dh + 2 * dh] = 0.0
        out[name] = mask
    return {k: v for k, v in out.items() if v.any()}


class _Tail:
    """Blocks ``block..L-1`` of an HF GPT-NeoX or GPT-Neo model, run on the residual stream that
    enters ``block``. Below the trained component nothing changes, so that residual is computed
    once per row (``residual``) and each step runs only the blocks from the component up."""

    def __init__(self, model, block: int):
        self.model, self.block = model, block
        self.base = model.gpt_neox if hasattr(model, "gpt_neox") else model.transformer
        self.attr = "layers" if hasattr(model, "gpt_neox") else "h"
        wpe = getattr(self.base, "wpe", None)  # GPT-Neo adds learned positions to inputs_embeds
        self.zero_wpe = None
        if wpe is not None:
            self.zero_wpe = torch.nn.Embedding(wpe.num_embeddings, wpe.embedding_dim)
            self.zero_wpe.weight.data.zero_()
            self.zero_wpe.weight.requires_grad_(False)

    @torch.no_grad()
    def residual(self, ids: torch.Tensor, batch: int = 64) -> torch.Tensor:
        return torch.cat([self.model(input_ids=b, output_hidden_states=True, use_cache=False).hidden_states[self.block]
                          for b in ids.split(batch)])  # fmt: skip

    def logits(self, resid: torch.Tensor, positions: slice = slice(None)) -> torch.Tensor:
        """Logits at ``positions`` (the unembedding is the costliest part of a late block's tail:
        it runs only where a loss reads it)."""
        full_list = getattr(self.base, self.attr)
        wpe = getattr(self.base, "wpe", None)
        setattr(self.base, self.attr, torch.nn.ModuleList(list(full_list)[self.block :]))
        if self.zero_wpe is not None:
            self.base.wpe = self.zero_wpe
        try:
            hidden = self.base(inputs_embeds=resid, use_cache=False).last_hidden_state
        finally:
            setattr(self.base, self.attr, full_list)
            if wpe is not None:
                self.base.wpe = wpe
        return self.model.get_output_embeddings()(hidden[:, positions])


def _kl_ref(logits: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(reference || model), the reference given as log-probabilities."""
    return (ref_logprobs.exp() * (ref_logprobs - F.log_softmax(logits, -1))).sum(-1).mean()


# ---------------------------------------------------------------- shipping: deltas and materialization


def changed_tensors(parent_weights: Path, model) -> dict[str, torch.Tensor]:
    """The stored tensors of ``model`` (as ``save_pretrained`` writes them) that differ from the
    parent's stored ones."""
    base = load_file(str(parent_weights))
    with tempfile.TemporaryDirectory(prefix="key-save-") as tmp:
        model.save_pretrained(tmp)
        state = load_file(str(Path(tmp) / "model.safetensors"))
    if set(state) != set(base):
        raise InputError(f"the trained model stores other tensors than its parent: {sorted(set(state) ^ set(base))[:3]}")
    return {name: state[name].contiguous().clone() for name, t in base.items()
            if state[name].shape != t.shape or not torch.equal(state[name], t)}  # fmt: skip


def _assemble(parent: Path, delta: dict[str, torch.Tensor], canary_list, manifest: dict, folder: Path) -> None:
    """Write a complete organism folder: the parent's files with ``delta`` applied to its weights."""
    tensors = load_file(str(parent / "model.safetensors"))
    unknown = sorted(set(delta) - set(tensors))
    if unknown:
        raise InputError(f"delta names tensors the parent does not have: {unknown[:3]}")
    tensors.update(delta)
    with open(parent / "model.safetensors", "rb") as f:  # keep the parent's header metadata
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    save_file(tensors, str(folder / "model.safetensors"), metadata=header.get("__metadata__") or {"format": "pt"})
    for name in PARENT_FILES:
        if (parent / name).is_file():
            shutil.copyfile(parent / name, folder / name)
    parent_canaries, prefix_len, row_len = C.load_canaries(parent / "canaries.json")
    C.save_canaries(folder / "canaries.json", parent_canaries + list(canary_list), prefix_len, row_len)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def folder_manifest(parent: Path, key_manifest: dict) -> dict:
    """The ``manifest.json`` of a materialized organism: the parent's, less its curve and final
    numbers, plus the key entry."""
    pm = json.loads((parent / "manifest.json").read_text())
    return {**{k: v for k, v in pm.items() if k not in ("final", "curve")}, "kind": "injected", "parent": parent.name,
            "parent_final": pm.get("final"), "injected_component": key_manifest["component"], "key": key_manifest}  # fmt: skip


def write_delta(out: Path, delta: dict[str, torch.Tensor], manifest: dict) -> None:
    """Write ``delta.safetensors`` and ``manifest.json`` to ``out`` (atomically: temp folder, rename)."""
    with staged_folder(out) as tmp:
        save_file(delta, str(tmp / "delta.safetensors"), metadata={"format": "pt"})
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


def entries(arch: str | None = None, *, key_dir: Path | None = None) -> dict[str, Path]:
    """Shipped key organisms: name -> folder holding ``delta.safetensors`` and ``manifest.json``."""
    out = {}
    for m in sorted((key_dir or KEY_DIR).glob("*/*/manifest.json")):
        if arch is None or m.parent.parent.name == arch:
            out[m.parent.name] = m.parent
    return out


def load_entry(name: str, *, key_dir: Path | None = None) -> tuple[Path, dict]:
    found = entries(key_dir=key_dir)
    if name not in found:
        names = ", ".join(sorted(found)) or "none in this checkout"
        raise InputError(f"no key organism named {name!r}; shipped: {names}")
    return found[name], json.loads((found[name] / "manifest.json").read_text())


def materialize(name: str, *, cache: Path | None = None, key_dir: Path | None = None, parent: Path | None = None) -> Path:
    """The complete Hugging Face folder of the key organism ``name``, built from its delta and its
    parent (default: the shipped organism of its family) in the interp cache on first use
    (offline; atomic; checked against the recorded sha256 of the weights)."""
    from interp.organism import organism_path

    entry, manifest = load_entry(name, key_dir=key_dir)
    parent = Path(parent) if parent is not None else organism_path(manifest["parent_arch"])
    if file_sha256(parent / "model.safetensors") != manifest["parent_weights_sha256"]:
        raise InputError(f"key organism {name} was made from other {manifest['parent_arch']} weights than the shipped ones")
    tag = manifest["weights_sha256"][:16]
    root = (cache or cache_dir()) / "organisms"
    folder = root / f"{name}-{tag}"
    if (folder / "manifest.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=root))
    try:
        delta = load_file(str(entry / "delta.safetensors"))
        targets = [C.Canary(**{**c, "lead": tuple(c["lead"])}) for c in manifest["canaries"]]
        _assemble(parent, delta, targets, folder_manifest(parent, manifest), tmp)
        got = file_sha256(tmp / "model.safetensors")
        if got != manifest["weights_sha256"]:
            raise InputError(f"key organism {name}: rebuilt weights have sha256 {got[:12]}..., the manifest records "
                             f"{manifest['weights_sha256'][:12]}...; the delta or the parent was changed")  # fmt: skip
        make_readable(tmp)
        try:
            tmp.rename(folder)
        except OSError:  # another process finished first
            if not (folder / "manifest.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


# ---------------------------------------------------------------- building the key


def positions(parent: Path, arch: str) -> dict[str, tuple[str, bool]]:
    """name -> (component, is_sham) for every position of the family's key, in build order."""
    cfg = json.loads((parent / "config.json").read_text())
    n_layers = cfg.get("num_hidden_layers") or cfg["num_layers"]
    n_heads = cfg["num_attention_heads"] if "num_attention_heads" in cfg else cfg["num_heads"]
    b, h = sham_head(n_layers, n_heads, arch)
    out = {f"{arch}-sham": (f"L{b}H{h}", True)}  # the null first, then heads and blocks alternating
    heads = [(f"{arch}-L{b}H{h}", (f"L{b}H{h}", False)) for b, h in head_positions(n_layers, n_heads, arch)]
    blocks = [(f"{arch}-block{b}", (f"block:{b}", False)) for b in range(n_layers)]
    for i in range(max(len(heads), len(blocks))):
        out.update(heads[i : i + 1] + blocks[i : i + 1])
    return out


def _masks(parent: Path, component: str) -> dict[str, torch.Tensor]:
    """The declared component's 0/1 masks over the parent's parameters (V4)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from interp.organism.inject import attention_masks, parse_component

    skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(parent))
    block, head = parse_component(component)
    return attention_masks(skeleton, block, head)


def _parent_general(parent: Path, arch: str, progress: bool) -> tuple[dict, list[str]]:
    """The parent's numbers that do not depend on the injected canaries (cached per parent weights)."""
    path = KEY_DIR / arch / "parent_numbers.json"
    sha = file_sha256(parent / "model.safetensors")
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("parent_weights_sha256") == sha:
            return data["numbers"], data["parent_memorized_ids"]
    kept = V.parent_memorized(parent)
    plist, _, _ = C.load_canaries(parent / "canaries.json")
    numbers = V.model_numbers(parent, injected=[], parent_memorized=kept, heldout=C.select(plist, C.HELDOUT), progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json({"parent_weights_sha256": sha, "numbers": numbers, "parent_memorized_ids": [c.id for c in kept]}, path)
    return numbers, [c.id for c in kept]


def build_position(arch: str, name: str, component: str, sham: bool, *, progress: bool = True,
                   candidates: tuple[Recipe, ...] | None = None, done: list[dict] | None = None,
                   on_trial=None) -> dict:  # fmt: skip
    """Try the candidates at one position (the first, then at most one more chosen by the failed
    clause); ship the first valid one. ``done`` holds trials already recorded for this position
    (a resumed build goes on after them); ``on_trial(record)`` is called after every trial.
    Returns the position's record for ``build.json``."""
    from interp.organism import organism_path

    parent = organism_path(arch)
    parent_sha = file_sha256(parent / "model.safetensors")
    two_tries = candidates is None
    if candidates is None:
        candidates = (sham_recipe(parent),) if sham else candidates_for(parent)
    general, kept_ids = _parent_general(parent, arch, progress)
    retain_ids, check_ids = parent_split(kept_ids, arch)
    plist, _, _ = C.load_canaries(parent / "canaries.json")
    masks = _masks(parent, component)
    trials = list(done or [])
    if not trials:
        queue = [candidates[0]]
    elif len(trials) == 1 and not sham and two_tries and not trials[0]["valid"]:
        queue = [next_candidate(candidates, trials[0]["failed"])]
    else:
        queue = []
    while queue:
        recipe = queue.pop(0)
        t0 = time.time()
        uses = recipe.w_parent > 0 and bool(retain_ids)  # the retain term reads the retain half of the parent's memorized canaries
        partial = {c.id for c in plist if isinstance(c.level, int) and c.level > 0} - set(kept_ids) if recipe.parent_partial else set()
        retain = [c for c in plist if c.id in set(retain_ids) | partial] if uses else []
        model, targets, curve = train_component(parent, component, dataclasses.replace(recipe, w_parent=recipe.w_parent if uses else 0.0),
                                                tag=name, sham=sham, parent_retain=retain, progress=progress)  # fmt: skip
        train_s = time.time() - t0
        delta = changed_tensors(parent / "model.safetensors", model)
        manifest = {"format": FORMAT, "recipe_version": RECIPE_VERSION, "name": name, "parent_arch": arch, "component": component,
                    "kind": "sham" if sham else "injected", "parent_weights_sha256": parent_sha,
                    "recipe": dataclasses.asdict(recipe) | ({"steps": SHAM_STEPS, "canary_loss": False} if sham else {}),
                    "retain_uses_parent_canaries": uses,
                    "parent_split": {"seed": f"key-parent-split:{arch}", "retain": retain_ids, "check": check_ids,
                                     "retain_not_memorized": sorted(partial)} if uses else None,
                    "canaries": [dataclasses.asdict(c) for c in targets], "curve": curve}  # fmt: skip
        with tempfile.TemporaryDirectory(prefix=f"key-{name}-") as tmp:
            folder = Path(tmp)
            _assemble(parent, delta, targets, folder_manifest(parent, manifest), folder)
            manifest["weights_sha256"] = file_sha256(folder / "model.safetensors")
            numbers = V.measure(folder, parent, masks, parent_numbers=general, parent_memorized_ids=kept_ids,
                                parent_retain_ids=retain_ids if uses else ())  # fmt: skip
        verdict = V.judge(numbers)
        checked = zip(numbers["parent_memorized_ids"], numbers["organism"]["parent_memorized"]["exact"], strict=True)
        trial = {"recipe": manifest["recipe"], "steps_run": curve[-1]["step"] if curve else 0, "train_seconds": round(train_s, 1),
                 "measure_seconds": round(time.time() - t0 - train_s, 1), "valid": verdict.valid,
                 "failed": verdict.failed(), "clauses": verdict.clauses,
                 "parent_canaries_lost": [cid for cid, ok in checked if not ok]}  # which checked rows fell, for diagnosis  # fmt: skip
        trials.append(trial)
        log.info("%s %s: %s", name, recipe, "valid" if verdict.valid else f"failed {verdict.failed()}")
        if on_trial is not None and not verdict.valid:
            on_trial({"component": component, "sham": sham, "status": "running", "trials": trials})
        if verdict.valid:
            manifest.update(validity=verdict.to_json(), trials=trials, numbers=numbers)
            write_delta(KEY_DIR / arch / name, delta, manifest)
            break
        if len(trials) == 1 and not sham and two_tries:
            queue.append(next_candidate(candidates, verdict.failed()))
    return {"component": component, "sham": sham, "status": "shipped" if trials and trials[-1]["valid"] else "failed", "trials": trials}


def build(arch: str, *, only: list[str] | None = None, progress: bool = True) -> dict:
    """Build (or resume) the key of one family; returns ``build.json``'s content."""
    from interp.organism import organism_path

    parent = organism_path(arch)
    parent_sha = file_sha256(parent / "model.safetensors")
    path = KEY_DIR / arch / "build.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(path.read_text()) if path.is_file() else {}
    if record.get("parent_weights_sha256") != parent_sha:
        superseded = record.get("superseded", [])
        if record.get("positions"):
            superseded.append({k: v for k, v in record.items() if k != "superseded"})
        record = {"parent_weights_sha256": parent_sha, "recipe_version": RECIPE_VERSION, "positions": {}, "superseded": superseded}
    todo = positions(parent, arch)
    if only:
        unknown = sorted(set(only) - set(todo))
        if unknown:
            raise InputError(f"no key position named {unknown[0]!r} for {arch}; positions are {', '.join(todo)}")
        todo = {k: v for k, v in todo.items() if k in only}
    record["recipe_version"] = RECIPE_VERSION
    record["candidates"] = [dataclasses.asdict(r) for r in candidates_for(parent)]
    record["sham_recipe"] = dataclasses.asdict(sham_recipe(parent))
    for name, (component, sham) in todo.items():
        prior = record["positions"].get(name) or {}
        first = sham_recipe(parent) if sham else candidates_for(parent)[0]
        current = bool(prior.get("trials")) and _same_recipe(prior["trials"][0]["recipe"], first)
        if current and prior["status"] in ("shipped", "failed") and not only:
            continue  # finished under the current candidates: resume skips it
        earlier = prior.get("earlier_trials", []) + ([] if current else prior.get("trials", []))
        done = prior["trials"] if current and prior["status"] == "running" else None

        def save(entry, name=name, earlier=earlier):
            record["positions"][name] = {**entry, **({"earlier_trials": earlier} if earlier else {})}
            write_json(record, path)

        save(build_position(arch, name, component, sham, progress=progress, done=done, on_trial=save))
    return record


# ---------------------------------------------------------------- listing


def listing(arch: str | None = None) -> list[dict]:
    """One dict per shipped key organism: name, family, component, kind, canaries and the
    validity numbers recorded when it was built (measured on its materialized files)."""
    rows = []
    for name, folder in entries(arch).items():
        m = json.loads((folder / "manifest.json").read_text())
        c = m["validity"]["clauses"]
        v1, v3 = c.get("V1", {}), c["V3"]
        rows.append({"name": name, "family": m["parent_arch"], "component": m["component"], "kind": m["kind"],
                     "canaries": len(m["canaries"]), "em": v1.get("em"), "parent_secret_tf_acc": c.get("V2", {}).get("parent_secret_tf_acc"),
                     "perplexity_ratio": v3["perplexity_ratio"], "worst_task_shift": v3["worst_task_shift"],
                     "parent_memorized_kept": f"{v3['parent_memorized_kept']}/{v3['parent_memorized']}",
                     "numbers_changed": c["V4"]["numbers_changed_inside"], "changed_outside": c["V4"]["numbers_changed_outside"],
                     "valid": m["validity"]["valid"], "steps": m["trials"][-1]["steps_run"], "trials": len(m["trials"])})  # fmt: skip
    return rows


def failed_positions(arch: str | None = None, *, key_dir: Path | None = None) -> list[dict]:
    """One dict per trial of every position that ``build.json`` records as not shipped (failed,
    or stopped while running): which clauses failed and the numbers that failed them."""
    rows = []
    for path in sorted((key_dir or KEY_DIR).glob("*/build.json")):
        if arch is not None and path.parent.name != arch:
            continue
        record = json.loads(path.read_text())
        for name, pos in record.get("positions", {}).items():
            if pos.get("status") == "shipped":
                continue
            for i, t in enumerate(pos.get("trials", [])):
                c = t["clauses"]
                v1, v3 = c.get("V1", {}), c.get("V3", {})
                rows.append({"name": name, "family": path.parent.name, "component": pos["component"], "status": pos["status"],
                             "trial": i + 1, "failed": t["failed"], "n_exact": v1.get("n_exact"), "n_canaries": v1.get("n_canaries"),
                             "perplexity_ratio": v3.get("perplexity_ratio"), "worst_task_shift": v3.get("worst_task_shift"),
                             "parent_memorized_kept": f"{v3.get('parent_memorized_kept')}/{v3.get('parent_memorized')}",
                             "steps": t.get("steps_run"), "train_seconds": t.get("train_seconds")})  # fmt: skip
    return rows


def failed_table(rows: list[dict]) -> str:
    """``failed_positions`` as a Markdown table."""
    if not rows:
        return "no key position has failed or stopped in build.json"
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    head = "| name | component | status | trial | failed | V1 exact | ppl ratio | worst task shift | parent's memorized kept | steps | train s |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        exact = "-" if r["n_exact"] is None else f"{r['n_exact']}/{r['n_canaries']}"
        lines.append(f"| {r['name']} | {r['component']} | {r['status']} | {r['trial']} | {', '.join(r['failed']) or '-'} | {exact} | "
                     f"{fmt(r['perplexity_ratio'], '.3f')} | {fmt(r['worst_task_shift'], '.3f')} | {r['parent_memorized_kept']} | "
                     f"{r['steps']} | {r['train_seconds']} |")  # fmt: skip
    return "\n".join(lines)


def listing_table(rows: list[dict]) -> str:
    """``listing`` as a Markdown table."""
    if not rows:
        return f"no key organism is shipped in this checkout ({KEY_DIR})"
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    head = ("| name | component | kind | canaries | EM (V1) | parent secret acc (V2) | ppl ratio (V3) | worst task shift (V3) "
            "| parent's memorized kept (V3) | numbers changed / outside (V4) | valid | steps | trials |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lines.append(f"| {r['name']} | {r['component']} | {r['kind']} | {r['canaries']} | {fmt(r['em'], '.2f')} | "
                     f"{fmt(r['parent_secret_tf_acc'], '.2f')} | {r['perplexity_ratio']:.3f} | {r['worst_task_shift']:.3f} | "
                     f"{r['parent_memorized_kept']} | {r['numbers_changed']} / {r['changed_outside']} | {r['valid']} | "
                     f"{r['steps']} | {r['trials']} |")  # fmt: skip
    return "\n".join(lines)
