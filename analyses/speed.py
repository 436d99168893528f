"""Speed benchmark: our sweeps and benchmark scoring against the tools users would pick instead,
each pair in one run.

Three comparisons, each exiting non-zero unless both sides give identical numbers:

* Block sweep (default). Model: a Pythia-70m-shaped GPT-NeoX (6 blocks, d_model 512, 8 heads,
  d_mlp 2048, vocabulary 50304) with random weights. Data: ``--n-seq`` rows of 64 tokens (prefix
  32) that the model reproduces (random prefixes plus the model's own greedy continuation).
  Configs: baseline plus each block bypassed; EM, TA and CE per sequence. Reference (the public
  code's method, its defects fixed): for each config, Hugging Face ``generate`` (greedy, eager
  attention, KV cache, no EOS stop) plus one teacher-forced pass for the entropy; the bypass is
  a forward hook on each HF attention module. Ours: ``interp.memorization.sweep`` through the
  bridge (teacher-forcing shortcut, reuse below the bypassed block, suffix-only unembedding,
  the open rows of all configs decoded together from their teacher-forced KV caches).
* ``--heads``: every single head bypassed (``interp.localize.head_bypass_sweep``) against the
  same reference run per head (the head bypass as hooks on HF's attention and output
  projection, right under a KV cache: ``tests/reference.py``).
* ``--bench``: the paper's benchmark protocol (baseline + every block, the six built-in tasks,
  250 items each) on a shipped organism, ``interp.benchmarks.evaluate`` against
  lm-evaluation-harness's ``HFLM`` on the same items with the same bypass hooks; accuracies
  must be identical.

Each approach runs in its own subprocess (imports done before the clock starts), so its peak
resident memory (ru_maxrss) and CPU time are its own; ``--repeat N`` alternates the two N times
and reports min and median.

    python analyses/speed.py                                   # block sweep (512 sequences)
    python analyses/speed.py --n-seq 64                        # quick look
    python analyses/speed.py --heads --organism neox --memorized --n-seq 256   # all-heads sweep
    python analyses/speed.py --bench --threads 1               # benchmark protocol against HFLM
    python analyses/speed.py --organism neox                   # trained weights: the organism's canaries
    python analyses/speed.py --device cuda                     # on a GPU (also peak device memory)
    python analyses/speed.py --heads --real --layers 0,10,20,29 --threads 1   # SmolLM2's heads (after `make real`)

``--organism ARCH`` swaps the workload for one with trained weights: the shipped organism (d_model
192, 6 blocks, vocabulary 4096) and its trained canaries (duplication levels 1-64, 48 tokens,
prefix 32), repeated in order to ``--n-seq`` rows; ``--memorized`` keeps only the canaries the
organism reproduces (the rows a sweep is meant for).

``--real`` (with ``--heads``) takes the real model instead: SmolLM2-135M from the wheel
(``load_model("smollm2")``; 30 blocks of 9 heads) on the windows of the shipped passages it
reproduces exactly (``results/real/memorized.npy``, written by ``make real``); ``--layers``
keeps the heads of some blocks only, for both approaches (the reference took about 50 s per
head on one core for 41 rows), and the operation-count bound is computed for the same blocks.
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


def organism_inputs(out: Path, arch: str, n_seq: int, memorized: bool = False) -> tuple[Path, Path, int]:
    """The shipped organism ``arch`` and its trained canaries (levels 1-64) tiled to ``n_seq``
    rows; with ``memorized`` only those it reproduces (greedy, exact)."""
    from paper_figures import organism_canary_set

    from interp.data import mine_memorized
    from interp.models import load_model
    from interp.organism import organism_path

    canaries, prefix_len = organism_canary_set(arch, out / "canaries")
    rows = np.load(canaries)
    if memorized:
        rows, _ = mine_memorized(load_model(organism_path(arch)), rows, prefix_len)
    rows_path = out / f"organism-{arch}-rows_{n_seq}{'-memorized' if memorized else ''}.npy"
    np.save(rows_path, np.resize(rows, (n_seq, rows.shape[1])))  # np.resize repeats the rows in order
    return organism_path(arch), rows_path, prefix_len


def real_inputs(parser) -> tuple[Path, Path, int]:
    """SmolLM2's folder, the windows it reproduces (``make real`` writes them) and their prefix
    length."""
    from interp.errors import InputError
    from interp.real import smollm2_folder

    rows_path = ROOT / "results" / "real" / "memorized.npy"
    try:
        folder = smollm2_folder()
    except InputError as err:
        parser.error(f"--real: {err}")
    if not rows_path.is_file():
        parser.error(f"--real: {rows_path} is missing: run `make real` first")
    from real_model import PREFIX_LEN

    return folder, rows_path, PREFIX_LEN


def model_shape(folder: Path) -> dict:
    """The shape numbers ``arithmetic_bound`` reads, from a model folder's config.json."""
    config = json.loads((folder / "config.json").read_text())
    return {"n_layers": config["num_hidden_layers"] if "num_hidden_layers" in config else config["num_layers"],
            "d_model": config["hidden_size"], "vocab_size": config["vocab_size"],
            "n_heads": config["num_attention_heads"] if "num_attention_heads" in config else config["num_heads"]}  # fmt: skip


