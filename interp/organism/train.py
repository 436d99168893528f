"""Train the model organism from a seed: tokenizer, training stream, model, manifest.

The training stream is the train split of the stdlib corpus (``corpus.py``) mixed at the
document level with rule-task documents (``rules.py``), cut into ``n_ctx``-token blocks; each
canary of level D is then written into D randomly chosen blocks (one canary per block, after an
end-of-text token), so its occurrences are spread uniformly over training. Held-out files and
held-out canaries never enter the stream, and the tokenizer is trained on corpus and rule text
only (never on canaries, whose secrets would otherwise become merges).

Models are ordinary Hugging Face causal LMs: ``GPTNeoXForCausalLM`` (parallel residual, rotary
on 25% of head dims, Pythia-style) or ``GPTNeoForCausalLM`` (sequential residual, alternating
global/local attention). The saved folder loads with ``interp.models.load_model``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GPTNeoForCausalLM, GPTNeoXForCausalLM

from interp.organism import canaries as C
from interp.organism import corpus, evaluate, rules
from interp.organism.corpus import heldout_blocks
from interp.tiny import tiny_config, train_bpe_tokenizer

log = logging.getLogger(__name__)

ARCHS = ("neox", "neo")
# The shipped models' recipe per architecture: steps, passes over the training set, peak learning
# rate, and where in training canary occurrences start (fraction of the blocks). Chosen from these
# trials (seed 0; exact match of the D=64 canaries after training; interp/organism/README.md has
# the rest). One pass unless noted:
#   GPT-NeoX  4000 steps, 2 passes, lr 2e-3                EM 0.97, D=16 0.03, ppl 64   <- shipped
#             2000 steps, 2 passes, lr 2e-3                EM 1.00, D=16 0.16, ppl 113
#             6000 steps, lr 2e-3, canaries throughout   EM 0.09
#             6000 steps, lr 2e-3, canaries in last 40%  EM 0.09
#             2000 steps, lr 3e-3, canaries throughout   EM 0.16
#             2000 steps, lr 2e-3, canaries throughout   EM 0.34   (shipped until two passes)
#             1000 steps, lr 2e-3                        EM 0.09   (perplexity 163)
#             2000 steps, lr 1e-3                        EM 0.22
#             2000 steps, lr 2e-3, min lr 0.5 x peak     EM 0.28
#             4000 steps of batch 2, lr 2e-3             EM 0.34
#             d_model 256 (6.8M parameters), 2000 steps  EM 0.28
#             (every one-pass variant leaves the D=64 suffix NLL at 5.6-6.3 nats: about one secret
#             token in three is uncertain, so exact match stays near 0.3; a second pass over the
#             same set, 2 x 64 sightings, brings it to 1.0-1.3 nats)
#   GPT-Neo   4000 steps, 4 passes, lr 5e-4                EM 0.81, D=16 0.16, ppl 112  <- shipped
#             4000 steps, 2 passes, lr 5e-4                EM 0.22, D=16 0.00, ppl 93
#             4000 steps, 2 passes, lr 2e-3, scaled_query  EM 0.00, ppl 151
#             (no 1/sqrt(d_head) attention scaling) 600-step held-out loss 6.43 / 6.32 / 6.00 /
#             5.93 at lr 2e-3 / 1e-3 / 5e-4 / 2.5e-4; 6000 steps at 1e-3 diverged (held-out loss
#             5.74 -> 6.73); 6000 steps, lr 5e-4, canaries in last 40%: EM 0.00 (shipped until
#             several passes; perplexity 165)
#             with ``scaled_query`` (below), canaries from the start: 2000 steps at lr 2e-3:
#             EM 0.00 (D=64 suffix NLL 24 vs 30), perplexity 222; canaries in the last half, 4000
#             steps: lr 1e-3 EM 0.00, perplexity 201; lr 2e-3 EM 0.00, perplexity 226
#             untied input/output embeddings, lr 2e-3, 2000 steps: EM 0.00, perplexity 254
DEFAULT_STEPS = {"neox": 4000, "neo": 4000}
DEFAULT_LR = {"neox": 2e-3, "neo": 5e-4}
DEFAULT_CANARY_START = {"neox": 0.0, "neo": 0.0}
DEFAULT_EPOCHS = {"neox": 2, "neo": 4}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a trained organism (with the corpus files)."""

    arch: str = "neox"
    seed: int = 0
    n_layers: int = 6
    d_model: int = 192
    n_heads: int = 4
    n_ctx: int = 128
    vocab_size: int = 4096
    window: int = 64  # GPT-Neo local attention window
    batch_size: int = 4  # small batches: each canary occurrence weighs more in its update
    steps: int = 0  # 0 = the shipped model's step count for ``arch`` (DEFAULT_STEPS)
    lr: float = 0.0  # 0 = the shipped model's peak learning rate for ``arch`` (DEFAULT_LR)
    warmup: int = 30
    min_lr_frac: float = 0.1
    weight_decay: float = 0.01
    rule_fraction: float = 0.2  # share of stream tokens that come from rule-task documents
    canary_start: float = -1.0  # canary occurrences go into blocks from this fraction of training on
    # (-1 = the shipped model's value for ``arch``, DEFAULT_CANARY_START)
    per_level: int = 32
    n_heldout_canaries: int = 64
    tokenizer_chars: int = 3_000_000
    eval_every: int = 250
    eval_blocks: int = 64  # held-out corpus blocks for the running held-out loss
    threads: int = 0  # torch threads; 0 keeps torch's default
    # GPT-Neo does not divide attention scores by sqrt(d_head). With ``scaled_query`` the query
    # projection starts 1/sqrt(d_head) smaller and learns at 1/sqrt(d_head) of the learning rate,
    # which under Adam is the training of a model with scaled scores, up to Adam's epsilon,
    # gradient clipping and weight decay (tested with those off). The saved weights are an
    # ordinary GPT-Neo. No effect on GPT-NeoX, which scales its scores itself.
    scaled_query: bool = False
    # Passes over the training set. The set holds ``steps * batch_size / epochs`` distinct blocks
    # with each canary written D times (its duplication level); every pass after the first visits
    # the blocks in a new seeded order, so a canary is seen D * epochs times.
    epochs: int = 0  # 0 = the shipped model's value for ``arch`` (DEFAULT_EPOCHS)

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}; got {self.arch!r}")
        if self.steps == 0:
            object.__setattr__(self, "steps", DEFAULT_STEPS[self.arch])
        if self.lr == 0:
            object.__setattr__(self, "lr", DEFAULT_LR[self.arch])
        if self.canary_start < 0:
            object.__setattr__(self, "canary_start", DEFAULT_CANARY_START[self.arch])
        if self.epochs == 0:
            object.__setattr__(self, "epochs", DEFAULT_EPOCHS[self.arch])
        if self.epochs < 1 or (self.steps * self.batch_size) % self.epochs:
            raise ValueError(f"epochs must be a positive divisor of steps * batch_size = {self.steps * self.batch_size}; "
                             f"got {self.epochs}")  # fmt: skip


