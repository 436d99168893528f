"""Per-head bypass sweep, rankings, Recall@k and knockout, scored on tiny models with planted
ground truth; `interp localize` end to end; the shipped injected organisms when present."""

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import interp.cli as cli
from interp import localize as Lz
from interp.generation import greedy_generate
from interp.interventions import AttentionBypass
from interp.memorization import evaluate
from interp.models import load_model
from interp.errors import InputError
from interp.organism import DATA_DIR
from interp.tiny import random_model, tiny_tokenizer
from reference import HFBypass, hf_greedy, hf_logits, load_hf

torch.set_num_threads(1)

PREFIX, SUFFIX = 6, 8
PLANTED = "L1H2"  # the head made decisive in the planted models
TINY = {
    "neox": dict(n_layers=3, d_model=32, n_heads=4, n_ctx=96),
    "neo": dict(n_layers=4, d_model=32, n_heads=4, n_ctx=96, window=5),
}


def own_continuations(model, n: int, seed: int) -> np.ndarray:
    """Rows whose suffix is the model's own greedy continuation: memorized by construction."""
    rows = torch.randint(1, 500, (n, PREFIX + SUFFIX), generator=torch.Generator().manual_seed(seed))
    rows[:, PREFIX:] = greedy_generate(model, rows[:, :PREFIX], SUFFIX)
    return rows.numpy()


@pytest.fixture(scope="module")
def mixed_rows(bridge):
    """Four memorized rows and three random ones."""
    rows = own_continuations(bridge, 7, seed=5)
    rows[4:, PREFIX:] = np.random.default_rng(0).integers(1, 500, (3, SUFFIX))
    return rows


def test_head_sweep_equals_evaluate_for_every_head(bridge, mixed_rows):
    fast = Lz.head_bypass_sweep(bridge, mixed_rows, PREFIX, batch_size=8)
    L, H = bridge.cfg.n_layers, bridge.cfg.n_heads
    assert list(fast.columns[:4]) == ["config", "layer", "head", "sequence"]
    assert fast.config.unique().tolist() == [f"L{l}H{h}" for l in range(L) for h in range(H)]
    ref = pd.concat(
        [evaluate(bridge, mixed_rows, PREFIX, [AttentionBypass(l, heads=[h])]) for l in range(L) for h in range(H)],
        ignore_index=True,
    )
    for col in ref.columns:
        np.testing.assert_allclose(fast[col].to_numpy(float), ref[col].to_numpy(float), rtol=1e-5, atol=1e-5, err_msg=col)
    assert fast.exact_match.min() == 0 and fast.exact_match.max() == 1  # both branches are exercised


def test_row_head_bypass_bypasses_each_rows_own_head(bridge, rows):
    from interp.generation import teacher_forced_logits

    layers, heads = (1, 0, 1, 2, 1), (0, 3, 1, 1, 2)
    ours = teacher_forced_logits(bridge, rows, [Lz.RowHeadBypass(layers, heads)], batch_size=len(heads))
    for b, (l, h) in enumerate(zip(layers, heads)):
        ref = teacher_forced_logits(bridge, rows[b : b + 1], [AttentionBypass(l, heads=[h])])
        torch.testing.assert_close(ours[b : b + 1], ref, atol=2e-5, rtol=0)


def test_head_sweep_matches_hf_reference(bridge, hf, mixed_rows):
    fast = Lz.head_bypass_sweep(bridge, mixed_rows, PREFIX, layers=[1])
    rows = torch.as_tensor(mixed_rows)
    for h in (0, 3):
        with HFBypass(hf, [1], heads=[h]):
            gen = hf_greedy(hf, rows[:, :PREFIX], SUFFIX)
        same = (gen == rows[:, PREFIX:]).float()
        ours = fast[fast.config == f"L1H{h}"]
        np.testing.assert_array_equal(ours.exact_match.to_numpy(), same.prod(1).numpy())
        np.testing.assert_allclose(ours.token_accuracy.to_numpy(), same.mean(1).numpy(), rtol=1e-6)


# ---------------------------------------------------------------- rankings and Recall@k


def ranking(components, method="m"):
    return Lz.rank(pd.DataFrame({"component": components, "score": np.arange(len(components), 0, -1.0)}), method)


def test_rank_orders_by_score_then_tiebreak():
    scores = pd.DataFrame({"component": ["L0H0", "L0H1", "L1H0"], "score": [0.5, 1.0, 0.5], "nll": [1.0, 0.0, 2.0]})
    r = Lz.rank(scores, "x", tiebreak="nll")
    assert list(r.columns) == Lz.RANKING_COLUMNS
    assert r.component.tolist() == ["L0H1", "L1H0", "L0H0"] and r["rank"].tolist() == [1, 2, 3]


