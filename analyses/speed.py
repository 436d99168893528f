"""Speed benchmark: our block-bypass sweep against the reference approach, in one run.

Model: a Pythia-70m-shaped GPT-NeoX (6 blocks, d_model 512, 8 heads, d_mlp 2048, vocabulary
50304) with random weights. Data: ``--n-seq`` rows of 64 tokens (prefix 32) that the model
reproduces (random prefixes plus the model's own greedy continuation: a memorized set by
definition). Configs: baseline plus each block bypassed; metrics EM, TA and CE per sequence.

Reference approach (the public code's method, its defects fixed): for each config, one after
another, Hugging Face ``generate`` (greedy, eager attention, KV cache, no EOS stop) over
batches, plus one teacher-forced forward pass for the entropy; the bypass is a forward hook on
each HF attention module that returns the per-token value/output projection.

Ours: ``interp.memorization.sweep`` through the TransformerLens bridge (teacher-forcing
shortcut, suffix-only unembedding, the open rows of all configs decoded in one batch from their
teacher-forced KV caches).

Each approach runs in its own subprocess so its peak resident memory (ru_maxrss) is its own.
The script prints the wall-time ratio and both peaks, and exits non-zero unless both give
identical per-sequence EM and TA and CE within 1e-4 relative.

    python analyses/speed.py                 # full benchmark (issue: 512 sequences)
    python analyses/speed.py --n-seq 64      # quick look
    python analyses/speed.py --heads-only    # the per-head sweep alone (all 48 heads)
    python analyses/speed.py --organism neox # trained weights: the shipped organism's canaries
    python analyses/speed.py --device cuda   # on a GPU (also reports each approach's peak device memory)

``--organism ARCH`` swaps the workload for one with trained weights: the shipped organism (d_model
192, 6 blocks, vocabulary 4096) and its trained canaries (duplication levels 1-64, 48 tokens,
prefix 32), repeated in order to ``--n-seq`` rows. Some of them the organism reproduces under a
bypass and some it does not, so this is where skipping the decode of reproduced rows can pay.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the HF reference bypass lives with the reference tests

SHAPE = dict(n_layers=6, d_model=512, n_heads=8, d_mlp=2048, vocab_size=50304, n_ctx=2048)


def build_inputs(out: Path, n_seq: int, seq_len: int, prefix_len: int, batch_size: int) -> tuple[Path, Path]:
    from interp.generation import greedy_generate
    from interp.models import load_model
    from interp.tiny import make_tiny_model

    folder = out / "model"
    if not (folder / "config.json").exists():
        make_tiny_model(folder, "neox", seed=0, **SHAPE)
    rows_path = out / f"rows_{n_seq}x{seq_len}_p{prefix_len}.npy"
    if not rows_path.exists():
        model = load_model(folder)
        prefix = torch.randint(1, SHAPE["vocab_size"], (n_seq, prefix_len), generator=torch.Generator().manual_seed(0))
        suffix = greedy_generate(model, prefix, seq_len - prefix_len, batch_size=batch_size)
        np.save(rows_path, torch.cat([prefix, suffix], 1).numpy())
    return folder, rows_path


def organism_inputs(out: Path, arch: str, n_seq: int) -> tuple[Path, Path, int]:
    """The shipped organism ``arch`` and its trained canaries (levels 1-64) tiled to ``n_seq`` rows."""
    from paper_figures import organism_canary_set

    from interp.organism import organism_path

    canaries, prefix_len = organism_canary_set(arch, out / "canaries")
    rows = np.load(canaries)
    rows_path = out / f"organism-{arch}-rows_{n_seq}.npy"
    np.save(rows_path, np.resize(rows, (n_seq, rows.shape[1])))  # np.resize repeats the rows in order
    return organism_path(arch), rows_path, prefix_len


def model_shape(folder: Path) -> dict:
    """The shape numbers ``arithmetic_bound`` reads, from a model folder's config.json."""
    config = json.loads((folder / "config.json").read_text())
    return {"n_layers": config["num_hidden_layers"] if "num_hidden_layers" in config else config["num_layers"],
            "d_model": config["hidden_size"], "vocab_size": config["vocab_size"]}  # fmt: skip


