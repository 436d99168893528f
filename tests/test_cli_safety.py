"""Bad input ends in one sentence and exit 2 with nothing written; a user's files are never
overwritten; results never outlive the weights or data they came from; no NaN becomes a number.

Most cases run the CLI in-process (``main``); the ones about what reaches stderr, and the
concurrent ones, run it as real processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from interp.cli import main
from interp.tiny import make_tiny_model

PREFIX, ROW = 6, 11
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (by relative path): byte-for-byte state."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "neox", "neox", seed=1, n_layers=2, d_model=16, n_heads=2, n_ctx=96)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("d") / "rows.npy"
    np.save(path, np.random.default_rng(0).integers(1, 400, size=(7, ROW)))
    return path


def sweep_args(model, data, out, *extra) -> list[str]:
    return ["sweep", "--model", str(model), "--data", str(data), "--prefix-len", str(PREFIX), "--out", str(out),
            "--no-progress", *extra]  # fmt: skip


def refused(argv: list[str], capsys, match: str | None = None) -> str:
    """Run the CLI: exit code 2 and exactly one line on stderr, no traceback; return that line."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err and err.count("\n") == 0 and "Traceback" not in err, err
    if match is not None:
        assert match in err, err
    return err


def run_cli(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "interp", *argv], capture_output=True, text=True, env=kw.pop("env", ENV), **kw)


# ------------------------------------------------------------------------------- options


