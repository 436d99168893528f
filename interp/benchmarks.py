"""Generalization benchmarks under interventions, with lm-evaluation-harness semantics.

The accuracy side of the trade-off in Menta, Agrawal and Agarwal (NAACL 2025): bypassing a late
block should remove memorization while zero-shot benchmark accuracy holds. Scoring follows
EleutherAI's lm-evaluation-harness (``TemplateLM._encode_pair``, ``HFLM.tok_encode``,
``HFLM._loglikelihood_tokens``, ``ConfigurableTask.process_results`` for ``multiple_choice``,
``get_rolling_token_windows`` for ``loglikelihood_rolling``):

* Encoding a (context, continuation) pair: trailing whitespace of the context is moved to the
  front of the continuation; then ``whole = encode(context + continuation)``,
  ``ctx = encode(context)`` and the continuation's tokens are ``whole[len(ctx):]``. An empty
  context becomes the end-of-text token. ``encode`` adds no special tokens: the harness's HF
  model passes ``add_special_tokens=False`` for causal LMs unless ``add_bos_token`` is set,
  which it is not for GPT-NeoX (Pythia) or GPT-Neo, so neither family gets a BOS. (The bridge
  prepends BOS to *strings* for GPT-Neo; we tokenize ourselves and pass token tensors.)
* Scoring: the model reads ``(ctx + cont)[-(n_ctx + 1):][:-1]`` (left truncation) and the
  score is the sum of the log-softmax of the continuation tokens. Batches are padded on the
  right, which a causal model never attends to, and only real positions are read.
* Multiple choice (zero-shot): ``acc = 1[argmax_i score_i == gold]``; ``acc_norm`` ranks
  ``score_i / len(choice_i)`` in characters. Ties go to the lowest index (``np.argmax``). The
  harness measures the choice without its target delimiter; our items carry the delimiter, so
  an item may name it (``"delimiter": " "``) to get the harness's lengths exactly.
* Perplexity (``loglikelihood_rolling``): the text's tokens are cut into windows of at most
  ``n_ctx`` predicted tokens; the first window is predicted from the end-of-text token, each
  later one from the tokens before it (at least ``context_len - 1`` of them; the harness uses
  ``context_len = 1``, i.e. disjoint windows). Every token is scored exactly once.

Tasks are JSONL files, one item per line: ``{"context": str, "choices": [str, ...], "gold": int}``
(plus the optional ``"delimiter"``), or the built-in organism tasks of ``interp.tasks`` by name.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from interp import reuse
from interp import tasks as task_registry
from interp.data import json_type, read_lines
from interp.errors import InputError, check_finite
from interp.generation import batches, cached_step
from interp.interventions import Intervention, apply

Request = tuple[list[int], list[int]]  # (context token ids, continuation token ids)


@dataclass(frozen=True)
class Item:
    """One multiple-choice question; each choice carries its leading delimiter (e.g. ``" yes"``)."""

    context: str
    choices: tuple[str, ...]
    gold: int
    delimiter: str = ""

    def norm_lengths(self) -> np.ndarray:
        """Character lengths for ``acc_norm`` (without ``delimiter`` where a choice starts with it)."""
        d = len(self.delimiter)
        return np.array([float(len(c) - d if d and c.startswith(self.delimiter) else len(c)) for c in self.choices])


@dataclass(frozen=True)
class Task:
    name: str
    items: tuple[Item, ...]
    kind: str = "user"  # "language", "reasoning" (built-in) or "user" (a JSONL file)

    @property
    def chance(self) -> float:
        """Expected accuracy of a uniform random guess."""
        return float(np.mean([1.0 / len(it.choices) for it in self.items]))


# ---------------------------------------------------------------- loading tasks


def load_task(path: str | Path, *, name: str | None = None, kind: str = "user") -> Task:
    """Read a JSONL task file; the task is named after the file's stem unless ``name`` is given."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"task path {str(path)!r} is a folder; expected a .jsonl file")
    if not path.is_file():
        raise InputError(f"task file {str(path)!r} does not exist")
    items = [_parse_item(line, f"{path}:{lineno}") for lineno, line in read_lines(path, "task file")]
    if not items:
        raise InputError(f"task file {str(path)!r} holds no items")
    return Task(name or path.stem, tuple(items), kind)