def worker_ours(folder: Path, rows: np.ndarray, prefix_len: int, batch_size: int, heads: bool, device: str = "cpu",
                decode_rows: int | None = None) -> pd.DataFrame:  # fmt: skip
    from interp.localize import head_bypass_sweep
    from interp.memorization import sweep
    from interp.models import load_model

    model = load_model(folder, device=device)
    if heads:  # the per-head sweep: all heads of a layer share one teacher-forced pass
        return head_bypass_sweep(model, rows, prefix_len, batch_size=batch_size)
    return sweep(model, rows, prefix_len, batch_size=batch_size, progress=False, decode_rows=decode_rows)


@torch.no_grad()
def worker_reference(folder: Path, rows: np.ndarray, prefix_len: int, batch_size: int, device: str = "cpu") -> pd.DataFrame:
    from interp import metrics
    from reference import HFBypass, load_hf

    hf = load_hf(folder).to(device)
    hf.generation_config.eos_token_id = None  # never stop early (defect 4 of the public code)
    tokens = torch.as_tensor(rows)
    T = tokens.shape[1] - prefix_len
    frames = []
    for config, layers in [("baseline", [])] + [(f"block:{l}", [l]) for l in range(hf.config.num_hidden_layers)]:
        em, ta, ce = [], [], []
        with HFBypass(hf, layers):
            for start in range(0, len(tokens), batch_size):
                batch = tokens[start : start + batch_size].to(device)
                gen = hf.generate(
                    batch[:, :prefix_len], attention_mask=torch.ones_like(batch[:, :prefix_len]),
                    max_new_tokens=T, min_new_tokens=T, do_sample=False, num_beams=1, pad_token_id=0,
                )[:, prefix_len:]  # fmt: skip
                logits = hf(batch[:, :-1]).logits[:, prefix_len - 1 :]
                em.append(metrics.exact_match(gen, batch[:, prefix_len:]).float().cpu())
                ta.append(metrics.token_accuracy(gen, batch[:, prefix_len:]).cpu())
                ce.append(metrics.completion_entropy(logits).cpu())
        frames.append(pd.DataFrame({"config": config, "sequence": np.arange(len(tokens)),
                                    "exact_match": torch.cat(em).numpy(), "token_accuracy": torch.cat(ta).numpy(),
                                    "completion_entropy": torch.cat(ce).numpy()}))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def arithmetic_bound(shape: dict, prefix_len: int, seq_len: int) -> dict:
    """Multiply-accumulates per row of a block sweep (baseline + every block) when every bypassed
    row leaves the suffix at its first token (as on this workload), counting the block matrices
    (12 d^2 per token per block) and the unembedding (d * vocab per unembedded position), and
    ignoring attention scores (under 2% at 64 tokens). Reference: ``generate`` (prefill of the
    prefix unembedding its last position, then one token per step) plus a teacher-forced pass
    unembedding every position. Ours: the teacher-forced pass unembedding only the suffix
    positions, then the decode of the rest of each bypassed row's suffix; "ours, best case" also
    reuses the baseline's activations below the bypassed block in the teacher-forced pass. The
    ratio is the speedup an implementation as efficient per operation as the reference could
    reach."""
    d, L, V = shape["d_model"], shape["n_layers"], shape["vocab_size"]
    T, n = seq_len - prefix_len, seq_len - 1  # suffix tokens; teacher-forced positions
    block, unembed = 12 * d * d, d * V
    reference = (n + n) * L * block + (T + n) * unembed  # generate: n block-tokens (prefix + T-1 steps), T unembeds
    tf = n * L * block + T * unembed
    decode = (T - 1) * (L * block + unembed)
    ref_sweep = (L + 1) * reference
    ours = tf + L * (tf + decode)
    reuse = n * block * sum(range(L))  # block l bypassed: blocks below l need no recomputation
    return {"reference_gmac_per_row": ref_sweep / 1e9, "ours_gmac_per_row": ours / 1e9,
            "arithmetic_speedup_bound": ref_sweep / ours, "arithmetic_speedup_bound_with_reuse": ref_sweep / (ours - reuse)}  # fmt: skip