def tiny_train_config(arch: str = "neox", **kw) -> TrainConfig:
    """A configuration that trains in seconds (for tests): 2 blocks, d_model 32, 30 steps."""
    base = dict(arch=arch, n_layers=2, d_model=32, n_heads=4, n_ctx=192, vocab_size=512, window=16,
                batch_size=8, steps=30, lr=2e-3, warmup=2, canary_start=0.0, per_level=2, n_heldout_canaries=2,
                tokenizer_chars=200_000, eval_every=10, eval_blocks=4, epochs=1)  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)


def rule_document(rng: random.Random, n_examples: int = 8) -> str:
    """Several rule-task examples (families drawn uniformly), one per line."""
    names = sorted(rules.FAMILIES)
    lines = []
    for _ in range(n_examples):
        ctx, ans = rules.FAMILIES[rng.choice(names)](rng)
        lines.append(ctx + ans)
    return "\n".join(lines) + "\n"


def build_tokenizer(cfg: TrainConfig, train_docs: list[tuple[str, str]]):
    """Byte-level BPE on up to ``tokenizer_chars`` of training text plus rule-task text."""
    rng = random.Random(f"tokenizer:{cfg.seed}")
    texts, total = [], 0
    for _, text in train_docs:
        if total >= cfg.tokenizer_chars:
            break
        texts.append(text)
        total += len(text)
    texts += [rule_document(rng) for _ in range(200)]
    return train_bpe_tokenizer(texts, cfg.vocab_size)


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def build_stream(cfg: TrainConfig, tokenizer, train_docs, canary_list) -> tuple[np.ndarray, dict, list]:
    """``([steps * batch_size, n_ctx]`` int64 training blocks with the canaries written in,
    statistics, the canaries with their ``lead`` set)``. With ``epochs`` E > 1 the blocks are E
    passes over ``steps * batch_size / E`` distinct blocks (each later pass in a new seeded
    order). Each occurrence is end-of-text plus the record, written at a random offset that
    leaves at least ``PREFIX_LEN`` tokens of training text before it; a canary's lead is that
    text at its first occurrence (for never-trained canaries, text from a random canary-free
    place)."""
    n_blocks = cfg.steps * cfg.batch_size // cfg.epochs  # distinct blocks
    need = n_blocks * cfg.n_ctx
    rng = random.Random(f"stream:{cfg.seed}")
    docs = list(train_docs)
    rng.shuffle(docs)
    corpus_ids, n_corpus, used = [], 0, []
    for name, text in docs:  # tokenize corpus documents until the corpus share is covered
        if n_corpus >= need * (1 - cfg.rule_fraction):
            break
        ids = _encode(tokenizer, [text])[0]
        corpus_ids.append(ids)
        n_corpus += len(ids) + 1
        used.append(name)
    rule_ids, n_rule = [], 0
    while n_rule < need - n_corpus:
        ids = _encode(tokenizer, [rule_document(rng)])[0]
        rule_ids.append(ids)
        n_rule += len(ids) + 1
    pieces = corpus_ids + rule_ids
    rng.shuffle(pieces)
    flat = np.fromiter((t for p in pieces for t in (*p, 0)), dtype=np.int64)
    if len(flat) < need:  # corpus exhausted: repeat it (logged in the manifest as epochs > 1)
        flat = np.tile(flat, math.ceil(need / len(flat)))
    blocks = flat[:need].reshape(n_blocks, cfg.n_ctx).copy()

    occurrences = [c for c in canary_list if isinstance(c.level, int) and c.level > 0 for _ in range(c.level)]
    if len(occurrences) > n_blocks:
        raise ValueError(f"{len(occurrences)} canary occurrences do not fit in {n_blocks} training blocks")
    first = int(cfg.canary_start * n_blocks)
    if len(occurrences) > n_blocks - first:
        raise ValueError(f"{len(occurrences)} canary occurrences do not fit in the last {n_blocks - first} training blocks")
    slots = rng.sample(range(first, n_blocks), len(occurrences))
    canary_ids = {c.id: C.record_ids(tokenizer, c)[0] for c in canary_list}
    lead_n = C.PREFIX_LEN  # every occurrence has at least this much training text before it
    leads: dict[str, tuple[int, ...]] = {}
    for block, c in sorted(zip(slots, occurrences, strict=True), key=lambda bc: bc[0]):
        ids = canary_ids[c.id]
        if lead_n + len(ids) > cfg.n_ctx:
            raise ValueError(f"canary {c.id} has {len(ids)} tokens; with its lead more than n_ctx={cfg.n_ctx}")
        off = rng.randint(lead_n, cfg.n_ctx - len(ids))
        blocks[block, off : off + len(ids)] = ids
        leads.setdefault(c.id, tuple(int(t) for t in blocks[block, off - lead_n : off]))  # first occurrence
    free = sorted(set(range(n_blocks)) - set(slots))
    for c in canary_list:  # never-trained canaries: a lead from a random canary-free place in the stream
        if c.id not in leads and free:
            block, off = rng.choice(free), rng.randint(lead_n, cfg.n_ctx)
            leads[c.id] = tuple(int(t) for t in blocks[block, off - lead_n : off])
    placed = [dataclasses.replace(c, lead=leads.get(c.id, c.lead)) for c in canary_list]
    stats = {
        "blocks": n_blocks, "tokens": need, "corpus_files_used": len(used), "corpus_tokens": n_corpus,
        "rule_tokens": n_rule, "canary_occurrences": len(occurrences),
        "canary_tokens": int(sum(len(canary_ids[c.id]) for c in occurrences)),
        "corpus_epochs": need / max(1, n_corpus + n_rule),
    }  # fmt: skip
    if cfg.epochs > 1:
        order = np.random.default_rng(rng.getrandbits(64))
        blocks = np.concatenate([blocks] + [blocks[order.permutation(n_blocks)] for _ in range(cfg.epochs - 1)])
        stats.update(epochs=cfg.epochs, tokens_seen=need * cfg.epochs)
    return blocks, stats, placed


