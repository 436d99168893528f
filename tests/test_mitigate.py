"""Mitigation search (interp.mitigate, ``interp mitigate``, ``--interventions``): component sets,
the halves, the teacher-forced scores against the HF modules, a planted decisive head, the
exported file's round trip and refusals, and the committed files reproduced independently."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import HFBypass, hf_greedy, load_hf

from interp import mitigate as M
from interp.errors import InputError
from interp.models import load_model
from interp.tiny import make_tiny_model, random_model, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PREFIX = 8


def test_normalize_drops_duplicates_and_heads_of_a_chosen_block():
    assert M.normalize(["L1H2", "block:1", "L0H3", "L0H3", "L2H0"]) == ("L0H3", "block:1", "L2H0")
    assert M.normalize([]) == ()
    with pytest.raises(InputError, match="neither"):
        M.normalize(["head 3"])


def test_halves_are_disjoint_complete_and_seeded():
    s, h = M.split_halves(9, 0, "rows")
    assert len(s) == 5 and len(h) == 4 and sorted([*s, *h]) == list(range(9))
    assert np.array_equal(M.split_halves(9, 0, "rows")[0], s)
    assert any(not np.array_equal(M.split_halves(40, k, "rows")[0], M.split_halves(40, 0, "rows")[0]) for k in range(1, 4))
    with pytest.raises(InputError, match="at least 2"):
        M.split_halves(1, 0, "rows")


def test_budget_refuses_nonsense():
    with pytest.raises(InputError):
        M.Budget(ppl=None, acc=None)
    with pytest.raises(InputError):
        M.Budget(ppl=-0.1)
    with pytest.raises(InputError):
        M.Budget(ppl=float("nan"))


def _memorized(bridge, n=6, seed=0, length=PREFIX + 6):
    """Rows the model reproduces by construction: random prefixes and the model's own greedy
    continuations."""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(1, 400, (n, PREFIX), generator=g)
    hf = bridge.original_model
    return torch.cat([prefix, hf_greedy(hf, prefix, length - PREFIX)], 1).numpy()


def _reference_reduction(logits: torch.Tensor, rows: np.ndarray, cap: float) -> np.ndarray:
    """Suffix NLL (clipped), exact and match length per row, by loops over numpy arrays."""
    out = []
    lp = torch.log_softmax(logits.double(), -1).numpy()
    for i, row in enumerate(rows):
        nll, right = [], []
        for t in range(PREFIX, len(row)):
            nll.append(-lp[i, t - 1, row[t]])
            right.append(int(np.argmax(lp[i, t - 1])) == row[t])
        match = right.index(False) if False in right else len(right)
        out.append([min(float(np.mean(nll)), cap), float(all(right)), float(match)])
    return np.array(out)


@pytest.mark.parametrize("components", [("L1H2",), ("block:1",), ("L0H1", "L2H3"), ("block:0", "L2H1")])
def test_row_scorer_equals_the_hf_modules(bridge, hf, components):
    """The scorer (reuse from the set's earliest block) against the reference bypass applied to
    the HF model's modules, full forward, reduced by loops."""
    rows = _memorized(bridge)
    cap = math.log(int(bridge.cfg.d_vocab))
    ours = M.RowScorer(bridge, rows, M.suffix_reduction(PREFIX, cap), start=PREFIX - 1, batch_size=4)(components).numpy()
    by_layer: dict[int, list[int] | None] = {}
    for c in components:
        layer, head = M.sites.parse_component(c)
        by_layer[layer] = None if head is None else [*(by_layer.get(layer) or []), head]
    with torch.no_grad():
        ctx = [HFBypass(hf, [layer], heads) for layer, heads in by_layer.items()]
        for c in ctx:
            c.__enter__()
        try:
            logits = hf(torch.as_tensor(rows)).logits
        finally:
            for c in ctx:
                c.__exit__()
    ref = _reference_reduction(logits, rows, cap)
    assert np.allclose(ours[:, 0], ref[:, 0], atol=1e-4)
    assert np.array_equal(ours[:, 1:], ref[:, 1:])


def test_row_scorer_under_a_residual_budget_gives_the_same_scores(bridge):
    """With room for only some blocks' residuals, sets start from the highest kept block below
    their earliest one: the scores do not change."""
    rows = _memorized(bridge, n=6, seed=2)
    cap = math.log(int(bridge.cfg.d_vocab))
    full = M.RowScorer(bridge, rows, M.suffix_reduction(PREFIX, cap), start=PREFIX - 1, batch_size=4)
    per_block = rows.size * int(bridge.cfg.d_model) * 4
    some = M.RowScorer(bridge, rows, M.suffix_reduction(PREFIX, cap), start=PREFIX - 1, batch_size=4, budget=per_block)
    none = M.RowScorer(bridge, rows, M.suffix_reduction(PREFIX, cap), start=PREFIX - 1, batch_size=4, budget=0)
    L = int(bridge.cfg.n_layers)
    assert full.kept == list(range(1, L)) and 0 < len(some.kept) < L - 1 and none.kept == []
    for s in [("L1H2",), (f"block:{L - 1}",), ("L0H1", f"L{L - 1}H3"), ("block:2",)]:
        assert torch.equal(full(s), some(s)) and torch.equal(full(s), none(s))


def test_search_scores_are_greedy_exact_match(bridge):
    """The search half's exact match and match length, read off one teacher-forced pass, equal
    greedy decoding's (interp.memorization.evaluate) under the same set."""
    from interp.localize.knockout import knockout_interventions
    from interp.memorization import evaluate

    rows = _memorized(bridge, n=8, seed=3)
    cap = math.log(int(bridge.cfg.d_vocab))
    for s in [(), ("L0H0",), ("block:1",)]:
        ours = M.RowScorer(bridge, rows, M.suffix_reduction(PREFIX, cap), start=PREFIX - 1)(s).numpy()
        df = evaluate(bridge, rows, PREFIX, knockout_interventions(list(s)) if s else [])
        assert np.array_equal(ours[:, 1], df.exact_match.to_numpy(float))
        assert np.array_equal(ours[:, 2], df.match_length.to_numpy(float))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A tiny GPT-NeoX whose head L1H2 writes 40x more than the others: its rows are memorized
    through that head."""
    torch.manual_seed(0)
    model = random_model("neox", seed=4, n_layers=3, d_model=32, n_heads=4, n_ctx=96, vocab_size=512)
    d_head = 32 // 4
    with torch.no_grad():
        model.gpt_neox.layers[1].attention.dense.weight[:, 2 * d_head : 3 * d_head] *= 40
    out = tmp_path_factory.mktemp("planted")
    model.save_pretrained(out)
    tiny_tokenizer(512).save_pretrained(out)
    return out


def test_search_picks_a_planted_decisive_head_first(planted):
    bridge = load_model(planted)
    rows = _memorized(bridge, n=12, seed=1)
    general = torch.randint(1, 500, (8, 24), generator=torch.Generator().manual_seed(2)).numpy()
    res = M.search(bridge, rows, PREFIX, general, budget=M.Budget(ppl=1e6), levels=("head",), max_size=2, n_random=2,
                   progress=False)  # fmt: skip
    steps = res.scores[res.scores.in_beam.astype(bool)]
    assert steps[steps.step == 1].iloc[0]["set"] == "L1H2"
    assert "L1H2" in res.chosen
    assert res.baselines["none"] == ()
    # on general rows the model predicts well (its own continuations of other prefixes), removing
    # the planted head costs far more than 1% perplexity: a 1% budget keeps it out of every set
    own = _memorized(bridge, n=8, seed=9)
    tight = M.search(bridge, rows, PREFIX, own, budget=M.Budget(ppl=0.01), max_size=2, n_random=0, progress=False)
    single = tight.scores[(tight.scores.step == 0) & (tight.scores.set == "L1H2")].iloc[0]
    assert single.ppl_ratio > 1.01 and not single.feasible and "L1H2" not in tight.chosen


def test_search_refuses_nothing_to_remove(bridge):
    rows = np.random.default_rng(0).integers(1, 400, (6, 14))  # random suffixes: not memorized
    with pytest.raises(InputError, match="reproduces none"):
        M.search(bridge, rows, PREFIX, rows, progress=False)
    with pytest.raises(InputError, match="accuracy budget needs tasks"):
        M.search(bridge, rows, PREFIX, rows, budget=M.Budget(ppl=None, acc=0.1), progress=False)


@pytest.fixture(scope="module")
def searched(tiny_dirs):
    bridge = load_model(tiny_dirs["neox"])
    rows = _memorized(bridge, n=10, seed=5)
    general = np.random.default_rng(1).integers(1, 400, (8, 24))
    res = M.search(bridge, rows, PREFIX, general, budget=M.Budget(ppl=0.5), max_size=2, n_random=2, progress=False)
    table = M.report(bridge, res, rows, PREFIX, general, n_boot=200, progress=False)
    return bridge, rows, general, res, table


def test_report_rows_and_intervals(searched):
    bridge, rows, general, res, table = searched
    assert list(table.method[:1]) == ["none"] and "search" in set(table.method)
    first = res.scores.iloc[0]
    assert first["set"] == "none" and first.ppl_ratio == 1.0
    last_step = res.scores[res.scores.step == res.scores.step.max()]
    assert res.scores.in_beam.astype(bool).sum() <= res.settings["beam"] * res.scores.step.max()
    assert not (last_step.in_beam.astype(bool).any() and len(res.chosen) < res.scores.step.max())
    none = table[table.method == "none"].iloc[0]
    assert none.ppl_ratio == 1.0 and none.n_rows == len(res.split["heldout"])
    full = table.dropna(subset=["exact_match"])
    assert (full.exact_match_low <= full.exact_match).all() and (full.exact_match <= full.exact_match_high).all()
    assert (full.ppl_ratio_low <= full.ppl_ratio + 1e-12).all() and (full.ppl_ratio <= full.ppl_ratio_high + 1e-12).all()
    assert not set(res.split["search"]) & set(res.split["heldout"])


def test_export_round_trip_and_refusals(searched, tmp_path, tiny_dirs):
    bridge, _, _, res, table = searched
    path = M.export(tmp_path / "mitigation.json", bridge, res, table)
    doc = json.loads(path.read_text())
    assert doc["schema"] == M.SCHEMA and doc["components"] == list(res.chosen)
    ivs = M.load_interventions(path, bridge)
    from interp.localize.knockout import knockout_interventions

    assert ivs == knockout_interventions(list(res.chosen))
    other = load_model(tiny_dirs["neo"])
    with pytest.raises(InputError, match="made for another model"):
        M.load_interventions(path, other)
    bad = {"schema": "x"}, {**doc, "version": 99}, {**doc, "interventions": [{"type": "Mystery", "layers": [0]}]}, \
        {**doc, "interventions": [{"type": "AttentionBypass", "layers": []}]}, {**doc, "model": {}}  # fmt: skip
    for i, d in enumerate(bad):
        p = tmp_path / f"bad{i}.json"
        p.write_text(json.dumps(d))
        with pytest.raises(InputError):
            M.load_interventions(p)
    (tmp_path / "notjson.json").write_text("{")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError):
        M.load_interventions(tmp_path / "deep.json")
    for p in (tmp_path / "notjson.json", tmp_path / "missing.json", tmp_path):
        with pytest.raises(InputError):
            M.load_interventions(p)
    out_of_range = {**doc, "interventions": [{"type": "AttentionBypass", "layers": [99], "heads": None}]}
    (tmp_path / "range.json").write_text(json.dumps(out_of_range))
    with pytest.raises(InputError):
        M.load_interventions(tmp_path / "range.json", bridge)


def test_weights_fingerprint_follows_weights_not_folders(tiny_dirs, tmp_path):
    import shutil

    from interp.fingerprint import model_weights_sha256

    copy = shutil.copytree(tiny_dirs["neox"], tmp_path / "copy")
    a, b = load_model(tiny_dirs["neox"]), load_model(copy)
    assert model_weights_sha256(a) == model_weights_sha256(b)
    for arch in ("neox", "neo", "llama"):  # the bridge's wrapped model and the bare HF model agree
        folder = tiny_dirs.get(arch) or make_tiny_model(tmp_path / arch, arch, seed=1, n_layers=2, d_model=32, n_heads=4, n_ctx=64)
        assert model_weights_sha256(load_model(folder)) == model_weights_sha256(load_hf(folder))
    with torch.no_grad():
        b.original_model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight[0, 0] += 1e-3
    assert model_weights_sha256(a) != model_weights_sha256(b)


def test_cli_mitigate_then_sweep_with_the_file(tiny_dirs, tmp_path):
    from interp.cli import main
    from interp.data import save_rows

    bridge = load_model(tiny_dirs["neox"])
    save_rows(tmp_path / "mem.npy", _memorized(bridge, n=8, seed=7))
    save_rows(tmp_path / "gen.npy", np.random.default_rng(3).integers(1, 400, (6, 20)))
    out = tmp_path / "mit"
    args = ["mitigate", "--model", str(tiny_dirs["neox"]), "--data", str(tmp_path / "mem.npy"), "--prefix-len", str(PREFIX),
            "--general-data", str(tmp_path / "gen.npy"), "--budget-ppl", "0.5", "--max-size", "2", "--random", "1",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    assert {p.name for p in out.iterdir()} >= {"search.csv", "heldout.csv", "mitigation.json", "pareto.png", "config.json"}
    sw = tmp_path / "sw"
    assert main(["sweep", "--model", str(tiny_dirs["neox"]), "--data", str(tmp_path / "mem.npy"), "--prefix-len", str(PREFIX),
                 "--blocks", "0", "--interventions", str(out / "mitigation.json"), "--no-progress", "--out", str(sw)]) == 0  # fmt: skip
    import pandas as pd

    summary = pd.read_csv(sw / "summary.csv")
    assert list(summary.config) == ["baseline", "block:0", "file:mitigation"]
    # a file made for another model is refused with one sentence, and nothing is written
    refused = tmp_path / "refused"
    assert main(["sweep", "--model", str(tiny_dirs["neo"]), "--data", str(tmp_path / "mem.npy"), "--prefix-len", str(PREFIX),
                 "--interventions", str(out / "mitigation.json"), "--no-progress", "--out", str(refused)]) == 2  # fmt: skip
    assert not refused.exists() or not any(refused.iterdir())


@pytest.mark.parametrize("extra, message", [
    (["--budget-acc", "0.1"], "needs --tasks"),
    (["--tasks", "typo"], "only with --budget-acc"),
    (["--levels", "heads"], "--levels"),
    (["--no-ppl-budget"], "leaves no budget"),
    (["--name", "a/b"], "--name"),
    (["--random", "-1"], "--random"),
])  # fmt: skip
def test_cli_mitigate_refuses_bad_options(tiny_dirs, tmp_path, capsys, extra, message):
    from interp.cli import main

    out = tmp_path / "o"
    code = main(["mitigate", "--model", str(tiny_dirs["neox"]), "--data", "x.npy", "--prefix-len", "4", "--general-data", "y.npy",
                 "--out", str(out), *extra])  # fmt: skip
    assert code == 2 and message in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("arch", ["neox", "neo"])
def test_committed_file_reproduced_on_the_hf_modules(arch, tmp_path):
    """The committed mitigation file of each parent organism, applied by the reference bypass on
    the HF modules (greedy decoding by full recomputation, token NLL by hand), gives the held-out
    exact match and perplexity ratio that the file reports."""
    from interp.cli import main
    from interp.fingerprint import model_weights_sha256
    from interp.organism import organism_path

    path = ROOT / "figures" / "mitigation" / f"{arch}-mitigation.json"
    doc = M.read_interventions_file(path)
    folder = organism_path(arch)
    assert doc["model"]["weights_sha256"] == model_weights_sha256(load_hf(folder))
    assert main(["organism", "canaries", "--arch", arch, "--duplicates", "64", "--out", str(tmp_path / "d64.npy")]) == 0
    assert main(["organism", "heldout", "--arch", arch, "--out", str(tmp_path / "heldout.npy")]) == 0
    rows, general = np.load(tmp_path / "d64.npy"), np.load(tmp_path / "heldout.npy")
    prefix = doc["search"]["prefix_len"]
    held = torch.as_tensor(rows[doc["search"]["split"]["heldout"]])
    gen = torch.as_tensor(general[doc["search"]["split"]["general_heldout"]])
    hf = load_hf(folder)

    def nll(model):
        with torch.no_grad():
            lp = torch.log_softmax(model(gen).logits[:, :-1].double(), -1)
        return -lp.gather(-1, gen[:, 1:, None])[..., 0].mean(1)

    base = nll(hf)
    ctx = [HFBypass(hf, spec["layers"], spec["heads"]) for spec in doc["interventions"]]
    for c in ctx:
        c.__enter__()
    try:
        gen_tokens = hf_greedy(hf, held[:, :prefix], held.shape[1] - prefix)
        after = nll(hf)
    finally:
        for c in ctx:
            c.__exit__()
    em = float((gen_tokens == held[:, prefix:]).all(1).double().mean())
    reported = doc["heldout"]["search"]
    assert em == pytest.approx(reported["exact_match"], abs=1e-9)
    assert float(torch.exp((after - base).mean())) == pytest.approx(reported["ppl_ratio"], rel=1e-4)