def matmul_gflops(shape: dict, rows: int = 448, seconds: float = 2.0) -> dict:
    """Rates (GFLOP/s) of a bare float32 matrix multiply of the model's two largest shapes (the
    unembedding and the MLP's first matrix) on ``rows`` rows, each repeated for ``seconds`` (at
    least 5 times), with this process's torch threads: the best single multiply of either shape
    ("best", a ceiling that errs high) and the better of the two shapes' median rates
    ("median", what a sustained stream of such multiplies gets)."""
    d, V = shape["d_model"], shape["vocab_size"]
    best, medians = 0.0, []
    for n_out in (V, 4 * d):
        a, b = torch.randn(rows, d), torch.randn(d, n_out)
        a @ b  # warm-up
        stop, rates = time.perf_counter() + seconds, []
        while len(rates) < 5 or time.perf_counter() < stop:
            t = time.perf_counter()
            a @ b
            rates.append(2 * rows * d * n_out / (time.perf_counter() - t) / 1e9)
        best, medians = max(best, max(rates)), medians + [float(np.median(rates))]
    return {"best": best, "median": max(medians)}


def speedup_ceiling(bound: dict, n_seq: int, reference_seconds: float, matmul: dict) -> dict:
    """How far efficiency per operation could lift the arithmetic bound. The reference's achieved
    rate is its counted operations over its wall time. If every one of our operations ran at a
    bare multiply's rate (``matmul``, see ``matmul_gflops``), and the baseline's activations below
    the bypassed block were reused, the ratio would be the bound with reuse times that rate over
    the reference's. No real implementation gets there: attention, norms and the argmax over the
    vocabulary run far below a matrix multiply's rate."""
    reference_gflops = 2 * bound["reference_gmac_per_row"] * n_seq / reference_seconds
    with_reuse = bound["arithmetic_speedup_bound_with_reuse"]
    return {"reference_gflops": reference_gflops, "matmul_gflops_median": matmul["median"],
            "matmul_gflops_best": matmul["best"],
            "speedup_ceiling_at_median_matmul": with_reuse * matmul["median"] / reference_gflops,
            "speedup_ceiling_at_best_matmul": with_reuse * matmul["best"] / reference_gflops}  # fmt: skip