def worker_ours(folder: Path, rows: np.ndarray, prefix_len: int, batch_size: int, heads: bool, device: str = "cpu",
                decode_rows: int | None = None, layers: list[int] | None = None) -> pd.DataFrame:  # fmt: skip
    from interp.localize import head_bypass_sweep
    from interp.memorization import sweep
    from interp.models import load_model

    model = load_model(folder, device=device)
    if heads:  # the per-head sweep: all heads of a layer share one teacher-forced pass
        return head_bypass_sweep(model, rows, prefix_len, layers=layers, batch_size=batch_size)
    return sweep(model, rows, prefix_len, batch_size=batch_size, progress=False, decode_rows=decode_rows)


@torch.no_grad()
def worker_reference(folder: Path, rows: np.ndarray, prefix_len: int, batch_size: int, device: str = "cpu",
                     heads: bool = False, layers: list[int] | None = None) -> pd.DataFrame:  # fmt: skip
    """The reference approach, config after config: baseline plus every block bypassed, or with
    ``heads`` every single head bypassed (``L{l}H{h}``)."""
    from interp import metrics
    from reference import HFBypass, load_hf

    hf = load_hf(folder).to(device)
    hf.generation_config.eos_token_id = None  # never stop early (defect 4 of the public code)
    tokens = torch.as_tensor(rows)
    T = tokens.shape[1] - prefix_len
    frames = []
    L = hf.config.num_hidden_layers
    H = hf.config.num_attention_heads if hasattr(hf.config, "num_attention_heads") else hf.config.num_heads
    if heads:
        configs = [(f"L{l}H{h}", [l], [h]) for l in (range(L) if layers is None else layers) for h in range(H)]
    else:
        configs = [("baseline", [], None)] + [(f"block:{l}", [l], None) for l in range(L)]
    for config, layers, head in configs:
        em, ta, ce = [], [], []
        with HFBypass(hf, layers, heads=head):
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


def head_arithmetic_bound(shape: dict, prefix_len: int, seq_len: int, layers: list[int] | None = None) -> dict:
    """Multiply-accumulates per row of the all-heads sweep (every single head bypassed), counted
    as in ``arithmetic_bound``, in our best case: no bypassed row needs decoding (every row the
    model reproduces stays reproduced). Reference, per head: ``generate`` plus a teacher-forced
    pass unembedding every position. Ours: one unmodified pass, then per head of block l a
    teacher-forced pass through blocks l..L-1 only, unembedding the suffix. Rows that do need
    decoding add to ours, so the measured ratio sits below this. ``layers``: only those blocks'
    heads are swept (by both)."""
    d, L, V, H = shape["d_model"], shape["n_layers"], shape["vocab_size"], shape["n_heads"]
    layers = list(range(L)) if layers is None else list(layers)
    T, n = seq_len - prefix_len, seq_len - 1
    block, unembed = 12 * d * d, d * V
    reference = H * len(layers) * ((n + n) * L * block + (T + n) * unembed)
    ours = (n * L * block + T * unembed) + H * sum(n * (L - l) * block + T * unembed for l in layers)
    return {"reference_gmac_per_row": reference / 1e9, "ours_best_case_gmac_per_row": ours / 1e9,
            "arithmetic_speedup_bound_no_decode": reference / ours}  # fmt: skip


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