def make_model(cfg: TrainConfig, vocab_size: int):
    """A freshly initialised HF model of ``cfg.arch`` (seeded by the caller)."""
    config = tiny_config(cfg.arch, n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads,
                         n_ctx=cfg.n_ctx, vocab_size=vocab_size, window=cfg.window)  # fmt: skip
    config._attn_implementation = "sdpa" if cfg.arch == "neox" else "eager"  # GPT-Neo has no sdpa
    model = (GPTNeoXForCausalLM if cfg.arch == "neox" else GPTNeoForCausalLM)(config)
    scales = lr_scales(model, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in scales:
                p.mul_(scales[name])
    return model


def lr_scales(model, cfg: TrainConfig) -> dict[str, float]:
    """Per-parameter learning-rate multipliers (names absent: 1). With ``scaled_query`` on
    GPT-Neo: 1/sqrt(d_head) for every query projection; ``make_model`` also scales their
    initial values by the same factor."""
    if not (cfg.scaled_query and cfg.arch == "neo"):
        return {}
    scale = (cfg.d_model // cfg.n_heads) ** -0.5
    return {name: scale for name, _ in model.named_parameters() if name.endswith("attn.attention.q_proj.weight")}


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up then cosine decay to ``min_lr_frac * lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


@torch.no_grad()
def mean_loss(model, blocks: np.ndarray, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy (nats) over all positions of ``blocks``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        x = torch.from_numpy(blocks[i : i + batch_size])
        logits = model(input_ids=x).logits[:, :-1]
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1), reduction="sum"))
        count += x[:, 1:].numel()
    model.train(was_training)
    return total / count