def test_recall_at_k_arithmetic():
    heads = ranking(["L2H1", "L0H3", "L1H2", "L1H0"])
    assert Lz.recall_at_k(heads, "L1H2", 1) == 0 and Lz.recall_at_k(heads, "L1H2", 3) == 1
    assert Lz.recall_at_k(heads, ["L1H2", "L1H0"], 3) == 0.5
    assert Lz.recall_at_k(heads, "block:0", 2) == 1  # a block truth is found by any of its heads
    blocks = ranking(["block:2", "block:1", "block:0"])
    assert Lz.recall_at_k(blocks, "L1H2", 1) == 0 and Lz.recall_at_k(blocks, "L1H2", 2) == 1  # head -> its block
    table = Lz.recall_table(heads, "L1H2", ks=(1, 3))
    assert table.recall.tolist() == [0, 1] and (table.truth_rank == 3).all() and (table.n_components == 4).all()


def _tie_orders(ranking):
    """Every order of ``ranking``'s components with non-increasing score (ties in any order)."""
    groups = [g.component.tolist() for _, g in ranking.groupby("score", sort=True)][::-1]
    for parts in itertools.product(*(itertools.permutations(g) for g in groups)):
        yield [c for part in parts for c in part]


@pytest.mark.parametrize("seed", range(12))
def test_recall_ties_random_is_the_mean_over_every_tie_break(seed):
    """Against brute force: ``recall_at_k`` averaged over every order that breaks the score's ties
    (all orders equally likely), for head and block rankings, head and block truths."""
    rng = np.random.default_rng(seed)
    heads = [f"L{l}H{h}" for l in range(3) for h in range(2)]
    comps = heads if seed % 2 else [f"block:{l}" for l in range(6)]
    scores = rng.choice([0.0, 0.5, 1.0], len(comps))  # few values: ties of every size
    r = Lz.rank(pd.DataFrame({"component": comps, "score": scores}), "x")
    truths = [["block:1"], ["L2H0"], ["L0H1", "block:2"]][seed % 3]
    orders = list(_tie_orders(r))
    for k in range(1, len(comps) + 1):
        brute = np.mean([Lz.recall_at_k(ranking(order), truths, k) for order in orders])
        assert Lz.recall_at_k_ties_random(r, truths, k) == pytest.approx(brute, abs=1e-12), (k, scores, truths)


def test_recall_ties_random_on_a_five_way_tie():
    """The injected organisms' block-bypass case: five blocks tied at the top, the truth among them."""
    r = Lz.rank(pd.DataFrame({"component": [f"block:{l}" for l in range(6)], "score": [1, 1, 1, 1, 1, 0.25]}), "x")
    assert [Lz.recall_at_k_ties_random(r, "block:4", k) for k in (1, 3, 5, 6)] == pytest.approx([0.2, 0.6, 1, 1])
    assert Lz.recall_at_k_ties_random(r, "block:5", 5) == 0 and Lz.recall_at_k_ties_random(r, "block:5", 6) == 1
    table = Lz.recall_table(r, "block:4", ks=(1, 5))
    assert table.recall_ties_random.tolist() == pytest.approx([0.2, 1.0])


def test_knockout_interventions_group_heads_by_layer():
    ivs = Lz.knockout_interventions(["L1H2", "block:0", "L1H0", "L0H1"])
    assert [iv.label for iv in ivs] == ["block:0", "L1H0,L1H2"]  # L0H1 is inside the bypassed block 0
    assert [iv.label for iv in Lz.knockout_interventions(["L1H2"], "zero")] == ["zero:L1H2"]
    with pytest.raises(ValueError):
        Lz.knockout_interventions(["L1H2"], "mean")


# ---------------------------------------------------------------- planted ground truth


def make_planted(folder, arch: str, scale: float = 4.0):
    """A tiny random model whose head L1H2 writes ``scale`` times more through W_O than its
    siblings, so it dominates the model's own continuations."""
    hf = random_model(arch, seed=1, vocab_size=len(tiny_tokenizer()), **TINY[arch])
    dh = hf.config.hidden_size // 4
    with torch.no_grad():
        proj = hf.gpt_neox.layers[1].attention.dense if arch == "neox" else hf.transformer.h[1].attn.attention.out_proj
        proj.weight[:, 2 * dh : 3 * dh] *= scale
    hf.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def planted(tmp_path_factory, arch):
    folder = make_planted(tmp_path_factory.mktemp(f"planted-{arch}"), arch)
    model = load_model(folder)
    rows = own_continuations(model, 8, seed=0)
    path = folder / "rows.npy"
    np.save(path, rows)
    return folder, model, rows, path