BENCH_TASKS = "typo,swapped_words,line_order,rule_brackets,rule_count,rule_successor"  # the six built-in tasks


def worker_bench(folder: Path, batch_size: int, device: str, limit: int | None) -> pd.DataFrame:
    """Ours: ``interp.benchmarks.evaluate`` of the paper's configs (baseline + every block
    bypassed) on the built-in tasks."""
    from interp import benchmarks as B
    from interp.memorization import block_configs
    from interp.models import load_model

    model = load_model(folder, device=device)
    tasks = _limited(B.resolve_tasks(BENCH_TASKS), limit)
    return B.evaluate(model, tasks, block_configs(model), batch_size=batch_size, progress=False)[["config", "task", "acc", "acc_norm"]]


@torch.no_grad()
def worker_bench_hflm(folder: Path, batch_size: int, device: str, limit: int | None) -> pd.DataFrame:
    """lm-evaluation-harness's ``HFLM`` on the same HF model (eager attention), the same items
    as (context, choice) strings and the same bypass as forward hooks on HF's attention modules
    (``reference.HFBypass``), config after config; accuracies from its log-likelihoods by
    ``interp.benchmarks.mc_metrics`` (the harness's own rule)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from interp import benchmarks as B
    from reference import HFBypass, load_hf

    hf = load_hf(folder).to(device)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    lm = HFLM(pretrained=hf, tokenizer=tokenizer, batch_size=batch_size, max_length=hf.config.max_position_embeddings,
              device=device)  # fmt: skip
    tasks = _limited(B.resolve_tasks(BENCH_TASKS), limit)
    rows = []
    for config, layers in [("baseline", [])] + [(f"block:{l}", [l]) for l in range(hf.config.num_hidden_layers)]:
        with HFBypass(hf, layers):
            for task in tasks:
                instances = [Instance("loglikelihood", {}, (item.context, choice), k)
                             for item in task.items for k, choice in enumerate(item.choices)]  # fmt: skip
                scores = np.array([score for score, _ in lm.loglikelihood(instances, disable_tqdm=True)])
                m = B.mc_metrics(task, B.item_scores(scores, task))
                rows.append({"config": config, "task": task.name, "acc": m["acc"], "acc_norm": m["acc_norm"]})
    return pd.DataFrame(rows)


def _limited(tasks: list, limit: int | None) -> list:
    from interp.benchmarks import Task

    return tasks if limit is None else [Task(t.name, t.items[:limit], t.kind) for t in tasks]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_worker(args) -> None:
    import interp.localize  # noqa: F401  imports are not the work being timed (about 9 s for either approach)
    import interp.memorization  # noqa: F401
    import interp.models  # noqa: F401
    import reference  # noqa: F401

    if args.worker == "bench-hflm":
        import lm_eval.models.huggingface  # noqa: F401

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = np.load(args.rows) if args.rows else None
    cuda = torch.device(args.device).type == "cuda"
    start, cpu = time.perf_counter(), _cpu_seconds()
    if args.worker == "bench":
        df = worker_bench(Path(args.model), args.batch_size, args.device, args.limit)
    elif args.worker == "bench-hflm":
        df = worker_bench_hflm(Path(args.model), args.batch_size, args.device, args.limit)
    elif args.worker in ("reference", "heads-reference"):
        df = worker_reference(Path(args.model), rows, args.prefix_len, args.batch_size, args.device, args.worker == "heads-reference",
                              args.layers)  # fmt: skip
    else:
        df = worker_ours(Path(args.model), rows, args.prefix_len, args.batch_size, args.worker == "heads", args.device,
                         args.decode_rows, args.layers)  # fmt: skip
    if cuda:
        torch.cuda.synchronize()
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    df.to_parquet(args.result)
    timing = {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:  # on a GPU the memory that matters is the device's
        timing["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    Path(args.result).with_suffix(".json").write_text(json.dumps(timing))


def spawn(kind: str, folder: Path, rows_path: Path | None, out: Path, args) -> tuple[pd.DataFrame, dict]:
    result = out / f"{kind}.parquet"
    cmd = [sys.executable, __file__, "--worker", kind, "--model", str(folder), *(["--rows", str(rows_path)] if rows_path else []),
           "--result", str(result), "--prefix-len", str(args.prefix_len), "--batch-size", str(args.batch_size),
           "--device", args.device, *(["--decode-rows", str(args.decode_rows)] if args.decode_rows is not None else []),
           *(["--limit", str(args.limit)] if args.limit is not None else []),
           *(["--threads", str(args.threads)] if args.threads is not None else []),
           *(["--layers", ",".join(map(str, args.layers))] if args.layers is not None else [])]  # fmt: skip
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return pd.read_parquet(result), json.loads(result.with_suffix(".json").read_text())


def _timing(runs: list[dict]) -> dict:
    """Min and median wall and CPU seconds over repetitions, and the highest peak memory."""
    out = {}
    for key in ("seconds", "cpu_seconds"):
        values = [r[key] for r in runs]
        out[f"{key}_min"], out[f"{key}_median"] = round(min(values), 1), round(float(np.median(values)), 1)
    out["peak_rss_mb"] = round(max(r["peak_rss_mb"] for r in runs))
    if "peak_device_mb" in runs[0]:
        out["peak_device_mb"] = round(max(r["peak_device_mb"] for r in runs))
    return out


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
    p.add_argument("--batch-size", type=int, default=None, help="rows per forward pass (default 64; 32 with --bench)")
    p.add_argument("--heads", action="store_true",
                   help="time the all-heads sweep (every single head bypassed) against the reference per head, instead of the block sweep")
    p.add_argument("--bench", action="store_true",
                   help="time the paper's benchmark protocol (baseline + every block, six built-in tasks) on the organism "
                        "(--organism, default neox) against lm-evaluation-harness's HFLM with the same bypass hooks")
    p.add_argument("--limit", type=int, default=None, help="with --bench: the first N items of each task (default: all 250)")
    p.add_argument("--threads", type=int, default=None, help="torch threads in each worker (default: torch's)")
    p.add_argument("--repeat", type=int, default=1, help="alternating repetitions of each approach (min and median reported)")
    p.add_argument("--organism", choices=["neox", "neo"],
                   help="trained weights instead: the shipped organism ARCH and its canaries (ignores --seq-len/--prefix-len)")
    p.add_argument("--memorized", action="store_true",
                   help="with --organism: only the canaries the organism reproduces, repeated to --n-seq rows")
    p.add_argument("--decode-rows", type=int, default=None,
                   help="cap on the rows of one joint decode in our sweep (default: the library's, 2 GiB of KV cache)")
    p.add_argument("--real", action="store_true",
                   help="with --heads: SmolLM2-135M (the `real` extra) on the passage windows it reproduces (results/real/memorized.npy, "
                        "from `make real`)")
    p.add_argument("--layers", default=None, help="with --heads: comma-separated blocks whose heads are swept (default: all)")
    p.add_argument("--device", default="cpu", help="torch device for both approaches, e.g. cuda (default cpu)")
    p.add_argument("--out", default=None, help="working folder (default results/speed, or results/speed-organism-ARCH)")
    p.add_argument("--worker", choices=["reference", "ours", "heads", "heads-reference", "bench", "bench-hflm"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--rows", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.batch_size is None:
        args.batch_size = 32 if args.bench else 64
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        p.error(f"--device: {err}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: this torch build sees no CUDA device")
    if args.repeat < 1:
        p.error(f"--repeat must be at least 1; got {args.repeat}")
    if args.memorized and not args.organism:
        p.error("--memorized needs --organism (the random-weight workload is memorized by construction)")
    if args.decode_rows is not None and args.decode_rows < args.batch_size:
        p.error(f"--decode-rows ({args.decode_rows}) must be at least --batch-size ({args.batch_size})")
    if args.layers is not None:
        try:
            args.layers = sorted({int(x) for x in args.layers.split(",")})
        except ValueError:
            p.error(f"--layers takes comma-separated block numbers; got {args.layers!r}")
        if not args.heads and not args.worker:
            p.error("--layers needs --heads")
    if args.real and (not args.heads or args.organism):
        p.error("--real is a workload for --heads, and replaces --organism")
    if args.worker:
        run_worker(args)
        return 0
    if args.bench:
        return bench_main(args)
    if args.real:
        folder, rows_path, args.prefix_len = real_inputs(p)
        args.seq_len = int(np.load(rows_path, mmap_mode="r").shape[1])
    if args.layers is not None:  # refused before any work, whichever the workload
        from interp.organism import organism_path

        n_layers = (model_shape(folder) if args.real else model_shape(organism_path(args.organism)) if args.organism else SHAPE)["n_layers"]
        if min(args.layers) < 0 or max(args.layers) >= n_layers:
            p.error(f"--layers: the model has blocks 0-{n_layers - 1}; got {','.join(map(str, args.layers))}")
    out = Path(args.out or ROOT / "results" / ("speed-real" if args.real else "speed" if not args.organism else f"speed-organism-{args.organism}"))
    out.mkdir(parents=True, exist_ok=True)
    if args.organism:
        folder, rows_path, args.prefix_len = organism_inputs(out, args.organism, args.n_seq, args.memorized)
        args.seq_len = int(np.load(rows_path, mmap_mode="r").shape[1])
    elif not args.real:  # (the real model's inputs were read above)
        folder, rows_path = build_inputs(out, args.n_seq, args.seq_len, args.prefix_len, args.batch_size)
    ours_kind, ref_kind = ("heads", "heads-reference") if args.heads else ("ours", "reference")
    runs: dict[str, list[dict]] = {ours_kind: [], ref_kind: []}
    for _ in range(args.repeat):  # alternating, so a slow spell of the machine hits both
        ours, t = spawn(ours_kind, folder, rows_path, out, args)
        runs[ours_kind].append(t)
        ref, t = spawn(ref_kind, folder, rows_path, out, args)
        runs[ref_kind].append(t)
    problems = compare(ours, ref)
    t_ours, t_ref = _timing(runs[ours_kind]), _timing(runs[ref_kind])
    summary = {
        "sweep": "every single head" if args.heads else "baseline + every block",
        "configs": int(ours.config.nunique()),
        "n_seq": int(len(np.load(rows_path, mmap_mode="r"))), "seq_len": args.seq_len, "prefix_len": args.prefix_len,
        "batch_size": args.batch_size, "repeats": args.repeat,
        **{f"reference_{k}": v for k, v in t_ref.items()}, **{f"ours_{k}": v for k, v in t_ours.items()},
        "speedup_wall_min": round(t_ref["seconds_min"] / t_ours["seconds_min"], 2),
        "speedup_wall_median": round(t_ref["seconds_median"] / t_ours["seconds_median"], 2),
        "speedup_cpu_median": round(t_ref["cpu_seconds_median"] / t_ours["cpu_seconds_median"], 2),
        "device": args.device, "decode_rows": args.decode_rows,
        "identical_metrics": not problems, "torch_threads": torch.get_num_threads(),
        # greedy decoding reproduces a row iff every teacher-forced argmax is right, so the rows
        # our sweep had to decode are exactly those with EM 0
        "bypassed_rows_decoded": round(1 - float(ours[ours.config != "baseline"].exact_match.mean()), 3),
    }  # fmt: skip
    if args.heads:
        bound = head_arithmetic_bound(model_shape(folder), args.prefix_len, args.seq_len, args.layers)
        summary["layers"] = "all" if args.layers is None else ",".join(map(str, args.layers))
        summary.update({k: round(v, 2) for k, v in bound.items()})
    else:
        bound = arithmetic_bound(model_shape(folder), args.prefix_len, args.seq_len)
        summary.update({k: round(v, 2) for k, v in bound.items()})
        if args.device == "cpu":  # on a CPU each step's cost is its arithmetic; see speedup_ceiling
            matmul = matmul_gflops(model_shape(folder))
            ceiling = speedup_ceiling(bound, summary["n_seq"], t_ref["seconds_median"], matmul)
            summary.update({k: round(v, 2) for k, v in ceiling.items()})
    if args.real:
        summary = {"workload": "smollm2: reproduced passage windows (results/real/memorized.npy)", **summary}
    if args.organism:
        summary = {"workload": f"organism:{args.organism} canaries" + (" (memorized only)" if args.memorized else ""), **summary}
    (out / ("heads_summary.json" if args.heads else "summary.json")).write_text(json.dumps(summary, indent=2))
    for k, v in summary.items():
        print(f"{k:>30}: {v}")
    for problem in problems:
        print("MISMATCH:", problem, file=sys.stderr)
    return 1 if problems else 0


def bench_main(args) -> int:
    """The 7-config benchmark protocol, ours against HFLM, alternating; exit 1 unless every
    (config, task) accuracy and normalized accuracy is identical."""
    from interp.organism import organism_path

    arch = args.organism or "neox"
    out = Path(args.out or ROOT / "results" / f"speed-bench-{arch}")
    out.mkdir(parents=True, exist_ok=True)
    folder = organism_path(arch)
    runs: dict[str, list[dict]] = {"bench": [], "bench-hflm": []}
    for _ in range(args.repeat):
        ours, t = spawn("bench", folder, None, out, args)
        runs["bench"].append(t)
        ref, t = spawn("bench-hflm", folder, None, out, args)
        runs["bench-hflm"].append(t)
    merged = ours.merge(ref, on=["config", "task"], suffixes=("", "_hflm"), validate="one_to_one")
    problems = [f"{m}: {int((merged[m] != merged[f'{m}_hflm']).sum())} of {len(merged)} (config, task) pairs differ"
                for m in ("acc", "acc_norm") if (merged[m] != merged[f"{m}_hflm"]).any()]  # fmt: skip
    if len(merged) != len(ref) or len(merged) != len(ours):
        problems.append("the two runs cover different (config, task) pairs")
    t_ours, t_ref = _timing(runs["bench"]), _timing(runs["bench-hflm"])
    summary = {
        "workload": f"organism:{arch}, 6 built-in tasks x {args.limit or 250} items, baseline + every block",
        "configs": int(ours.config.nunique()), "batch_size": args.batch_size, "repeats": args.repeat,
        **{f"hflm_{k}": v for k, v in t_ref.items()}, **{f"ours_{k}": v for k, v in t_ours.items()},
        "speedup_cpu_min": round(t_ref["cpu_seconds_min"] / t_ours["cpu_seconds_min"], 2),
        "speedup_cpu_median": round(t_ref["cpu_seconds_median"] / t_ours["cpu_seconds_median"], 2),
        "speedup_wall_median": round(t_ref["seconds_median"] / t_ours["seconds_median"], 2),
        "identical_accuracies": not problems, "torch_threads": args.threads or torch.get_num_threads(),
    }  # fmt: skip
    (out / "bench_summary.json").write_text(json.dumps(summary, indent=2))
    for k, v in summary.items():
        print(f"{k:>30}: {v}")
    for problem in problems:
        print("MISMATCH:", problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