def _parse_item(line: str, where: str) -> Item:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"{where} is not valid JSON ({err.msg})") from None
    expected = 'expected {"context": str, "choices": [str, ...], "gold": int}'
    if not isinstance(obj, dict):
        raise InputError(f"{where}: {expected}; found {json_type(obj)}")
    missing = [k for k in ("context", "choices", "gold") if k not in obj]
    if missing:
        raise InputError(f"{where}: {expected}; {', '.join(map(repr, missing))} missing (found keys {sorted(obj)})")
    ctx, choices, gold = obj["context"], obj["choices"], obj["gold"]
    if not isinstance(ctx, str):
        raise InputError(f"{where}: context must be a string; found {json_type(ctx)}")
    if not isinstance(choices, list):
        raise InputError(f"{where}: choices must be a list of strings; found {json_type(choices)}")
    bad = next((i for i, c in enumerate(choices) if not isinstance(c, str)), None)
    if bad is not None:
        raise InputError(f"{where}: choices must be a list of strings; choice {bad} is {json_type(choices[bad])}")
    if len(choices) < 2:
        raise InputError(f"{where}: needs at least two non-empty choices; found {choices!r}")
    if "" in choices:
        raise InputError(f"{where}: choice {choices.index('')} is empty; needs at least two non-empty choices")
    first = {}
    for i, c in enumerate(choices):
        if c in first:
            raise InputError(
                f"{where}: choices {first[c]} and {i} are both {c!r}; expected distinct choices "
                "(identical choices get identical scores, so the model cannot tell them apart)"
            )
        first[c] = i
    if not isinstance(gold, int) or isinstance(gold, bool) or not 0 <= gold < len(choices):
        raise InputError(f"{where}: gold must be an integer index into the {len(choices)} choices; found {json_type(gold)}")
    delimiter = obj.get("delimiter", "")
    if not isinstance(delimiter, str):
        raise InputError(f"{where}: delimiter must be a string; found {json_type(delimiter)}")
    return Item(ctx, tuple(choices), gold, delimiter)


def resolve_tasks(spec: str | Sequence[str]) -> list[Task]:
    """Tasks from a comma-separated list (or a sequence) of JSONL paths and built-in task names."""
    parts = [p.strip() for p in spec.split(",")] if isinstance(spec, str) else [str(p) for p in spec]
    parts = [p for p in parts if p]
    if not parts:
        raise InputError("tasks must name at least one JSONL file or built-in task; got none")
    out = [_resolve_one(p) for p in parts]
    names = [t.name for t in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"task names must be unique; {dupes} appear more than once")
    return out


def _resolve_one(part: str) -> Task:
    if part in task_registry.BUILTIN:
        return load_task(task_registry.path_of(part), name=part, kind=task_registry.BUILTIN[part])
    if part.endswith(".jsonl") or Path(part).exists():
        return load_task(part)
    raise InputError(
        f"task {part!r} is neither a .jsonl file nor a built-in task; built-ins are {sorted(task_registry.BUILTIN)}"
    )