@torch.no_grad()
def greedy_matches(model, rows: np.ndarray, prefix_len: int) -> np.ndarray:
    """Per row: does greedy decoding from the prefix reproduce the suffix exactly? Computed on the
    HF model without a cache (for training curves and selection; final numbers use
    ``interp.generation``)."""
    if len(rows) == 0:
        return np.zeros(0, dtype=bool)
    was_training = model.training
    model.eval()
    seq = torch.from_numpy(rows[:, :prefix_len])
    for _ in range(rows.shape[1] - prefix_len):
        seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    model.train(was_training)
    return (seq[:, prefix_len:] == torch.from_numpy(rows[:, prefix_len:])).all(1).numpy()


def quick_em(model, rows: np.ndarray, prefix_len: int) -> float:
    """Exact match of greedy continuations (``greedy_matches`` averaged; nan for no rows)."""
    return float(greedy_matches(model, rows, prefix_len).mean()) if len(rows) else float("nan")


def train_loop(model, blocks: np.ndarray, cfg: TrainConfig, *, eval_fn=None, progress: bool = True,
               grad_mask: dict | None = None, desc: str = "train", stop_when=None) -> list[dict]:  # fmt: skip
    """AdamW over ``blocks`` in order, ``cfg.batch_size`` blocks per step, for ``len(blocks) //
    batch_size`` steps. ``grad_mask`` maps parameter names to 0/1 tensors that multiply the
    gradients (parameters absent from it must have ``requires_grad=False``). Returns the curve:
    one dict per ``eval_every`` steps with the mean training loss since the last entry and
    whatever ``eval_fn(model)`` returns. Training stops early after an entry for which
    ``stop_when(entry)`` is true."""
    params = [p for p in model.parameters() if p.requires_grad]
    scales = lr_scales(model, cfg)
    groups: dict[tuple[float, float], list] = {}  # (weight decay, lr multiplier) -> parameters
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((cfg.weight_decay if p.ndim >= 2 else 0.0, scales.get(name, 1.0)), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": wd, "lr_mult": m} for (wd, m), ps in groups.items()],
                            lr=cfg.lr, betas=(0.9, 0.95))  # fmt: skip
    named = dict(model.named_parameters())
    n_steps = len(blocks) // cfg.batch_size
    curve, losses, t0 = [], [], time.time()
    model.train()
    bar = tqdm(range(n_steps), desc=desc, disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg) * g["lr_mult"]
        x = torch.from_numpy(blocks[step * cfg.batch_size : (step + 1) * cfg.batch_size])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_mask:
            for name, mask in grad_mask.items():
                named[name].grad.mul_(mask)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % cfg.eval_every == 0 or step + 1 == n_steps:
            entry = {"step": step + 1, "train_loss": float(np.mean(losses)), "lr": lr_at(step, cfg),
                     "elapsed_s": round(time.time() - t0, 1)}  # fmt: skip
            if eval_fn is not None:
                entry.update(eval_fn(model))
            curve.append(entry)
            losses = []
            bar.set_postfix({k: round(v, 3) for k, v in entry.items() if k not in ("step", "lr")})
            log.info("%s", entry)
            if stop_when is not None and stop_when(entry):
                break
    model.eval()
    return curve