@pytest.fixture
def run_cli(monkeypatch):
    if "localize" not in cli.SUBCOMMANDS:
        monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, "localize"])
    return cli.main


@pytest.mark.parametrize("method", ["block-bypass", "head-bypass", "patching", "attribution"])
def test_cli_ranks_the_planted_component_first(planted, run_cli, tmp_path, method):
    folder, model, _, data = planted
    out = tmp_path / "out"
    argv = ["localize", "--model", str(folder), "--data", str(data), "--prefix-len", str(PREFIX),
            "--method", method, "--out", str(out), "--truth", PLANTED, "--no-progress"]  # fmt: skip
    assert run_cli(argv) == 0
    r = pd.read_csv(out / "ranking.csv")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    assert list(r.columns) == ["method", "component", "score", "rank"] and (r.method == method).all()
    assert r["rank"].tolist() == list(range(1, len(r) + 1)) and r.score.is_monotonic_decreasing
    assert len(r) == (L if method == "block-bypass" else L * H)
    recall = pd.read_csv(out / "recall.csv")
    expected_top = "block:1" if method == "block-bypass" else PLANTED
    assert r.component[0] == expected_top and recall.set_index("k").loc[1, "recall"] == 1
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["truth"] == PLANTED
    assert config["direction"] == {"patching": "noising", "attribution": "denoising"}.get(method)
    # the figure script draws the folder and the recall table (with the tie-aware recall)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analyses"))
    import localization_figures

    assert localization_figures.main([str(out), "--out", str(tmp_path / "fig")]) == 0
    drawn = pd.read_csv(tmp_path / "fig" / "recall.csv").set_index("k")
    for k in drawn.index:
        assert drawn.loc[k, "recall_ties_random"] == pytest.approx(Lz.recall_at_k_ties_random(r, PLANTED, k))
    for name in [f"{tmp_path.name}-out", "recall"]:
        assert (tmp_path / "fig" / f"{name}.png").stat().st_size > 1000


def test_cli_knockout_of_the_top_head(planted, run_cli, tmp_path):
    folder, _, rows, data = planted
    np.save(tmp_path / "other.npy", rows[4:])
    np.save(tmp_path / "general.npy", np.random.default_rng(2).integers(1, 500, (3, PREFIX + SUFFIX)))
    task = tmp_path / "task.jsonl"
    task.write_text("\n".join(json.dumps({"context": f"Copy: ab{i} | again:", "choices": [f" ab{i}", " cd"], "gold": 0})
                              for i in range(3)))  # fmt: skip
    out = tmp_path / "out"
    assert run_cli(["localize", "--model", str(folder), "--data", str(data), "--prefix-len", str(PREFIX),
                    "--method", "head-bypass", "--out", str(out), "--knockout", "1,2", "--no-progress",
                    "--other-data", str(tmp_path / "other.npy"), "--general-data", str(tmp_path / "general.npy"),
                    "--general-tasks", str(task)]) == 0  # fmt: skip
    ko = pd.read_csv(out / "knockout.csv")
    assert set(ko.set) == {"target", "other", "general"} and sorted(ko.k.unique()) == [1, 2]
    assert set(ko[ko.set == "general"].metric) == {"mean_token_nll", "benchmark_acc"}
    assert ko[(ko.k == 1)].components.iloc[0] == PLANTED
    assert ko[(ko.k == 1) & (ko.set == "target") & (ko.metric == "exact_match")]["drop"].item() > 0


def test_dla_and_denoising_attribution_find_the_planted_head(planted):
    from interp import attribution as A
    from interp import patching as P

    _, model, rows, _ = planted
    runs = P.prepare_runs(model, rows, PREFIX)
    atp = A.attribution_patching(model, runs, directions=["denoising"])
    dla = A.direct_logit_attribution(model, rows, PREFIX)
    assert Lz.recall_at_k(Lz.rank_by_effect(atp, "atp"), PLANTED, 1) == 1
    assert Lz.recall_at_k(Lz.rank_by_effect(dla, "dla", value="dla"), PLANTED, 1) == 1