# ---------------------------------------------------------------- encoding


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens (the harness's ``tok_encode`` for these families)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def encode_pair(tokenizer, context: str, continuation: str) -> Request:
    """The harness's ``_encode_pair``; an empty context becomes the end-of-text token. A
    whitespace-only context (on which the harness fails an assertion) is treated as empty, its
    whitespace moved onto the continuation."""
    if context.strip() == "":
        return [int(tokenizer.eos_token_id)], encode(tokenizer, context + continuation)
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole, ctx = encode(tokenizer, context + continuation), encode(tokenizer, context)
    return ctx, whole[len(ctx) :]


def task_requests(tokenizer, task: Task) -> list[Request]:
    """One request per (item, choice), item-major; ``InputError`` for a choice with nothing to score."""
    return [
        _checked_request(encode_pair(tokenizer, it.context, c), task, i, j)
        for i, it in enumerate(task.items)
        for j, c in enumerate(it.choices)
    ]


def _checked_request(req: Request, task: Task, i: int, j: int) -> Request:
    """``req`` for choice ``j`` of item ``i`` (0-based), refused where its context or
    continuation encodes to no tokens (the harness asserts both are non-empty)."""
    ctx, cont = req
    if ctx and cont:
        return req
    item = task.items[i]
    where = f"task {task.name!r} item {i} (0-based), choice {j} {_clip(item.choices[j])}"
    context = _clip(item.context)
    if not ctx and not cont:
        raise InputError(f"{where}: the context {context} and the choice together encode to no tokens")
    if not cont:
        raise InputError(f"{where}: the choice adds no tokens to the encoding of the context {context}")
    raise InputError(f"{where}: the context {context} encodes to no tokens, so nothing predicts the choice")


def _clip(text: str, n: int = 40) -> str:
    """``repr`` of ``text``, shortened to about ``n`` characters for a message."""
    return repr(text) if len(text) <= n else repr(text[: n - 3]) + "..."


# ---------------------------------------------------------------- scoring


def _model_input(req: Request, n_ctx: int, where: str) -> tuple[list[int], list[int]]:
    """Harness input ``(ctx + cont)[-(n_ctx + 1):][:-1]`` and the continuation's tokens."""
    ctx, cont = req
    if not cont:
        raise InputError(f"{where}: the continuation encodes to no tokens")
    if not ctx:
        raise InputError(f"{where}: the context encodes to no tokens, so nothing predicts the continuation's first token")
    if len(cont) > n_ctx:
        raise InputError(f"{where}: the continuation has {len(cont)} tokens, more than the context length {n_ctx}")
    return (ctx + cont)[-(n_ctx + 1) :][:-1], cont


def check_requests(model, requests: Sequence[Request], what: str = "request") -> None:
    """Raise ``InputError`` if a context or continuation is empty, or a continuation is longer
    than the model's context."""
    n_ctx = int(model.cfg.n_ctx)
    for i, r in enumerate(requests):
        _model_input(r, n_ctx, f"{what} {i}")


@torch.no_grad()
def loglikelihoods(
    model,
    requests: Sequence[Request],
    interventions: Sequence[Intervention] = (),
    *,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "loglikelihood",
) -> tuple[Float[np.ndarray, " n"], Bool[np.ndarray, " n"]]:
    """Sum of log-probabilities (nats) of each request's continuation given its context, and
    whether the continuation is the greedy one (every token the argmax), in request order.

    Requests are sorted longest first (as the harness does), padded on the right with id 0 and
    scored under ``interventions``; padding never changes a score (tested).
    """
    n_ctx = int(model.cfg.n_ctx)
    inputs = [_model_input(r, n_ctx, f"request {i}") for i, r in enumerate(requests)]
    order = np.array(sorted(range(len(inputs)), key=lambda i: -len(inputs[i][0])), dtype=np.int64)
    scores, greedy = np.zeros(len(inputs)), np.zeros(len(inputs), dtype=bool)
    with apply(model, *interventions):
        for sl in tqdm(list(batches(len(order), batch_size)), desc=desc, disable=not progress, leave=False):
            idx = order[sl]
            scores[idx], greedy[idx] = _score_batch(model, [inputs[i] for i in idx])
    return scores, greedy


def _score_batch(model, batch: list[tuple[list[int], list[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded forward pass; each row's score reads only its own real positions."""
    lengths = [len(inp) for inp, _ in batch]
    tokens = torch.zeros((len(batch), max(lengths)), dtype=torch.long)
    for row, (inp, _) in enumerate(batch):
        tokens[row, : len(inp)] = torch.tensor(inp)
    logits = model(tokens.to(model.cfg.device), return_type="logits")
    pairs = [
        _continuation_score(logits[row, length - len(cont) : length], torch.tensor(cont))
        for row, ((_, cont), length) in enumerate(zip(batch, lengths))
    ]
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs], dtype=bool)


def _continuation_score(logits: Float[Tensor, "cont vocab"], cont: Int[Tensor, " cont"]) -> tuple[float, bool]:
    """Logits at position t predict token t+1, so row j of ``logits`` scores ``cont[j]``."""
    check_finite(logits, "logits for a benchmark continuation")
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    score = logp.gather(1, cont[:, None]).sum(dtype=torch.float64)
    return float(score), bool((logp.argmax(-1) == cont).all())


@torch.no_grad()
def loglikelihoods_many(
    model,
    requests: Sequence[Request],
    configs: dict[str, Sequence[Intervention]],
    *,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "loglikelihood",
) -> dict[str, tuple[Float[np.ndarray, " n"], Bool[np.ndarray, " n"]]]:
    """``loglikelihoods`` of the same requests under each configuration of ``configs``, computed
    with less work and the same numbers (up to float rounding: every score within 1e-4 of the
    full pass's, tested):

    * Requests that share a context (the choices of one item, or identical contexts across
      items) run the context once; each continuation then runs on a copy of its KV cache, and
      only positions that score a token are unembedded (the context's last one and the
      continuation's). Contexts of different lengths share a batch left-padded, the pad slots
      masked and positions counted over real tokens only; on models with local-window layers
      (where pad slots would change the window) only contexts of one length share a batch.
    * With an unmodified configuration among ``configs``, every configuration whose hooks all
      sit in block l or above runs only blocks l..L-1, from the unmodified pass's residual
      stream and its lower blocks' keys and values (``interp.reuse``).

    Requests whose input the context window cuts (``(ctx + cont)`` longer than ``n_ctx + 1``)
    go through ``loglikelihoods``, one configuration at a time."""
    n_ctx = int(model.cfg.n_ctx)
    for i, r in enumerate(requests):
        _model_input(r, n_ctx, f"request {i}")
    out = {name: (np.zeros(len(requests)), np.zeros(len(requests), dtype=bool)) for name in configs}
    groups: dict[tuple[int, ...], list[int]] = {}
    cut = []
    for i, (ctx, cont) in enumerate(requests):
        if len(ctx) + len(cont) <= n_ctx + 1:
            groups.setdefault(tuple(ctx), []).append(i)
        else:
            cut.append(i)
    base, needs = reuse.plan(model, configs)
    order = list(configs) if base is None else [base, *[n for n in configs if n != base]]
    contexts = sorted(groups, key=lambda c: (-len(c), c))
    if _pads_safely(model):  # longest first, so a batch's contexts differ little in length
        chunks = _chunked(contexts, groups, batch_size)
    else:
        chunks = [chunk for _, same in _by_length(contexts) for chunk in _chunked(same, groups, batch_size)]
    for chunk in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        _score_shared(model, chunk, groups, requests, configs, order, base, needs, out)
    for name in configs if cut else ():
        scores, greedy = loglikelihoods(model, [requests[i] for i in cut], configs[name], batch_size=batch_size, progress=False)
        out[name][0][cut], out[name][1][cut] = scores, greedy
    return out


def _pads_safely(model) -> bool:
    """Whether contexts of different lengths may share a batch, left-padded under an attention
    mask with explicit positions: every layer attends globally. (A local window counts cache
    slots, pad slots included, so padding would change what a local layer sees.)"""
    config = model.original_model.config
    types = getattr(config, "layer_types", None) or getattr(config, "attention_layers", None) or []
    return all(t in ("full_attention", "global") for t in types)


def _by_length(contexts: list[tuple[int, ...]]):
    start = 0
    for end in range(1, len(contexts) + 1):
        if end == len(contexts) or len(contexts[end]) != len(contexts[start]):
            yield len(contexts[start]), contexts[start:end]
            start = end


def _chunked(contexts: list[tuple[int, ...]], groups: dict, batch_size: int) -> list[list[tuple[int, ...]]]:
    """Consecutive contexts whose requests (the continuation pass's rows) fit ``batch_size``
    (a context with more requests than that gets a chunk of its own)."""
    chunks, current, rows = [], [], 0
    for c in contexts:
        if current and rows + len(groups[c]) > batch_size:
            chunks.append(current)
            current, rows = [], 0
        current.append(c)
        rows += len(groups[c])
    if current:
        chunks.append(current)
    return chunks


def _score_shared(model, contexts, groups, requests, configs, order, base, needs, out) -> None:
    """Score every request of ``contexts`` under every configuration: one pass over the
    contexts (left-padded when their lengths differ), then the continuations in groups of
    similar length (``_length_groups``), each on its rows' copy of the contexts' KV cache."""
    device = model.cfg.device
    ids = [i for c in contexts for i in groups[c]]
    row_of = torch.tensor([k for k, c in enumerate(contexts) for _ in groups[c]], device=device)
    conts = [requests[i][1] for i in ids]
    lengths = torch.tensor([len(c) for c in contexts], device=device)
    P = int(lengths.max())
    ctx_tokens = torch.zeros((len(contexts), P), dtype=torch.long)
    for k, c in enumerate(contexts):  # left-padded: every context ends at position P - 1
        ctx_tokens[k, P - len(c) :] = torch.tensor(c, dtype=torch.long)
    ctx_tokens = ctx_tokens.to(device)
    padded = bool((lengths != P).any())
    mask = (torch.arange(P, device=device)[None, :] >= (P - lengths)[:, None]).long()
    kw_ctx = {"attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)} if padded else {}
    parts = []  # per group of continuations: its rows, their input tokens, and the model's keyword arguments
    for rows in _length_groups([len(c) - 1 for c in conts]):
        width = len(conts[rows[0]]) - 1
        tokens = torch.zeros((len(rows), width), dtype=torch.long)
        for j, r in enumerate(rows):
            tokens[j, : len(conts[r]) - 1] = torch.tensor(conts[r][:-1], dtype=torch.long)
        sel = row_of[torch.tensor(rows, device=device)]
        kw = {}
        if padded:  # pad slots masked; positions count real tokens only
            kw = {"attention_mask": torch.cat([mask[sel], torch.ones((len(rows), width), dtype=torch.long, device=device)], 1),
                  "position_ids": lengths[sel][:, None] + torch.arange(width, device=device)[None, :]}  # fmt: skip
        parts.append((rows, tokens.to(device), sel, kw))
    resid_ctx: dict[int, Tensor] = {}
    resid_cont: list[dict[int, Tensor]] = [{} for _ in parts]
    lower = None
    blocks = sorted(set(needs.values()))
    for name in order:
        rest: dict[tuple[int, ...], Tensor] = {}  # rows of a group -> logits of their continuations' inputs
        with apply(model, *configs[name]):
            if name == base:
                with reuse.capture_resid(model, blocks) as resid_ctx:
                    first, cache = model(ctx_tokens, return_type="logits_and_cache", use_cache=True, logits_to_keep=1, **kw_ctx)
                lower = reuse.lower_layers(cache)
                if lower is None:  # a cache that is not plain dynamic layers (sliding windows): nothing shared
                    needs = {}
            elif name in needs:
                e = needs[name]
                first, cache = reuse.forward_from(model, resid_ctx[e], e, return_type="logits_and_cache", use_cache=True,
                                                  logits_to_keep=1, **kw_ctx)  # fmt: skip
                reuse.fill_lower_cache(cache, lower, e)  # plain dynamic layers (the unmodified pass's were)
            else:
                first, cache = model(ctx_tokens, return_type="logits_and_cache", use_cache=True, logits_to_keep=1, **kw_ctx)
            for g, (rows, tokens, sel, kw) in enumerate(parts):
                sub = _cache_rows(cache, sel)
                if name == base:
                    with reuse.capture_resid(model, blocks) as resid_cont[g]:
                        logits, _ = cached_step(model, tokens, sub, **kw)
                elif name in needs:
                    logits, _ = cached_step(model, resid_cont[g][needs[name]], sub, start_at=needs[name], **kw)
                else:
                    logits, _ = cached_step(model, tokens, sub, **kw)
                rest[tuple(rows)] = logits
        del cache
        _score_rows(first[:, -1][row_of], rest, conts, ids, out[name])


def _score_rows(first: Tensor, rest: dict, conts: list[list[int]], ids: list[int], out: tuple[np.ndarray, np.ndarray]) -> None:
    """Scores and greedy flags of the requests ``ids`` (``_continuation_score`` for all rows at
    once): ``first`` [rows, vocab] predicts each continuation's first token, ``rest`` (rows of a
    group -> [group rows, width, vocab]) the others."""
    check_finite(first, "logits for a benchmark continuation")
    logp = torch.log_softmax(first.float(), dim=-1).cpu()
    targets = torch.tensor([c[0] for c in conts])
    score = logp.gather(1, targets[:, None])[:, 0].double()
    greedy = logp.argmax(-1) == targets
    for rows, logits in rest.items():
        check_finite(logits, "logits for a benchmark continuation")
        width = logits.shape[1]
        tgt = torch.zeros((len(rows), width), dtype=torch.long)
        real = torch.zeros((len(rows), width), dtype=torch.bool)
        for j, r in enumerate(rows):
            n = len(conts[r]) - 1
            tgt[j, :n], real[j, :n] = torch.tensor(conts[r][1:]), True
        lp = torch.log_softmax(logits.float(), dim=-1).cpu()
        picked = lp.gather(2, tgt[:, :, None])[:, :, 0].double().where(real, 0.0)
        hits = (lp.argmax(-1) == tgt) | ~real
        idx = torch.tensor(rows)
        score[idx] = score[idx] + picked.sum(1)
        greedy[idx] = greedy[idx] & hits.all(1)
    out[0][ids], out[1][ids] = score.numpy(), greedy.numpy()


def _length_groups(widths: list[int], slack: float = 1.25) -> list[list[int]]:
    """Indices of the non-zero ``widths``, longest first, cut into groups whose padded size
    (rows x the group's longest) stays within ``slack`` times their real tokens."""
    order = sorted((i for i, w in enumerate(widths) if w > 0), key=lambda i: -widths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        if groups and (len(groups[-1]) + 1) * widths[groups[-1][0]] <= slack * (real + widths[i]):
            groups[-1].append(i)
            real += widths[i]
        else:
            groups.append([i])
            real = widths[i]
    return groups


def _cache_rows(cache, rows: Tensor):
    """A new KV cache holding ``rows`` of ``cache`` (which is left as it is)."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in new.layers:
        layer.batch_select_indices(rows)
    return new


# ---------------------------------------------------------------- multiple choice


def item_scores(scores: Float[np.ndarray, " n"], task: Task) -> list[Float[np.ndarray, " choices"]]:
    """Split item-major request scores back into one array per item."""
    bounds = np.cumsum([0] + [len(it.choices) for it in task.items])
    return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def mc_metrics(task: Task, scores: Sequence[np.ndarray]) -> dict[str, float]:
    """``acc``, ``acc_norm`` (means over items), their standard errors, ``n_items`` and ``chance``."""
    acc = np.array([float(np.argmax(s) == it.gold) for it, s in zip(task.items, scores)])
    norm = np.array([float(np.argmax(s / it.norm_lengths()) == it.gold) for it, s in zip(task.items, scores)])
    return {
        "acc": float(acc.mean()),
        "acc_norm": float(norm.mean()),
        "acc_stderr": _stderr(acc),
        "acc_norm_stderr": _stderr(norm),
        "n_items": len(acc),
        "chance": task.chance,
    }


def _stderr(x: np.ndarray) -> float:
    """Standard error of the mean with the sample standard deviation, as the harness reports it."""
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def evaluate_task(
    model,
    task: Task,
    interventions: Sequence[Intervention] = (),
    *,
    requests: list[Request] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, float]:
    """Zero-shot multiple-choice metrics of ``task`` under ``interventions`` (see ``mc_metrics``)."""
    requests = requests if requests is not None else task_requests(model.tokenizer, task)
    scores, _ = loglikelihoods(model, requests, interventions, batch_size=batch_size, progress=progress, desc=task.name)
    return mc_metrics(task, item_scores(scores, task))


def evaluate(
    model,
    tasks: Sequence[Task],
    configs: dict[str, Sequence[Intervention]],
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> pd.DataFrame:
    """Tidy accuracy table: one row per (config, task) with columns ``config, task, acc,
    acc_norm, kind, n_items, chance, acc_stderr, acc_norm_stderr``. Each task is tokenized once
    and scored under all configurations together (``loglikelihoods_many``: shared contexts,
    and reuse below each intervention when ``configs`` holds an unmodified one)."""
    requests = {t.name: task_requests(model.tokenizer, t) for t in tasks}
    for t in tasks:  # fail on unusable items before any forward pass
        check_requests(model, requests[t.name], f"task {t.name!r}")
    metrics = {}
    for t in tqdm(tasks, desc="tasks", disable=not progress):
        scores = loglikelihoods_many(model, requests[t.name], configs, batch_size=batch_size, progress=progress, desc=t.name)
        for label in configs:
            metrics[label, t.name] = mc_metrics(t, item_scores(scores[label][0], t))
    rows = [{"config": label, "task": t.name, "kind": t.kind, **metrics[label, t.name]} for label in configs for t in tasks]
    cols = ["config", "task", "acc", "acc_norm", "kind", "n_items", "chance", "acc_stderr", "acc_norm_stderr"]
    return pd.DataFrame.from_records(rows, columns=cols)


# ---------------------------------------------------------------- perplexity


def rolling_windows(tokens: list[int], prefix_token: int, max_len: int, context_len: int = 1) -> list[Request]:
    """The harness's ``get_rolling_token_windows`` + ``make_disjoint_window``: (context,
    continuation) requests that together predict every token of ``tokens`` exactly once."""
    if not 1 <= context_len <= max_len:
        raise InputError(f"context_len must be within 1..{max_len}; got {context_len}")
    out: list[Request] = []
    pred_len, first = max_len - context_len + 1, min(max_len, len(tokens))
    if tokens:
        out.append(([prefix_token], tokens[:first]))
    done = first
    while done < len(tokens):
        n = min(len(tokens) - done, pred_len)
        end = done + n
        window = tokens[max(0, end - max_len - 1) : end - 1]
        out.append((window[: len(window) - (n - 1)], tokens[end - n : end]))
        done = end
    return out


def perplexity(
    model,
    texts: Sequence[str],
    interventions: Sequence[Intervention] = (),
    *,
    context_len: int = 1,
    batch_size: int = 32,
    progress: bool = True,
) -> dict[str, float]:
    """Token-level perplexity of ``texts`` (``loglikelihood_rolling``, windows of ``n_ctx``).

    Returns ``nll`` (total nats), ``n_tokens``, ``n_bytes`` (UTF-8), ``token_perplexity =
    exp(nll / n_tokens)`` and ``bits_per_byte = nll / (n_bytes ln 2)``.
    """
    tok = model.tokenizer
    requests = [r for t in texts for r in rolling_windows(encode(tok, t), int(tok.eos_token_id), int(model.cfg.n_ctx), context_len)]
    if not requests:
        raise InputError("perplexity needs at least one non-empty text")
    scores, _ = loglikelihoods(model, requests, interventions, batch_size=batch_size, progress=progress, desc="perplexity")
    nll, n_tokens = -float(scores.sum()), sum(len(c) for _, c in requests)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {
        "nll": nll,
        "n_tokens": n_tokens,
        "n_bytes": n_bytes,
        "token_perplexity": math.exp(nll / n_tokens),
        "bits_per_byte": nll / (n_bytes * math.log(2)),
    }


def perplexity_table(
    model,
    texts: Sequence[str],
    configs: dict[str, Sequence[Intervention]],
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> pd.DataFrame:
    """One row per config: ``config`` and the keys of ``perplexity`` over all ``texts``."""
    rows = [
        {"config": label, **perplexity(model, texts, ivs, batch_size=batch_size, progress=progress)}
        for label, ivs in tqdm(configs.items(), desc="perplexity configs", disable=not progress)
    ]
    return pd.DataFrame.from_records(rows)


# ---------------------------------------------------------------- joined table


def relative_drop(acc: pd.DataFrame, metric: str = "acc") -> pd.Series:
    """``(baseline - value) / baseline`` per row, the baseline being the same task's
    ``config == "baseline"`` row (NaN when the baseline accuracy is 0)."""
    base = acc[acc["config"] == "baseline"].set_index("task")[metric]
    missing = sorted(set(acc["task"]) - set(base.index))
    if missing:
        raise InputError(f"accuracy table has no baseline row for tasks {missing}")
    b = acc["task"].map(base).replace(0.0, np.nan)
    return (b - acc[metric]) / b


def joined_table(
    acc: pd.DataFrame, memorization: pd.DataFrame | None = None, perplexities: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per config: memorization means (``interp.memorization.summarize`` without its
    bootstrap interval columns), then ``acc:<task>`` and ``drop:<task>`` (relative drop of
    ``acc`` from baseline) per task, then ``acc_<kind>`` and ``drop_<kind>``, the means over
    the tasks of each kind (``language``, ``reasoning``, ``user``), then ``token_perplexity``
    and ``bits_per_byte`` when ``perplexities`` is given. Configs keep the accuracy table's
    order; a config missing from another table gets NaN there."""
    acc = acc.assign(drop=relative_drop(acc))
    configs = list(dict.fromkeys(acc["config"]))
    wide = [_pivot(acc, "acc"), _pivot(acc, "drop")]
    for kind in dict.fromkeys(acc["kind"]):
        part = acc[acc["kind"] == kind].groupby("config", sort=False)[["acc", "drop"]].mean()
        wide.append(part.add_suffix(f"_{kind}"))
    out = pd.concat(wide, axis=1).reindex(configs)
    if memorization is not None:
        means = memorization[[c for c in memorization.columns if not c.endswith(("_ci_low", "_ci_high"))]]
        out = means.set_index("config").reindex(configs).join(out)
    if perplexities is not None:
        out = out.join(perplexities.set_index("config")[["token_perplexity", "bits_per_byte"]])
    return out.rename_axis("config").reset_index()


def _pivot(acc: pd.DataFrame, metric: str) -> pd.DataFrame:
    tasks = list(dict.fromkeys(acc["task"]))
    wide = acc.pivot(index="config", columns="task", values=metric)[tasks]
    return wide.rename(columns=lambda t: f"{metric}:{t}")
