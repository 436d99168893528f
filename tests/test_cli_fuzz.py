"""Property: a bad value for any option of any subcommand gives exit code 2, exactly one line on
stderr, no traceback, and nothing written (Hypothesis draws the subcommand, the option and the
bad value; every other option keeps a valid value). A tiny model keeps it under a minute or two."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interp.cli import main
from interp.tiny import make_tiny_model

N_LAYERS, N_HEADS, N_CTX, ROW, PREFIX = 2, 2, 96, 11, 6


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    model = make_tiny_model(root / "model", "neox", seed=1, n_layers=N_LAYERS, d_model=16, n_heads=N_HEADS, n_ctx=N_CTX)
    data = root / "rows.npy"
    np.save(data, np.random.default_rng(0).integers(1, 400, size=(5, ROW)))
    (root / "text.npy").write_text("not an array")
    (root / "empty.npy").write_bytes(b"")
    (root / "a_file.txt").write_text("mine")
    (root / "folder.npy").mkdir()
    task = root / "task.jsonl"
    task.write_text(json.dumps({"context": "a b", "choices": [" c", " d"], "gold": 0}) + "\n")
    return {"root": root, "model": model, "data": data, "task": task}


def non_int_text():
    return st.text(min_size=1, max_size=6).filter(lambda t: not _is_int(t) and not t.startswith("-"))


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def non_positive():
    return st.one_of(st.integers(max_value=0).map(str), non_int_text(), st.sampled_from(["1.5", "1e3", ""]))


def negative():
    return st.one_of(st.integers(max_value=-1).map(str), non_int_text(), st.sampled_from(["0.5", ""]))


def bad_int_list(n: int):
    out_of_range = st.integers(min_value=n, max_value=10**6).map(str)
    dupes = st.integers(0, n - 1).map(lambda i: f"{i},{i}")
    neg = st.integers(max_value=-1).map(lambda i: f"0,{i}")
    return st.one_of(out_of_range, dupes, neg, st.sampled_from([",", "", "a", "0,,x", "1.5"]))


def bad_paths(kind: str):
    files = {"data": ["text.npy", "empty.npy", "folder.npy", "missing.npy", "a_file.txt"],
             "model": ["missing-folder", "a_file.txt", "folder.npy"],
             "out": ["a_file.txt", ""]}[kind]  # fmt: skip
    return st.sampled_from(files)


def bad_interventions():
    return st.sampled_from(["{root}/text.npy", "{root}/missing.json", "{root}/folder.npy", "{root}/a_file.txt", "{data}", ""])


def bad_device():
    return st.one_of(st.sampled_from(["banana", "cuda:7", "tpu", "cpu:x", ""]), st.text(min_size=1, max_size=8).filter(
        lambda t: t.strip() not in ("cpu", "cpu:0", "meta")))  # fmt: skip


# subcommand -> (valid argv, {option: strategy of bad values}); paths are relative to the fixture root
COMMANDS = {
    "sweep": (
        ["sweep", "--model", "{model}", "--data", "{data}", "--prefix-len", str(PREFIX), "--out", "{out}", "--no-progress"],
        {"--prefix-len": st.one_of(non_positive(), st.integers(ROW, 10**9).map(str)), "--batch-size": non_positive(),
         "--chunk-rows": non_positive(), "--decode-rows": non_positive(), "--blocks": bad_int_list(N_LAYERS),
         "--shard": st.sampled_from(["5/5", "0/6", "1/0", "a/b", "-1/2", "0/2/3", ""]), "--device": bad_device(),
         "--data": bad_paths("data"), "--model": bad_paths("model"), "--out": bad_paths("out"),
         "--interventions": bad_interventions()},
    ),
    "mitigate": (
        ["mitigate", "--model", "{model}", "--data", "{data}", "--prefix-len", str(PREFIX), "--general-data", "{data}",
         "--out", "{out}", "--no-progress"],
        {"--prefix-len": st.one_of(non_positive(), st.integers(ROW, 10**6).map(str)), "--batch-size": non_positive(),
         "--budget-ppl": st.sampled_from(["-0.1", "nan", "inf", "five", ""]), "--budget-acc": st.sampled_from(["-1", "nan", "x"]),
         "--beam": non_positive(), "--max-size": non_positive(), "--random": st.one_of(st.integers(max_value=-1).map(str), non_int_text()),
         "--seed": st.one_of(negative(), st.integers(2**32, 10**30).map(str)), "--levels": st.sampled_from(["", ",", "heads", "head,head", "layer"]),
         "--how": st.sampled_from(["mean", ""]), "--objective": st.sampled_from(["em", ""]), "--name": st.sampled_from(["a/b", "", "x y"]),
         "--tasks": st.sampled_from(["typo"]), "--general-data": st.sampled_from(["{root}/text.npy", "{root}/missing.npy", "{root}/folder.npy"]),
         "--data": bad_paths("data"), "--model": bad_paths("model"), "--out": bad_paths("out"), "--device": bad_device()},
    ),
    "bench": (
        ["bench", "--model", "{model}", "--tasks", "{task}", "--out", "{out}", "--no-progress"],
        {"--batch-size": non_positive(), "--limit": non_positive(), "--blocks": bad_int_list(N_LAYERS),
         "--tasks": st.sampled_from(["nope", "{task},{task}", "", ",", "{root}/a_file.txt"]), "--device": bad_device(),
         "--model": bad_paths("model"), "--out": bad_paths("out"), "--perplexity": st.sampled_from(["missing.txt", ""]),
         "--interventions": bad_interventions()},
    ),
    "theory": (
        ["theory", "--model", "{model}", "--seq-len", "8", "--n-rows", "2", "--out", "{out}", "--no-progress"],
        {"--seq-len": st.one_of(non_positive(), st.just("1"), st.integers(N_CTX + 1, 10**6).map(str)), "--n-rows": non_positive(),
         "--batch-size": non_positive(), "--prefix-len": st.one_of(non_positive(), st.integers(9, 10**6).map(str)),
         "--layers": bad_int_list(N_LAYERS), "--data": bad_paths("data"), "--device": bad_device(),
         "--model": bad_paths("model"), "--out": bad_paths("out")},
    ),
    "localize": (
        ["localize", "--model", "{model}", "--data", "{data}", "--prefix-len", str(PREFIX), "--method", "block-bypass",
         "--out", "{out}", "--no-progress"],
        {"--prefix-len": st.one_of(non_positive(), st.integers(ROW, 10**6).map(str)), "--batch-size": non_positive(),
         "--n-corrupt": st.one_of(non_positive(), st.integers(PREFIX + 1, 10**6).map(str)), "--seed": st.one_of(negative(), st.integers(2**32, 10**30).map(str)),
         "--method": st.sampled_from(["blockbypass", "", "all"]), "--truth": st.sampled_from(["x", "L9H9", "block:9", "L0H9", "block:-1"]),
         "--knockout": st.one_of(bad_int_list(N_LAYERS + 1).filter(lambda v: v != str(N_LAYERS)), st.just("0")),
         "--data": bad_paths("data"), "--model": bad_paths("model"), "--out": bad_paths("out"), "--device": bad_device(),
         "--score": st.sampled_from(["selectivity"])},  # selectivity without --general-data
    ),
    "organism-heldout": (
        ["organism", "heldout", "--out", "{root}/new.npy"],
        {"--blocks": non_positive(), "--out": st.sampled_from(["a_file.txt", "x.txt", "", "nofolder/x.npy", ".npy"]),
         "--arch": st.sampled_from(["llama", ""])},
    ),
    "organism-train": (
        ["organism", "train", "--out", "{root}/new-organism", "--no-progress"],
        {"--steps": non_positive(), "--epochs": non_positive(), "--threads": negative(), "--seed": st.one_of(negative(), st.integers(2**32, 10**30).map(str)),
         "--out": st.sampled_from(["a_file.txt", "", "model"])},
    ),
}


def _fill(arg: str, root: Path, model: Path, data: Path, task: Path, out: Path) -> str:
    for key, path in (("root", root), ("model", model), ("data", data), ("task", task), ("out", out)):
        arg = arg.replace("{" + key + "}", str(path))  # not str.format: drawn values may hold braces
    return arg


@st.composite
def bad_runs(draw):
    name = draw(st.sampled_from(sorted(COMMANDS)))
    base, options = COMMANDS[name]
    option = draw(st.sampled_from(sorted(options)))
    value = draw(options[option])
    return name, base, option, value


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(run=bad_runs())
def test_any_bad_option_value_is_one_sentence_exit_2_nothing_written(env, run, capsys):
    name, base, option, value = run
    root = env["root"]
    with tempfile.TemporaryDirectory(dir=root) as scratch:
        out = Path(scratch) / "out"
        argv = [_fill(a, root, env["model"], env["data"], env["task"], out) for a in base]
        if option in ("--data", "--model", "--out") and value and "/" not in value:
            value = str(root / value) if value not in ("",) else value
        value = _fill(value, root, env["model"], env["data"], env["task"], out)
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
        before = sorted(p.relative_to(root) for p in root.rglob("*"))
        capsys.readouterr()
        code = main(argv)
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert err and err.count("\n") == 0 and "Traceback" not in err, (argv, err)
        assert sorted(p.relative_to(root) for p in root.rglob("*")) == before, argv