def _hf_mean_token_nll(folder, rows, layers=(), heads=None) -> float:
    """Mean next-token NLL over every position, from the Hugging Face model (reference bypass)."""
    hf, tokens = load_hf(folder), torch.as_tensor(rows)
    with HFBypass(hf, list(layers), heads):
        logp = torch.log_softmax(hf_logits(hf, tokens[:, :-1]).double(), -1)
    return float(-logp.gather(-1, tokens[:, 1:, None]).mean())


def test_knockout_of_the_planted_head_breaks_its_rows(planted):
    folder, model, rows, _ = planted
    general_rows = np.random.default_rng(1).integers(1, 500, (4, PREFIX + SUFFIX))
    calls = []
    acc = Lz.GeneralScore("acc", lambda m, ivs: calls.append(ivs) or (0.5 if ivs else 0.75), higher_is_better=True)
    df = Lz.knockout(model, [PLANTED], PREFIX, target_rows=rows[:4], other_rows=rows[4:],
                     general=[Lz.nll_score(general_rows), acc])  # fmt: skip
    assert set(df.set) == {"target", "other", "general"}
    assert {"baseline", "knocked", "drop", "components", "how"} <= set(df.columns)
    target = df[(df.set == "target") & (df.metric == "exact_match")].iloc[0]
    assert target.baseline == 1 and target["drop"] > 0
    nll = df[df.metric == "mean_token_nll"].iloc[0]
    assert nll["drop"] == pytest.approx(nll.knocked - nll.baseline)
    assert nll.baseline == pytest.approx(_hf_mean_token_nll(folder, general_rows), rel=1e-5)
    assert nll.knocked == pytest.approx(_hf_mean_token_nll(folder, general_rows, [1], [2]), rel=1e-5)  # L1H2
    assert abs(nll.knocked - nll.baseline) > 1e-4  # the knockout moves it, so the comparison above is not vacuous
    assert df[df.metric == "acc"]["drop"].item() == pytest.approx(0.25)  # higher is better: baseline - knocked
    assert len(calls) == 2 and calls[0] == [] and calls[1][0].label == "L1H2"
    curve = Lz.knockout_curve(model, ranking([PLANTED, "L0H0"]), [1, 2], PREFIX, target_rows=rows[:2], how="zero")
    assert sorted(curve.k.unique()) == [1, 2] and (curve.how == "zero").all()


# ---------------------------------------------------------------- selectivity


def _hf_token_nll_per_row(folder, rows, layers=(), heads=None) -> np.ndarray:
    hf, tokens = load_hf(folder), torch.as_tensor(rows)
    with HFBypass(hf, list(layers), heads):
        logp = torch.log_softmax(hf_logits(hf, tokens[:, :-1]).double(), -1)
    return (-logp.gather(-1, tokens[:, 1:, None]))[..., 0].mean(1).numpy()


def _hf_suffix_nll(folder, rows, layers=(), heads=None) -> np.ndarray:
    """Per row, the summed NLL (nats) of the suffix given the true prefix, from the HF model."""
    hf, tokens = load_hf(folder), torch.as_tensor(rows)
    with HFBypass(hf, list(layers), heads):
        logp = torch.log_softmax(hf_logits(hf, tokens[:, :-1]).double(), -1)
    return (-logp.gather(-1, tokens[:, 1:, None]))[:, PREFIX - 1 :, 0].sum(1).numpy()


def _hf_exact_match(folder, rows, layers=(), heads=None) -> float:
    """Mean exact match of greedy decoding from the prefix, from the Hugging Face model."""
    hf, tokens = load_hf(folder), torch.as_tensor(rows)
    with HFBypass(hf, list(layers), heads):
        gen = hf_greedy(hf, tokens[:, :PREFIX], SUFFIX)
    return float((gen == tokens[:, PREFIX:]).all(1).double().mean())


