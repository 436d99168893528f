"""`interp sweep` end to end on a tiny model, against an independent HF computation."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from interp.cli import main
from reference import HFBypass, hf_greedy, hf_logits, load_hf

PREFIX, SUFFIX = 6, 5


@pytest.fixture
def data_file(tmp_path, bridge):
    rows = torch.randint(1, 500, (7, PREFIX + SUFFIX), generator=torch.Generator().manual_seed(3))
    # make some rows memorized by construction: their suffix is the model's own continuation
    rows[:5, PREFIX:] = hf_greedy(load_hf(bridge.original_model.config._name_or_path), rows[:5, :PREFIX], SUFFIX)
    rows[4, PREFIX + 2] = rows[4, PREFIX + 2] % 499 + 1  # one more row that leaves the suffix at its third token
    path = tmp_path / "rows.npy"
    np.save(path, rows.numpy())
    return path


def independent_per_sequence(folder, rows: torch.Tensor, n_layers: int, n_samples: int = 100) -> pd.DataFrame:
    """Every per-sequence column of ``sequences.parquet``, from the Hugging Face model (hook-free
    bypass, greedy decoding by full recomputation, float64 log-softmax) and, for the extraction
    probability, 60-digit arithmetic (mpmath)."""
    import mpmath

    hf = load_hf(folder)
    suffix = rows[:, PREFIX:]
    frames = []
    for config, layers in [("baseline", [])] + [(f"block:{l}", [l]) for l in range(n_layers)]:
        with HFBypass(hf, layers):
            gen = hf_greedy(hf, rows[:, :PREFIX], SUFFIX)
            logits = hf_logits(hf, rows)[:, PREFIX - 1 : -1].double()
        p = torch.softmax(logits, -1)
        logp = torch.log_softmax(logits, -1)
        nll = -logp.gather(-1, suffix[..., None])[..., 0].sum(1)
        same = (gen == suffix).tolist()
        with mpmath.workdps(60):
            extraction = [float(mpmath.log(1 - (1 - mpmath.exp(-mpmath.mpf(v))) ** n_samples)) for v in nll.tolist()]
        frames.append(pd.DataFrame({
            "config": config, "sequence": np.arange(len(rows)),
            "exact_match": [float(all(s)) for s in same], "token_accuracy": [sum(s) / SUFFIX for s in same],
            "completion_entropy": (-(p * torch.log(p)).sum(-1).sum(-1)).numpy(),
            "match_length": [next((j for j, ok in enumerate(s) if not ok), SUFFIX) for s in same],
            "tf_accuracy": (logits.argmax(-1) == suffix).double().mean(1).numpy(),
            "suffix_nll": nll.numpy(), "extraction_logprob": extraction,
        }))  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def test_sweep_writes_summary_matching_independent_computation(tmp_path, tiny_dir, data_file, bridge):
    out = tmp_path / "out"
    assert main(["sweep", "--model", str(tiny_dir), "--data", str(data_file), "--prefix-len", str(PREFIX),
                 "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    summary = pd.read_csv(out / "summary.csv")
    L = bridge.cfg.n_layers
    assert list(summary.columns[:4]) == ["config", "exact_match", "token_accuracy", "completion_entropy"]
    assert summary.config.tolist() == ["baseline"] + [f"block:{l}" for l in range(L)]
    ref = independent_per_sequence(tiny_dir, torch.as_tensor(np.load(data_file)), L)
    per_seq = pd.read_parquet(out / "sequences.parquet")
    assert len(per_seq) == 7 * (L + 1)
    merged = per_seq.merge(ref, on=["config", "sequence"], suffixes=("", "_ref"), validate="one_to_one")
    assert len(merged) == len(ref)
    for col in ["exact_match", "match_length"]:
        np.testing.assert_array_equal(merged[col], merged[f"{col}_ref"], err_msg=col)
    for col in ["token_accuracy", "tf_accuracy"]:  # counts out of 5, up to float32 rounding (one count is 0.2)
        np.testing.assert_allclose(merged[col], merged[f"{col}_ref"], rtol=0, atol=1e-6, err_msg=col)
    # float32 model, float64 reference: the sums over 5 positions agree to about 1e-6
    for col in ["completion_entropy", "suffix_nll", "extraction_logprob"]:
        np.testing.assert_allclose(merged[col], merged[f"{col}_ref"], rtol=1e-5, atol=1e-5, err_msg=col)
    means = ref.groupby("config", sort=False)[["exact_match", "token_accuracy", "completion_entropy"]].mean()
    for col in means:
        np.testing.assert_allclose(summary[col], means.loc[summary.config, col], rtol=1e-5, err_msg=col)
    assert summary.exact_match[0] == pytest.approx(4 / 7)
    # the rows exercise every regime: reproduced, left mid-suffix (partial match and accuracy), left at once
    base = merged[merged.config == "baseline"]
    assert set(base.match_length) >= {0, 2, SUFFIX} and ((base.tf_accuracy > 0) & (base.tf_accuracy < 1)).any()
    assert (out / "config.json").is_file()


def test_blocks_option_restricts_the_sweep(tmp_path, tiny_dir, data_file):
    out = tmp_path / "out"
    main(["sweep", "--model", str(tiny_dir), "--data", str(data_file), "--prefix-len", "6", "--out", str(out),
          "--blocks", "0,2", "--no-progress"])  # fmt: skip
    assert pd.read_csv(out / "summary.csv").config.tolist() == ["baseline", "block:0", "block:2"]


def _bad(tmp_path, name, arr):
    path = tmp_path / name
    np.save(path, arr)
    return path


@pytest.mark.parametrize(
    "case,message",
    [
        ("float", "2-D integer array"),
        ("one_d", "2-D integer array"),
        ("vocab", "outside the model's vocabulary"),
        ("prefix", "prefix length"),
        ("context", "more than the model's context"),
        ("model", "does not exist"),
        ("blocks", "outside the model's blocks"),
        ("missing_data", "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_sentence_and_writes_nothing(tmp_path, tiny_dir, case, message, capsys):
    good = np.ones((3, 11), dtype=np.int64)
    data = {
        "float": _bad(tmp_path, "f.npy", good.astype(float)),
        "one_d": _bad(tmp_path, "o.npy", good[0]),
        "vocab": _bad(tmp_path, "v.npy", good * 9999),
        "context": _bad(tmp_path, "c.npy", np.ones((3, 500), dtype=np.int64)),
        "missing_data": tmp_path / "nothing.npy",
    }.get(case, _bad(tmp_path, "g.npy", good))
    args = ["sweep", "--model", str(tmp_path / "no-model") if case == "model" else str(tiny_dir), "--data", str(data),
            "--prefix-len", "11" if case == "prefix" else "6", "--out", str(tmp_path / "out"), "--no-progress"]  # fmt: skip
    if case == "blocks":
        args += ["--blocks", "0,42"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.count("\n") == 0
    assert not (tmp_path / "out").exists()


def test_console_script_runs_as_a_module(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "interp", "sweep", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--prefix-len" in proc.stdout


def _sweep_args(tiny_dir, data, out, *extra):
    return ["sweep", "--model", str(tiny_dir), "--data", str(data), "--prefix-len", str(PREFIX), "--out", str(out),
            "--no-progress", *extra]  # fmt: skip


def test_shards_merge_to_the_unsharded_sweep(tmp_path, tiny_dir, data_file):
    assert main(_sweep_args(tiny_dir, data_file, tmp_path / "all")) == 0
    for k in range(3):
        assert main(_sweep_args(tiny_dir, data_file, tmp_path / f"s{k}", "--shard", f"{k}/3")) == 0
    assert main(["merge", str(tmp_path / "s2"), str(tmp_path / "s0"), "--out", str(tmp_path / "m")]) == 2  # s1 missing
    assert not (tmp_path / "m").exists()
    assert main(["merge", *(str(tmp_path / f"s{k}") for k in (2, 0, 1)), "--out", str(tmp_path / "m")]) == 0
    whole = pd.read_parquet(tmp_path / "all" / "sequences.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "m" / "sequences.parquet"), whole)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "m" / "summary.csv"), pd.read_csv(tmp_path / "all" / "summary.csv"))


def test_merge_refuses_overlapping_or_foreign_shards(tmp_path, tiny_dir, data_file):
    """A shard given twice (rows would be duplicated) or a shard of another sweep (other blocks)
    is refused with exit code 2, and nothing is written."""
    for k in range(2):
        assert main(_sweep_args(tiny_dir, data_file, tmp_path / f"s{k}", "--shard", f"{k}/2")) == 0
    assert main(_sweep_args(tiny_dir, data_file, tmp_path / "other1", "--shard", "1/2", "--blocks", "0")) == 0
    for shards in (["s0", "s0", "s1"], ["s0", "other1"]):
        out = tmp_path / ("m-" + "-".join(shards))
        assert main(["merge", *(str(tmp_path / s) for s in shards), "--out", str(out)]) == 2
        assert not out.exists()


@pytest.mark.parametrize("spec", ["3/3", "2/2", "1/0", "a/b", "1", "0/2/3"])
def test_bad_shard_spec_is_refused(tmp_path, tiny_dir, data_file, spec, capsys):
    """K counts from 0 and must be below N: anything else is one sentence on stderr, exit code 2."""
    assert main(_sweep_args(tiny_dir, data_file, tmp_path / "o", "--shard", spec)) == 2
    assert not (tmp_path / "o" / "summary.csv").exists()
    err = capsys.readouterr().err.strip()
    assert err and "Traceback" not in err


def test_output_folder_of_another_sweep_is_refused(tmp_path, tiny_dir, data_file):
    assert main(_sweep_args(tiny_dir, data_file, tmp_path / "o", "--blocks", "0")) == 0
    assert main(_sweep_args(tiny_dir, data_file, tmp_path / "o", "--blocks", "1")) == 2


def test_killed_sweep_resumes_without_losing_or_duplicating_rows(tmp_path, tiny_dir, data_file):
    import os
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "interp", *_sweep_args(tiny_dir, data_file, out, "--chunk-rows", "2")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = out / "parts"
    deadline = time.monotonic() + 300
    while proc.poll() is None and len(list(parts.glob("*.parquet"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    saved = list(parts.glob("*.parquet"))
    assert saved and not (out / "summary.csv").exists()
    for part in saved:  # every part under a final name is whole
        pd.read_parquet(part)
    stamps = {part: part.stat().st_mtime_ns for part in saved}
    assert main(_sweep_args(tiny_dir, data_file, out, "--chunk-rows", "2")) == 0
    assert {part: part.stat().st_mtime_ns for part in saved} == stamps  # saved parts reused, not recomputed
    resumed = pd.read_parquet(out / "sequences.parquet")
    assert main(_sweep_args(tiny_dir, data_file, tmp_path / "fresh", "--chunk-rows", "2")) == 0
    pd.testing.assert_frame_equal(resumed, pd.read_parquet(tmp_path / "fresh" / "sequences.parquet"))
    assert not resumed.duplicated(["config", "sequence"]).any()


def test_decode_rows_flag(tmp_path, tiny_dir, data_file, capsys):
    """``--decode-rows`` below ``--batch-size`` is one sentence on stderr and exit 2; a valid cap
    gives the same per-sequence numbers as the default run."""
    assert main(_sweep_args(tiny_dir, data_file, tmp_path / "bad", "--batch-size", "4", "--decode-rows", "3")) == 2
    err = capsys.readouterr().err.strip()
    assert "--decode-rows" in err and "Traceback" not in err
    assert main(_sweep_args(tiny_dir, data_file, tmp_path / "a", "--batch-size", "4")) == 0
    assert main(_sweep_args(tiny_dir, data_file, tmp_path / "b", "--batch-size", "4", "--decode-rows", "4")) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a" / "sequences.parquet"),
                                  pd.read_parquet(tmp_path / "b" / "sequences.parquet"))  # fmt: skip
