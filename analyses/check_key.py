"""An independent check of the answer key, written apart from the package's computations.

Each shipped key organism is loaded as a plain Hugging Face model (``AutoModelForCausalLM``)
from the folder ``interp organism path NAME`` materializes, and checked with transformers,
safetensors and torch only:

- V1: its injected canaries' rows are rebuilt here from ``canaries.json`` (the tokenizer's
  offsets find the secret; the row is the end of the lead, end-of-text, the record), and
  ``model.generate`` (greedy, 16 new tokens) must reproduce at least 90% of the suffixes.
- V3: perplexity on the held-out rows (exported by ``interp organism heldout``) at most 1.05x
  the parent's; of the trained canaries the parent reproduces exactly, at most one lost.
- V4: every number of ``model.safetensors`` that differs from the parent's lies in the declared
  component's slices, derived here from the config.

The package supplies only the files: the materialized folders, the parent folders and the
held-out token rows.

    python analyses/check_key.py [NAME ...]      (default: every shipped key organism)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

PREFIX, ROW = 32, 48


def interp(*argv: str) -> str:
    return subprocess.run([sys.executable, "-m", "interp", *argv], check=True, capture_output=True, text=True).stdout.strip()


def rows_of(tokenizer, canaries: list[dict]) -> np.ndarray:
    out = []
    for c in canaries:
        enc = tokenizer(c["text"], return_offsets_mapping=True, add_special_tokens=False)
        s = [a for a, _ in enc["offset_mapping"]].index(c["secret_start"]) + 1  # +1: end-of-text first
        ids = [0, *enc["input_ids"]]
        lead = list(c["lead"])[len(c["lead"]) - (PREFIX - s) :] if PREFIX > s else []
        out.append(lead + ids[: s + ROW - PREFIX])
    return np.asarray(out, dtype=np.int64)


@torch.no_grad()
def exact(model, rows: np.ndarray) -> np.ndarray:
    if len(rows) == 0:
        return np.zeros(0, dtype=bool)
    x = torch.from_numpy(rows)
    gen = model.generate(x[:, :PREFIX], attention_mask=torch.ones_like(x[:, :PREFIX]), max_new_tokens=ROW - PREFIX,
                         min_new_tokens=ROW - PREFIX, do_sample=False, pad_token_id=0)  # fmt: skip
    return (gen[:, PREFIX:] == x[:, PREFIX:]).all(1).numpy()


@torch.no_grad()
def perplexity(model, rows: np.ndarray) -> float:
    total, n = 0.0, 0
    for b in torch.from_numpy(rows).split(16):
        logits = model(input_ids=b).logits[:, :-1]
        total += float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1), reduction="sum"))
        n += b[:, 1:].numel()
    return float(np.exp(total / n))


def allowed(config: dict, component: str, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """1 where the declared component may change ``name``'s numbers."""
    m = re.fullmatch(r"block:(\d+)|L(\d+)H(\d+)", component)
    block, head = (int(m[1]), None) if m[1] else (int(m[2]), int(m[3]))
    n_heads = config.get("num_attention_heads") or config["num_heads"]
    dh = config["hidden_size"] // n_heads
    mask = torch.zeros(shape, dtype=torch.bool)
    hs = slice(None) if head is None else slice(head * dh, (head + 1) * dh)
    if config["model_type"] == "gpt_neox":
        pre = f"gpt_neox.layers.{block}.attention."
        qkv = slice(None) if head is None else slice(head * 3 * dh, (head + 1) * 3 * dh)  # per head: [q k v]
        if name in (pre + "query_key_value.weight", pre + "query_key_value.bias"):
            mask[qkv] = True
        elif name == pre + "dense.weight":
            mask[:, hs] = True
        elif name == pre + "dense.bias" and head is None:
            mask[:] = True
    else:
        pre = f"transformer.h.{block}.attn.attention."
        if name in (pre + "q_proj.weight", pre + "k_proj.weight", pre + "v_proj.weight"):
            mask[hs] = True
        elif name == pre + "out_proj.weight":
            mask[:, hs] = True
        elif name == pre + "out_proj.bias" and head is None:
            mask[:] = True
    return mask


def main(names: list[str]) -> int:
    listing = json.loads(interp("organism", "list", "--json"))
    names = names or [r["name"] for r in listing]
    by_name = {r["name"]: r for r in listing}
    parents: dict[str, dict] = {}
    failures = 0
    print("| organism | V1 exact | V3 ppl ratio | V3 parent's memorized kept | V4 numbers changed outside | all true |")
    print("|---|---|---|---|---|---|")
    for name in names:
        arch = by_name[name]["family"]
        folder = Path(interp("organism", "path", name))
        if arch not in parents:
            pf = Path(interp("organism", "path", "--arch", arch))
            with tempfile.TemporaryDirectory() as tmp:
                interp("organism", "heldout", "--arch", arch, "--out", f"{tmp}/held.npy")
                held = np.load(f"{tmp}/held.npy", allow_pickle=False)
            pm = AutoModelForCausalLM.from_pretrained(pf).eval()
            ptok = AutoTokenizer.from_pretrained(pf)
            trained = [c for c in json.loads((pf / "canaries.json").read_text())["canaries"] if isinstance(c["level"], int) and c["level"] > 0]
            hit = exact(pm, rows_of(ptok, trained))
            parents[arch] = {"folder": pf, "held": held, "ppl": perplexity(pm, held),
                             "memorized": [c for c, h in zip(trained, hit, strict=True) if h]}  # fmt: skip
        p = parents[arch]
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        tok = AutoTokenizer.from_pretrained(folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        injected = [c for c in json.loads((folder / "canaries.json").read_text())["canaries"] if c["level"] == "injected"]
        e = exact(model, rows_of(tok, injected))
        v1 = manifest["key"]["kind"] == "sham" or (len(e) >= 32 and e.sum() >= 0.9 * len(e))
        ratio = perplexity(model, p["held"]) / p["ppl"]
        kept = int(exact(model, rows_of(tok, p["memorized"])).sum())
        config = json.loads((folder / "config.json").read_text())
        a, b = load_file(str(p["folder"] / "model.safetensors")), load_file(str(folder / "model.safetensors"))
        outside = sum(int(((a[k] != b[k]) & ~allowed(config, manifest["injected_component"], k, tuple(a[k].shape))).sum()) for k in a)
        outside += len(set(a) ^ set(b))
        ok = bool(v1 and ratio <= 1.05 and len(p["memorized"]) - kept <= 1 and outside == 0)
        failures += not ok
        v1_cell = "sham" if manifest["key"]["kind"] == "sham" else f"{int(e.sum())}/{len(e)}"
        print(f"| {name} | {v1_cell} | {ratio:.3f} | {kept}/{len(p['memorized'])} | {outside} | {ok} |", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