@pytest.mark.parametrize("method", ["block-bypass", "head-bypass"])
def test_selectivity_against_hf_reference(planted, run_cli, tmp_path, method):
    """``selectivity.csv`` and the ranking of ``--score selectivity`` against m, g and m - g
    recomputed from the Hugging Face model with the reference bypass (docs/selectivity.md)."""
    folder, model, rows, data = planted
    rows = rows.copy()
    rows[6:, PREFIX:] = np.random.default_rng(4).integers(1, 500, (2, SUFFIX))  # two unmemorized rows: EM_0 = 0.75
    np.save(tmp_path / "rows.npy", rows)
    general = own_continuations(model, 5, seed=7)
    np.save(tmp_path / "general.npy", general)
    out = tmp_path / "out"
    assert run_cli(["localize", "--model", str(folder), "--data", str(tmp_path / "rows.npy"), "--prefix-len", str(PREFIX),
                    "--method", method, "--out", str(out), "--score", "selectivity", "--general-data",
                    str(tmp_path / "general.npy"), "--truth", PLANTED, "--no-progress"]) == 0  # fmt: skip
    table = pd.read_csv(out / "selectivity.csv").set_index("component")
    em0, nll0 = _hf_exact_match(folder, rows), _hf_mean_token_nll(folder, general)
    assert em0 == 0.75
    log_v = float(np.log(load_hf(folder).config.vocab_size))
    assert nll0 < log_v
    L, H = model.cfg.n_layers, model.cfg.n_heads
    comps = [(f"block:{l}", [l], None) for l in range(L)] if method == "block-bypass" else \
        [(f"L{l}H{h}", [l], [h]) for l in range(L) for h in range(H)]  # fmt: skip
    assert sorted(table.index) == sorted(c for c, _, _ in comps)
    expected = {}
    snll0 = _hf_suffix_nll(folder, rows).mean()
    per_row = pd.read_parquet(out / "general_nll.parquet")
    assert per_row[per_row.component == "baseline"].mean_token_nll.to_numpy() == pytest.approx(
        _hf_token_nll_per_row(folder, general), rel=1e-5)  # fmt: skip
    for comp, layers, heads in comps:
        em_c = _hf_exact_match(folder, rows, layers, heads)
        m = (em0 - em_c) / em0
        g = (_hf_mean_token_nll(folder, general, layers, heads) - nll0) / (log_v - nll0)
        row = table.loc[comp]
        assert row.exact_match == pytest.approx(em_c, abs=1e-12), comp
        assert row.nll_increase == pytest.approx(_hf_suffix_nll(folder, rows, layers, heads).mean() - snll0, rel=1e-4, abs=1e-4), comp
        assert per_row[per_row.component == comp].mean_token_nll.to_numpy() == pytest.approx(
            _hf_token_nll_per_row(folder, general, layers, heads), rel=1e-5), comp  # fmt: skip
        assert row.memorization_lost == pytest.approx(m, abs=1e-12), comp
        assert row.general_lost == pytest.approx(g, rel=1e-4, abs=1e-6), comp
        assert row.score == pytest.approx(m - g, rel=1e-4, abs=1e-6), comp
        expected[comp] = m - g
    assert table.baseline_mean_token_nll.iloc[0] == pytest.approx(nll0, rel=1e-5)
    assert table.baseline_exact_match.iloc[0] == em0
    boot = pd.read_csv(out / "selectivity_bootstrap.csv")
    assert sorted(boot.component) == sorted(table.index) and boot.p_first.sum() == pytest.approx(1)
    assert (boot.rank_lo <= boot.rank_hi).all() and boot.n_used.iloc[0] <= 1000
    # the scores differ from the necessity scores, so the ranking below is not the necessity ranking renamed
    assert len({round(v, 6) for v in expected.values()}) > 1 and table.general_lost.abs().max() > 1e-3
    r = pd.read_csv(out / "ranking.csv")
    assert (r.method == f"{method}:selectivity").all() and r.score.is_monotonic_decreasing
    assert r.set_index("component").score.to_dict() == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert json.loads((out / "config.json").read_text())["score"] == "selectivity"
    assert (out / "recall.csv").is_file()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "analyses"))
    import localization_figures

    assert localization_figures.main([str(out), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / f"{tmp_path.name}-out.png").stat().st_size > 1000


def test_selectivity_refuses_undefined_fractions():
    seqs = pd.DataFrame({"config": ["block:0", "block:1"], "exact_match": [0.0, 1.0], "suffix_nll": [9.0, 1.0]})
    general = pd.DataFrame({"component": ["baseline", "block:0", "block:1"], "mean_token_nll": [2.0, 5.0, 2.5]})
    memorized = pd.DataFrame({"exact_match": [1.0], "suffix_nll": [1.0]})
    t = Lz.selectivity(seqs, memorized, general, n_logits=int(np.exp(4.0)) + 1).set_index("component")
    log_v = np.log(int(np.exp(4.0)) + 1)
    assert t.loc["block:0", "general_lost"] == pytest.approx(3.0 / (log_v - 2.0))  # above 1: not clipped
    assert t.loc["block:1", "score"] == pytest.approx(0.0 - 0.5 / (log_v - 2.0))
    with pytest.raises(InputError, match="reproduces none"):
        Lz.selectivity(seqs, memorized.assign(exact_match=0.0), general, n_logits=100)
    with pytest.raises(InputError, match="uniform guess"):
        Lz.selectivity(seqs, memorized, general.assign(mean_token_nll=5.0), n_logits=100)  # log 100 = 4.6
    with pytest.raises(ValueError, match="missing"):
        Lz.selectivity(seqs, memorized, general.iloc[:2], n_logits=100)
    with pytest.raises(InputError, match="not finite"):
        Lz.selectivity(seqs, memorized, general.assign(mean_token_nll=[2.0, np.nan, 2.5]), n_logits=100)
    with pytest.raises(InputError, match="not finite for \\['baseline'\\]"):
        Lz.selectivity(seqs, memorized, general.assign(mean_token_nll=[np.inf, 2.0, 2.5]), n_logits=100)
    # a bypass that makes more rows match loses a negative fraction: m is not clipped either
    half = pd.DataFrame({"exact_match": [1.0, 0.0], "suffix_nll": [1.0, 1.0]})
    gain = pd.DataFrame({"config": ["block:0"] * 2, "exact_match": [1.0, 1.0], "suffix_nll": [0.5, 0.5]})
    t = Lz.selectivity(gain, half, general.iloc[:2], n_logits=100)
    assert t.memorization_lost.item() == pytest.approx(-1.0)
    assert t.nll_increase.item() == pytest.approx(-0.5)


def test_selectivity_ties_are_broken_by_the_suffix_nll_rise():
    seqs = pd.DataFrame({"config": ["block:0", "block:1", "block:2"], "exact_match": [0.0, 0.0, 0.0],
                         "suffix_nll": [3.0, 9.0, 5.0]})  # fmt: skip
    general = pd.DataFrame({"component": ["baseline", "block:0", "block:1", "block:2"], "mean_token_nll": [2.0, 2.5, 2.5, 2.5]})
    base = pd.DataFrame({"exact_match": [1.0], "suffix_nll": [1.0]})
    t = Lz.selectivity(seqs, base, general, n_logits=100)
    assert t.score.nunique() == 1
    assert Lz.rank_by_selectivity(t, "x").component.tolist() == ["block:1", "block:2", "block:0"]


def test_selectivity_bootstrap_ranks_each_resample_like_the_point_estimate():
    """Each resample's ranks equal ``rank_by_selectivity(selectivity(...))`` on the resampled rows."""
    rng = np.random.default_rng(3)
    comps, n, r = ["block:0", "block:1", "block:2", "block:3"], 5, 6
    seqs = pd.DataFrame({"config": np.repeat(comps, n), "exact_match": rng.integers(0, 2, len(comps) * n).astype(float),
                         "suffix_nll": rng.normal(5, 2, len(comps) * n)})  # fmt: skip
    base = pd.DataFrame({"exact_match": [1.0, 1.0, 0.0, 1.0, 1.0], "suffix_nll": rng.normal(1, 0.2, n)})
    general = pd.DataFrame([(c, i, 3.0 + rng.normal(0, 0.3) + 0.1 * k) for k, c in enumerate(["baseline", *comps])
                            for i in range(r)], columns=["component", "row", "mean_token_nll"])  # fmt: skip
    samples = [(rng.integers(0, n, n), rng.integers(0, r, r)) for _ in range(40)] + [(np.array([2, 2, 2, 2, 2]), np.arange(r))]
    boot = Lz.selectivity_bootstrap(seqs, base, general, 100, samples=samples).set_index("component")
    ranks, scores = [], []
    for t_idx, g_idx in samples:
        if base.exact_match.to_numpy()[t_idx].mean() == 0:
            continue  # no memorized row: skipped
        sub = pd.concat([seqs[seqs.config == c].iloc[t_idx] for c in comps])
        gsub = pd.concat([general[general.component == c].iloc[g_idx] for c in ["baseline", *comps]])
        table = Lz.selectivity(sub, base.iloc[t_idx], gsub, 100)
        ranking = Lz.rank_by_selectivity(table, "x").set_index("component")
        ranks.append([ranking.loc[c, "rank"] for c in comps])
        scores.append(table.set_index("component").loc[comps, "score"].to_numpy())
    ranks, scores = np.array(ranks), np.array(scores)
    assert boot.n_used.iloc[0] == len(ranks) == 40
    assert boot.loc[comps, "p_first"].to_numpy() == pytest.approx((ranks == 1).mean(0))
    assert boot.loc[comps, "rank_hi"].to_numpy() == pytest.approx(np.percentile(ranks, 97.5, axis=0))
    assert boot.loc[comps, "score_lo"].to_numpy() == pytest.approx(np.percentile(scores, 2.5, axis=0))
    assert len(set(map(tuple, ranks))) > 1  # the resamples disagree, so the comparison is not vacuous


def test_selectivity_refuses_unmemorized_rows_before_any_sweep(planted, run_cli, tmp_path, capsys, monkeypatch):
    import interp.cli.localize as cli_localize

    folder, _, rows, _ = planted
    rows = rows.copy()
    rows[:, PREFIX:] = np.random.default_rng(4).integers(1, 500, (len(rows), SUFFIX))  # nothing memorized
    np.save(tmp_path / "rows.npy", rows)
    np.save(tmp_path / "general.npy", rows)

    def no_sweep(*a, **k):
        raise AssertionError("swept before refusing")

    monkeypatch.setattr(cli_localize, "sweep", no_sweep)
    monkeypatch.setattr(Lz, "head_bypass_sweep", no_sweep)
    for method in ("block-bypass", "head-bypass"):
        out = tmp_path / method
        assert run_cli(["localize", "--model", str(folder), "--data", str(tmp_path / "rows.npy"), "--prefix-len",
                        str(PREFIX), "--method", method, "--out", str(out), "--score", "selectivity", "--general-data",
                        str(tmp_path / "general.npy"), "--no-progress"]) == 2  # fmt: skip
        assert "reproduces none of the rows" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--method", "patching", "--general-data", "{data}"], "applies to block-bypass and head-bypass"),
        (["--method", "block-bypass"], "needs --general-data"),
        (["--method", "block-bypass", "--general-data", "{short}"], "--general-data"),
    ],
)
def test_selectivity_bad_input_exits_2(planted, run_cli, tmp_path, capsys, extra, message):
    folder, _, _, data = planted
    short = tmp_path / "short.npy"
    np.save(short, np.ones((2, 1), dtype=np.int64))  # one token per row: no next token to score
    out = tmp_path / "out"
    argv = ["localize", "--model", str(folder), "--data", str(data), "--prefix-len", str(PREFIX), "--out", str(out),
            "--score", "selectivity", "--no-progress", *[a.format(data=data, short=short) for a in extra]]  # fmt: skip
    assert run_cli(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--n-corrupt", "99"], "--n-corrupt"),
        (["--truth", "head7"], "--truth"),
        (["--truth", "L9H0"], "not in this model"),
        (["--prefix-len", "0"], "--prefix-len"),
        (["--knockout", "99"], "--knockout"),
        (["--knockout", "1", "--other-data", "/nonexistent/o.npy"], "does not exist"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(planted, run_cli, tmp_path, capsys, extra, message):
    folder, _, _, data = planted
    out = tmp_path / "out"
    argv = ["localize", "--model", str(folder), "--data", str(data), "--prefix-len", str(PREFIX),
            "--method", "patching", "--out", str(out), "--no-progress", *extra]  # fmt: skip
    assert run_cli(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_missing_data_file_exits_2(run_cli, tiny_dir, tmp_path):
    out = tmp_path / "out"
    assert run_cli(["localize", "--model", str(tiny_dir), "--data", str(tmp_path / "nope.npy"), "--prefix-len", "4",
                    "--method", "block-bypass", "--out", str(out)]) == 2  # fmt: skip
    assert not out.exists()


# ---------------------------------------------------------------- shipped injected organisms


def injected_rows(folder):
    """The injected canaries of an organism folder as token rows, and their prefix length."""
    from transformers import AutoTokenizer

    from interp.organism import canaries as C

    canary_list, prefix_len, row_len = C.load_canaries(folder / "canaries.json")
    chosen = C.select(canary_list, C.INJECTED)
    return C.canary_rows(AutoTokenizer.from_pretrained(folder), chosen, prefix_len, row_len), prefix_len


@pytest.fixture(scope="module", params=["neox", "neo"])
def injected_block_ranking(request):
    """The block-bypass ranking of a shipped injected organism on its injected canaries."""
    from interp.memorization import sweep

    org = request.param
    folder = DATA_DIR / f"{org}-injected"
    if not (folder / "manifest.json").is_file() or not (folder / "canaries.json").is_file():
        pytest.skip(f"the injected {org} organism is not shipped in this checkout ({folder})")
    truth = Lz.injected_component(folder)
    if truth is None:
        pytest.skip(f"{folder}/manifest.json records no injected_component")
    rows, prefix_len = injected_rows(folder)
    df = sweep(load_model(folder), rows, prefix_len, progress=False)
    return org, truth, Lz.rank_by_bypass(df[df.config != "baseline"], df[df.config == "baseline"], "block-bypass")


def test_bypassing_the_injected_block_removes_as_much_as_any_block(injected_block_ranking):
    """On both injected organisms the injected block is in the top tie group of the exact-match
    drop, and ``recall_ties_random`` at 1 is one over that group's size."""
    _, truth, r = injected_block_ranking
    truth_row = r[r.component == truth].iloc[0]
    assert truth_row.score == r.score.max()
    tied = r[r.score == truth_row.score].component.tolist()
    assert Lz.recall_at_k_ties_random(r, truth, 1) == pytest.approx(1 / len(tied))


def test_block_bypass_ranks_the_injected_block_first(injected_block_ranking):
    """The issue's target, Recall@1 = 1, with the suffix-NLL tie-break. It holds on GPT-NeoX; on
    GPT-Neo block 0 is first (README: blocks 0-4 each remove every injected canary, suffix NLL
    76.0 for block 0 against 73.8 for block 4), so GPT-Neo is a strict xfail: it becomes a
    failure the day it holds, and the README must then change."""
    org, truth, r = injected_block_ranking
    ok = Lz.recall_at_k(r, truth, 1) == 1
    if org == "neo":
        if ok:
            pytest.fail("GPT-Neo now ranks the injected block first: update the README and this test")
        pytest.xfail(f"neo: {r.component.iloc[0]} ranks first, {truth} ranks {int(r[r.component == truth]['rank'].iloc[0])}")
    assert ok, r



@pytest.fixture(scope="module", params=["neox", "neo"])
def injected_selectivity(request):
    """The selectivity table of a shipped injected organism's block bypass: its injected canaries
    against the held-out text behind its perplexity (docs/selectivity.md, "The one evaluation")."""
    from transformers import AutoTokenizer

    from interp.memorization import sweep
    from interp.organism import corpus
    from interp.organism.evaluate import N_HELDOUT_BLOCKS
    from interp.organism.corpus import heldout_blocks

    org = request.param
    folder = DATA_DIR / f"{org}-injected"
    if not (folder / "manifest.json").is_file() or not (folder / "canaries.json").is_file():
        pytest.skip(f"the injected {org} organism is not shipped in this checkout ({folder})")
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest["corpus"]["fingerprint"] != corpus.corpus_fingerprint():
        pytest.skip("different Python stdlib: the held-out text differs")
    model = load_model(folder)
    rows, prefix_len = injected_rows(folder)
    df = sweep(model, rows, prefix_len, progress=False)
    general_rows = heldout_blocks(AutoTokenizer.from_pretrained(folder), int(manifest["config"]["n_ctx"]), N_HELDOUT_BLOCKS)
    general = Lz.general_nll_by_component(model, general_rows, [f"block:{b}" for b in range(model.cfg.n_layers)])
    table = Lz.selectivity(df[df.config != "baseline"], df[df.config == "baseline"], general, int(model.cfg.d_vocab))
    return org, manifest["injected_component"], table


def test_block_bypass_selectivity_ranks_the_injected_block_first(injected_selectivity):
    """The issue's target under the selectivity score. It does not hold on either organism (README):
    blocks 0-4 each remove every injected canary (m = 1), and block 4's bypass costs more of the
    held-out text than the bypass of blocks 1-3 (g 0.148 against 0.049-0.069 on GPT-NeoX, 0.143
    against 0.040-0.049 on GPT-Neo), so blocks 1-3 rank above it. A strict xfail: it becomes a
    failure the day it holds, and the README must then change."""
    org, truth, table = injected_selectivity
    r = Lz.rank_by_selectivity(table, "block-bypass:selectivity")
    t = table.set_index("component")
    assert (t.loc[[f"block:{b}" for b in range(5)], "memorization_lost"] == 1).all()  # the facts the docstring states
    assert t.loc[truth, "general_lost"] > t.loc[["block:1", "block:2", "block:3"], "general_lost"].max()
    assert r.component.iloc[0] == "block:2"  # the ranks the README and docs/selectivity.md quote
    assert int(r[r.component == truth]["rank"].iloc[0]) == {"neox": 5, "neo": 4}[org]
    if Lz.recall_at_k(r, truth, 1) == 1:
        pytest.fail(f"{org}: the selectivity score now ranks the injected block first: update the README and this test")
    pytest.xfail(f"{org}: {r.component.iloc[0]} ranks first, {truth} ranks {int(r[r.component == truth]['rank'].iloc[0])}")