ORGANISM_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "vocab.json", "merges.txt", "canaries.json", "manifest.json"}  # fmt: skip


def check_organism_out(out: str | Path, kind: str, *, parent: str | Path | None = None) -> Path:
    """``out`` may be absent, an empty folder, or an organism folder of the same ``kind`` holding
    only an organism's files (it is then replaced). Refused with ``InputError``: a file, a link,
    a folder of other files, the shipped organisms, and the ``parent`` an injection reads."""
    from interp.errors import InputError
    from interp.organism import DATA_DIR

    text = str(out)
    if not text.strip():
        raise InputError("--out is empty; name a folder for the organism")
    try:
        out = Path(text).expanduser()
    except RuntimeError as err:
        raise InputError(f"--out {text!r}: {err}") from None
    if out.is_symlink():
        raise InputError(f"--out {text!r} is a symbolic link; name a real folder for the organism")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {text!r} is a file; expected a folder for the organism")
    resolved = out.resolve()
    if resolved == DATA_DIR.resolve() or DATA_DIR.resolve() in resolved.parents:
        raise InputError(f"--out {text!r} is inside the shipped organisms ({DATA_DIR}); choose a folder of your own")
    if parent is not None and resolved == Path(parent).resolve():
        raise InputError(f"--out {text!r} is the parent organism the injection reads; choose another folder")
    if out.is_dir() and any(out.iterdir()):
        try:
            found = json.loads((out / "manifest.json").read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            found = None
        others = sorted(p.name for p in out.iterdir() if p.name not in ORGANISM_FILES or not p.is_file())
        if found != kind or others:
            what = f"files that are not an organism's ({', '.join(others[:3])})" if found == kind else \
                f"files that are not an organism of kind {kind!r}"
            raise InputError(f"--out {text!r} holds {what}; choose a new or empty folder")
    return out


def save_folder(out: Path, model, tokenizer, canary_list, manifest: dict, prefix_len: int, row_len: int,
                *, finalize=None) -> Path:
    """Write model, tokenizer, canaries.json and manifest.json to ``out`` atomically (via a
    temporary sibling folder, so a failure leaves nothing half-written). ``finalize(tmp)`` runs
    on the finished temporary folder before it replaces ``out`` (e.g. the final evaluation, which
    may update ``manifest.json``). ``out`` may only be absent, empty or an organism of the same
    kind (``check_organism_out``); weights that are not all finite (a diverged run) are never
    saved, and ``out`` is then left as it was."""
    from interp.errors import InputError

    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise InputError(f"training diverged: {len(bad)} weight tensors hold NaN or infinity (first {bad[0]}); "
                         f"nothing was saved and {out} was left as it was")  # fmt: skip
    from interp.outputs import staged_folder

    out = check_organism_out(out, manifest["kind"])
    with staged_folder(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        C.save_canaries(tmp / "canaries.json", canary_list, prefix_len, row_len)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if finalize is not None:
            finalize(tmp)
        check_organism_out(out, manifest["kind"])  # again: it may have changed during the evaluation
    return out


def train(cfg: TrainConfig, out: str | Path, *, progress: bool = True, evaluate_final: bool = True) -> Path:
    """Train an organism from ``cfg`` and save it as an HF folder at ``out``; return the folder.

    The folder holds the weights (safetensors), config, tokenizer, ``canaries.json`` (trained,
    held-out) and ``manifest.json`` (seed, hyperparameters, corpus hashes, stream statistics,
    training curve, final metrics from ``interp.organism.evaluate``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.time()
    torch.manual_seed(cfg.seed)
    train_docs = corpus.documents("train")
    tokenizer = build_tokenizer(cfg, train_docs)
    canary_list = C.make_canaries(cfg.seed, cfg.per_level, cfg.n_heldout_canaries)
    prefix_len, row_len = C.PREFIX_LEN, C.ROW_LEN
    blocks, stats, canary_list = build_stream(cfg, tokenizer, train_docs, canary_list)
    held = heldout_blocks(tokenizer, cfg.n_ctx, cfg.eval_blocks)
    rows = {d: C.canary_rows(tokenizer, C.select(canary_list, d), prefix_len, row_len) for d in (1, 64)}

    def eval_fn(model):
        return {"heldout_loss": mean_loss(model, held), **{f"em_D{d}": quick_em(model, r, prefix_len) for d, r in rows.items()}}

    model = make_model(cfg, len(tokenizer))
    curve = train_loop(model, blocks, cfg, eval_fn=eval_fn, progress=progress, desc=f"train {cfg.arch}")
    train_seconds = time.time() - t_start
    model.config._attn_implementation = "eager"
    records = corpus.file_records()
    manifest = {
        "kind": "organism", "arch": cfg.arch, "seed": cfg.seed, "config": dataclasses.asdict(cfg),
        "n_params": sum(p.numel() for p in model.parameters()),
        "python": corpus.python_version(), "torch": torch.__version__,
        "corpus": {"fingerprint": corpus.corpus_fingerprint(records), "files": records},
        "stream": stats, "prefix_len": prefix_len, "row_len": row_len,
        "train_seconds": round(train_seconds, 1), "torch_threads": torch.get_num_threads(), "curve": curve,
    }  # fmt: skip
    return save_folder(Path(out), model, tokenizer, canary_list, manifest, prefix_len, row_len,
                       finalize=evaluate.final_evaluation(manifest, progress) if evaluate_final else None)  # fmt: skip