def run_worker(args) -> None:
    rows = np.load(args.rows)
    cuda = torch.device(args.device).type == "cuda"
    start = time.perf_counter()
    if args.worker == "reference":
        df = worker_reference(Path(args.model), rows, args.prefix_len, args.batch_size, args.device)
    else:
        df = worker_ours(Path(args.model), rows, args.prefix_len, args.batch_size, args.worker == "heads", args.device,
                         args.decode_rows)  # fmt: skip
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    df.to_parquet(args.result)
    timing = {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:  # on a GPU the memory that matters is the device's
        timing["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.result).with_suffix(".json").write_text(json.dumps(timing))


def spawn(kind: str, folder: Path, rows_path: Path, out: Path, args) -> tuple[pd.DataFrame, dict]:
    result = out / f"{kind}.parquet"
    cmd = [sys.executable, __file__, "--worker", kind, "--model", str(folder), "--rows", str(rows_path),
           "--result", str(result), "--prefix-len", str(args.prefix_len), "--batch-size", str(args.batch_size),
           "--device", args.device, *(["--decode-rows", str(args.decode_rows)] if args.decode_rows is not None else [])]  # fmt: skip
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return pd.read_parquet(result), json.loads(result.with_suffix(".json").read_text())


def compare(ours: pd.DataFrame, ref: pd.DataFrame) -> list[str]:
    merged = ours.merge(ref, on=["config", "sequence"], suffixes=("", "_ref"), validate="one_to_one")
    problems = []
    for m in ["exact_match", "token_accuracy"]:
        n_bad = int((merged[m] != merged[f"{m}_ref"]).sum())
        if n_bad:
            problems.append(f"{m}: {n_bad} of {len(merged)} sequences differ")
    ce_ok = np.isclose(merged.completion_entropy, merged.completion_entropy_ref, rtol=1e-4, atol=1e-4)
    if not ce_ok.all():
        problems.append(f"completion_entropy: {int((~ce_ok).sum())} of {len(merged)} differ beyond 1e-4")
    if len(merged) != len(ref):
        problems.append("the two runs cover different (config, sequence) pairs")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-seq", type=int, default=512)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--prefix-len", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--heads", action="store_true", help="also time the per-head sweep (all 48 heads)")
    p.add_argument("--heads-only", action="store_true",
                   help="time only the per-head sweep (reuses the model and rows of an earlier run in --out)")
    p.add_argument("--organism", choices=["neox", "neo"],
                   help="trained weights instead: the shipped organism ARCH and its canaries (ignores --seq-len/--prefix-len)")
    p.add_argument("--decode-rows", type=int, default=None,
                   help="cap on the rows of one joint decode in our sweep (default: the library's, 2 GiB of KV cache)")
    p.add_argument("--device", default="cpu", help="torch device for both approaches, e.g. cuda (default cpu)")
    p.add_argument("--out", default=None, help="working folder (default results/speed, or results/speed-organism-ARCH)")
    p.add_argument("--worker", choices=["reference", "ours", "heads"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--rows", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        p.error(f"--device: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this torch build sees no CUDA device")
    if args.decode_rows is not None and args.decode_rows < args.batch_size:
        p.error(f"--decode-rows ({args.decode_rows}) must be at least --batch-size ({args.batch_size})")
    if args.worker:
        run_worker(args)
        return 0
    out = Path(args.out or ROOT / "results" / ("speed" if not args.organism else f"speed-organism-{args.organism}"))
    out.mkdir(parents=True, exist_ok=True)
    if args.organism:
        folder, rows_path, args.prefix_len = organism_inputs(out, args.organism, args.n_seq)
        args.seq_len = int(np.load(rows_path, mmap_mode="r").shape[1])
    else:
        folder, rows_path = build_inputs(out, args.n_seq, args.seq_len, args.prefix_len, args.batch_size)
    if args.heads_only:
        heads, t_heads = spawn("heads", folder, rows_path, out, args)
        summary = {"n_seq": args.n_seq, "head_configs": int(heads.config.nunique()),
                   "head_sweep_seconds": round(t_heads["seconds"], 1), "head_sweep_peak_rss_mb": round(t_heads["peak_rss_mb"]),
                   "torch_threads": torch.get_num_threads()}  # fmt: skip
        (out / "heads_summary.json").write_text(json.dumps(summary, indent=2))
        for k, v in summary.items():
            print(f"{k:>30}: {v}")
        return 0
    bound = arithmetic_bound(model_shape(folder), args.prefix_len, args.seq_len)
    matmul = matmul_gflops(model_shape(folder)) if args.device == "cpu" else None
    ours, t_ours = spawn("ours", folder, rows_path, out, args)
    ref, t_ref = spawn("reference", folder, rows_path, out, args)
    problems = compare(ours, ref)
    summary = {
        "n_seq": args.n_seq, "seq_len": args.seq_len, "prefix_len": args.prefix_len, "batch_size": args.batch_size,
        "reference_seconds": round(t_ref["seconds"], 1), "ours_seconds": round(t_ours["seconds"], 1),
        "speedup": round(t_ref["seconds"] / t_ours["seconds"], 2),
        "reference_peak_rss_mb": round(t_ref["peak_rss_mb"]), "ours_peak_rss_mb": round(t_ours["peak_rss_mb"]),
        **({"reference_peak_device_mb": round(t_ref["peak_device_mb"]), "ours_peak_device_mb": round(t_ours["peak_device_mb"])}
           if "peak_device_mb" in t_ref else {}),
        "device": args.device, "decode_rows": args.decode_rows,
        "identical_metrics": not problems, "torch_threads": torch.get_num_threads(),
        # greedy decoding reproduces a row iff every teacher-forced argmax is right, so the rows
        # our sweep had to decode are exactly those with EM 0
        "bypassed_rows_decoded": round(1 - float(ours[ours.config != "baseline"].exact_match.mean()), 3),
        **{k: round(v, 2) for k, v in bound.items()},
    }  # fmt: skip
    if args.device == "cpu":  # on a CPU each step's cost is its arithmetic; see speedup_ceiling
        ceiling = speedup_ceiling(bound, args.n_seq, t_ref["seconds"], matmul)
        summary.update({k: round(v, 2) for k, v in ceiling.items()})
    if args.organism:
        summary = {"workload": f"organism:{args.organism} canaries", **summary}
    if args.heads:
        _, t_heads = spawn("heads", folder, rows_path, out, args)
        summary["head_sweep_seconds_48_heads"] = round(t_heads["seconds"], 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for k, v in summary.items():
        print(f"{k:>30}: {v}")
    for problem in problems:
        print("MISMATCH:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