@pytest.mark.parametrize("extra,match", [
    (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-4"], "--batch-size"),
    (["--chunk-rows", "0"], "--chunk-rows"),
    (["--decode-rows", "0"], "--decode-rows"),
    (["--shard", "0/100"], "--shard"),
    (["--blocks", ","], "--blocks"),
    (["--blocks", "1,1"], "more than once"),
    (["--device", "banana"], "--device"),
    (["--prefix-len", "0"], "--prefix-len"),
])  # fmt: skip
def test_bad_sweep_options_are_refused_and_leave_nothing(tmp_path, model_dir, data, extra, match, capsys):
    out = tmp_path / "out"
    refused(sweep_args(model_dir, data, out, *extra), capsys, match)
    assert not out.exists()
    # the corrected command is not refused as "a different sweep"
    assert main(sweep_args(model_dir, data, out)) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused(tmp_path, model_dir, data, capsys):
    refused(sweep_args(model_dir, data, tmp_path / "o", "--device", "cuda"), capsys, "CUDA")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cmd", ["sweep", "bench", "theory", "localize", "merge"])
def test_out_naming_a_file_or_nothing_is_refused_before_any_work(tmp_path, model_dir, data, cmd, capsys, monkeypatch):
    from interp.cli import bench, localize, sweep, theory

    for module in (bench, localize, sweep, theory):
        monkeypatch.setattr(module, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    existing = tmp_path / "file.txt"
    existing.write_text("mine")
    argv = {
        "sweep": ["sweep", "--model", str(model_dir), "--data", str(data), "--prefix-len", "6"],
        "bench": ["bench", "--model", str(model_dir), "--tasks", "typo", "--limit", "2"],
        "theory": ["theory", "--model", str(model_dir)],
        "localize": ["localize", "--model", str(model_dir), "--data", str(data), "--prefix-len", "6", "--method", "patching"],
        "merge": ["merge", str(tmp_path)],
    }[cmd]
    refused([*argv, "--out", str(existing)], capsys, "is a file")
    assert existing.read_text() == "mine"
    refused([*argv, "--out", ""], capsys, "empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_unwritable_output_folder_is_refused(tmp_path, model_dir, data, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        refused(sweep_args(model_dir, data, locked), capsys, "not writable")
        refused(sweep_args(model_dir, data, locked / "sub"), capsys, "cannot be created")
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert list(locked.iterdir()) == []


# ------------------------------------------------------------------------------- models


def test_hub_id_without_network_is_one_sentence_and_fast(tmp_path):
    """No retries shown: with the hub unreachable (a closed local port stands in for no network),
    one line, well under 5 s of the command's own time."""
    env = {k: v for k, v in ENV.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env |= {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    t0 = time.monotonic()
    proc = run_cli(["theory", "--model", "someorg/somemodel", "--out", str(tmp_path / "o")], env=env)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "cannot be reached" in proc.stderr and not (tmp_path / "o").exists()
    assert elapsed < 30  # the process, imports included; the probe itself times out after 5 s


def _pickle_folder(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest)
    torch.save(load_file(dest / "model.safetensors"), dest / "pytorch_model.bin")
    (dest / "model.safetensors").unlink()
    return dest


def test_pickle_weights_are_refused_unless_allowed(tmp_path, model_dir, data, capsys):
    folder = _pickle_folder(model_dir, tmp_path / "pickled")
    refused(sweep_args(folder, data, tmp_path / "o"), capsys, "--allow-pickle")
    assert not (tmp_path / "o").exists()
    assert main(sweep_args(folder, data, tmp_path / "o", "--allow-pickle")) == 0
    assert main(sweep_args(model_dir, data, tmp_path / "ref")) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "o" / "sequences.parquet"),
                                  pd.read_parquet(tmp_path / "ref" / "sequences.parquet"))  # fmt: skip


def test_nan_weights_never_become_results(tmp_path, model_dir, data, capsys):
    folder = shutil.copytree(model_dir, tmp_path / "nan")
    weights = load_file(folder / "model.safetensors")
    name = sorted(k for k in weights if k.endswith("mlp.dense_h_to_4h.weight"))[0]
    weights[name][0, 0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    for argv in (sweep_args(folder, data, tmp_path / "s"),
                 ["bench", "--model", str(folder), "--tasks", "typo", "--limit", "2", "--out", str(tmp_path / "b")],
                 ["theory", "--model", str(folder), "--seq-len", "8", "--n-rows", "2", "--out", str(tmp_path / "t")]):  # fmt: skip
        err = refused(argv, capsys, "non-finite")
        assert "mlp.dense_h_to_4h" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan"]


def test_non_finite_logits_stop_the_run(tmp_path, model_dir, data, capsys):
    """Finite weights can still overflow: a huge final-norm gain gives infinite logits."""
    folder = shutil.copytree(model_dir, tmp_path / "inf")
    weights = load_file(folder / "model.safetensors")
    weights["embed_out.weight"] = torch.sign(weights["embed_out.weight"]) * 3e38  # finite, but sums overflow
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    refused(sweep_args(folder, data, tmp_path / "s"), capsys, "not finite")
    assert not (tmp_path / "s").exists()


# ------------------------------------------------------------------------------- stale results


def test_replaced_weights_are_recomputed_not_reused(tmp_path, model_dir, data):
    folder = shutil.copytree(model_dir, tmp_path / "model")
    out = tmp_path / "out"
    assert main(sweep_args(folder, data, out)) == 0
    first = pd.read_parquet(out / "sequences.parquet")
    other = make_tiny_model(tmp_path / "other", "neox", seed=7, n_layers=2, d_model=16, n_heads=2, n_ctx=96)
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    assert main(sweep_args(folder, data, out)) == 0
    again = pd.read_parquet(out / "sequences.parquet")
    assert main(sweep_args(other, data, tmp_path / "fresh")) == 0
    pd.testing.assert_frame_equal(again, pd.read_parquet(tmp_path / "fresh" / "sequences.parquet"))
    assert not again.equals(first)
    from interp.fingerprint import folder_fingerprint

    assert json.loads((out / "config.json").read_text())["inputs"]["model"] == folder_fingerprint(other)


@pytest.mark.parametrize("cmd", ["bench", "theory"])
def test_replaced_weights_recompute_bench_and_theory(tmp_path, model_dir, cmd):
    folder = shutil.copytree(model_dir, tmp_path / "model")
    other = make_tiny_model(tmp_path / "other", "neox", seed=7, n_layers=2, d_model=16, n_heads=2, n_ctx=96)
    table = {"bench": "accuracy.csv", "theory": "bounds.csv"}[cmd]
    extra = {"bench": ["--tasks", "typo,rule_count", "--limit", "8"], "theory": ["--seq-len", "8", "--n-rows", "2"]}[cmd]
    assert main([cmd, "--model", str(folder), *extra, "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    shutil.copy(other / "model.safetensors", folder / "model.safetensors")
    assert main([cmd, "--model", str(folder), *extra, "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert main([cmd, "--model", str(other), *extra, "--out", str(tmp_path / "ref"), "--no-progress"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "o" / table), pd.read_csv(tmp_path / "ref" / table))


def test_edited_data_is_recomputed(tmp_path, model_dir, data):
    rows = tmp_path / "rows.npy"
    shutil.copy(data, rows)
    assert main(sweep_args(model_dir, rows, tmp_path / "o")) == 0
    np.save(rows, np.load(rows)[::-1].copy())
    assert main(sweep_args(model_dir, rows, tmp_path / "o")) == 0
    assert main(sweep_args(model_dir, rows, tmp_path / "ref")) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "o" / "sequences.parquet"),
                                  pd.read_parquet(tmp_path / "ref" / "sequences.parquet"))  # fmt: skip


def test_damaged_or_swapped_parts_are_recomputed(tmp_path, model_dir, data, caplog):
    out = tmp_path / "o"
    assert main(sweep_args(model_dir, data, out, "--chunk-rows", "3")) == 0
    want = pd.read_parquet(out / "sequences.parquet")
    parts = out / "parts"
    a, b, c = parts / "baseline__00000.parquet", parts / "baseline__00001.parquet", parts / "block_0__00000.parquet"
    a.write_bytes(a.read_bytes()[:40])  # truncated
    shutil.copy(c, b)  # another config's part under this name (its record left as it was)
    (parts / "block_1__00001.json").unlink()  # a part without its record
    (out / "sequences.parquet").unlink()
    assert main(sweep_args(model_dir, data, out, "--chunk-rows", "3")) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "sequences.parquet"), want)
    messages = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    for name in (a.name, b.name, "block_1__00001.parquet"):
        assert f"discarding saved part {name}" in messages


# ------------------------------------------------------------------------------- output folders


@pytest.mark.parametrize("cmd", ["bench", "theory", "sweep", "localize"])
def test_the_model_folder_is_never_an_output(model_dir, data, cmd, capsys):
    before = snapshot(model_dir)
    argv = {
        "sweep": ["sweep", "--data", str(data), "--prefix-len", "6"],
        "bench": ["bench", "--tasks", "typo", "--limit", "2"],
        "theory": ["theory", "--seq-len", "8", "--n-rows", "2"],
        "localize": ["localize", "--data", str(data), "--prefix-len", "6", "--method", "block-bypass"],
    }[cmd]
    refused([*argv, "--model", str(model_dir), "--out", str(model_dir)], capsys, "model folder")
    assert snapshot(model_dir) == before


def test_a_folder_of_other_files_and_other_results_are_refused(tmp_path, model_dir, data, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    refused(sweep_args(model_dir, data, mine), capsys, "interp did not write")
    assert snapshot(mine) == {"notes.txt": hashlib.sha256(b"keep").hexdigest()}
    theory = tmp_path / "theory"
    assert main(["theory", "--model", str(model_dir), "--seq-len", "8", "--n-rows", "2", "--out", str(theory)]) == 0
    before = snapshot(theory)
    refused(sweep_args(model_dir, data, theory), capsys, "interp theory")
    sweep_out = tmp_path / "sweep"
    assert main(sweep_args(model_dir, data, sweep_out, "--blocks", "0")) == 0
    refused(["merge", str(sweep_out), "--out", str(theory)], capsys, "interp theory")
    refused(["merge", str(sweep_out), "--out", str(sweep_out)], capsys, "interp sweep")
    assert snapshot(theory) == before


def test_merge_refuses_a_damaged_shard(tmp_path, model_dir, data, capsys):
    for k in range(2):
        assert main(sweep_args(model_dir, data, tmp_path / f"s{k}", "--shard", f"{k}/2")) == 0
    (tmp_path / "s1" / "sequences.parquet").write_bytes(b"PAR1 not really")
    refused(["merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")], capsys, "unreadable")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("argv", [
    ["theory", "--seq-len", "8", "--n-rows", "2", "--layers", "0,0"],
    ["bench", "--tasks", "typo,typo", "--limit", "2"],
    ["bench", "--tasks", "typo", "--limit", "2", "--blocks", "1,0,1"],
])  # fmt: skip
def test_selections_are_sets(tmp_path, model_dir, argv, capsys):
    err = refused([*argv, "--model", str(model_dir), "--out", str(tmp_path / "o")], capsys)
    assert "more than once" in err or "unique" in err
    assert not (tmp_path / "o").exists()


def test_benchmark_item_with_identical_choices_is_refused(tmp_path, model_dir, capsys):
    task = tmp_path / "t.jsonl"
    task.write_text(json.dumps({"context": "a b", "choices": [" c", " d"], "gold": 0}) + "\n"
                    + json.dumps({"context": "a b", "choices": [" c", " c"], "gold": 1}) + "\n")  # fmt: skip
    err = refused(["bench", "--model", str(model_dir), "--tasks", str(task), "--out", str(tmp_path / "o")], capsys)
    assert "t.jsonl:2" in err and "distinct" in err
    assert not (tmp_path / "o").exists()


def _popen(argv):
    return subprocess.Popen([sys.executable, "-m", "interp", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)  # fmt: skip


def test_concurrent_sweeps_into_one_folder(tmp_path, model_dir, data):
    """Two real processes: with other arguments one is refused (exit 2, one line) and the
    other's results are whole; identical ones both succeed with the solo run's numbers."""
    solo = [_popen(sweep_args(model_dir, data, tmp_path / f"solo{b}", "--blocks", b, "--chunk-rows", "2")) for b in "01"]
    assert [p.wait(timeout=600) for p in solo] == [0, 0]  # as processes too: same threads, so the same floats
    out = tmp_path / "shared"
    procs = [_popen(sweep_args(model_dir, data, out, "--blocks", b, "--chunk-rows", "2")) for b in ("0", "1")]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2).strip()
    assert err.count("\n") == 0 and "different sweep run" in err, err
    got = pd.read_parquet(out / "sequences.parquet")
    solos = {b: pd.read_parquet(tmp_path / f"solo{b}" / "sequences.parquet") for b in "01"}
    winner = "0" if results[0][0] == 0 else "1"
    pd.testing.assert_frame_equal(got, solos[winner], check_exact=True)
    assert len(list((out / "parts").glob("*.parquet"))) == 2 * 4  # 2 configs x 4 chunks, one sweep's only

    same = tmp_path / "same"
    procs = [_popen(sweep_args(model_dir, data, same, "--blocks", "0", "--chunk-rows", "2")) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0, 0], results
    pd.testing.assert_frame_equal(pd.read_parquet(same / "sequences.parquet"), solos["0"])
