"""Recall@k, MRR and AUROC of a known component, against hand-computed cases with ties, and
random ranking's expectation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from interp.localize.truth_metrics import bootstrap_mean, chance_levels, truth_metrics


def test_clear_winner():
    m = truth_metrics({"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0}, "a", ks=(1, 3))
    assert m == {"recall@1": 1.0, "recall@3": 1.0, "mrr": 1.0, "auroc": 1.0}


def test_truth_in_last_place():
    m = truth_metrics({"a": 3.0, "b": 2.0, "c": 1.0, "d": 0.0}, "d", ks=(1, 3))
    assert m == {"recall@1": 0.0, "recall@3": 0.0, "mrr": 0.25, "auroc": 0.0}


def test_ties_by_hand():
    # one component above; the truth tied with two others (ranks 2, 3, 4 equally likely); one below
    s = {"x": 5.0, "t": 1.0, "u": 1.0, "v": 1.0, "w": 0.0}
    m = truth_metrics(s, "t", ks=(1, 2, 3))
    assert m["recall@1"] == 0.0
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 4) / 3)
    assert m["auroc"] == pytest.approx((1 + 0.5 * 2) / 4)  # beats w, half of u and v


def test_ties_equal_the_average_over_every_tie_break():
    """The closed forms against brute force: average the metrics over all orders of the ties."""
    s = {"a": 2.0, "b": 1.0, "c": 1.0, "t": 1.0, "d": 0.0, "e": 0.0}
    names = list(s)
    results = []
    for perm in itertools.permutations(range(len(names))):
        # a strict order that respects the scores: sort by (score, permutation position)
        order = sorted(names, key=lambda n: (-s[n], perm[names.index(n)]))
        r = order.index("t") + 1
        results.append((r <= 1, r <= 3, 1 / r, sum(s[o] < s["t"] or order.index(o) > order.index("t") for o in names if o != "t") / 5))
    want = np.mean(np.asarray(results, dtype=float), axis=0)
    m = truth_metrics(s, "t", ks=(1, 3))
    assert [m["recall@1"], m["recall@3"], m["mrr"], m["auroc"]] == pytest.approx(list(want))


def test_all_equal_scores_give_the_chance_levels():
    n = 24
    s = {f"L{i // 4}H{i % 4}": 0.0 for i in range(n)}
    assert truth_metrics(s, "L2H1") == pytest.approx(chance_levels(n))
    assert chance_levels(n)["recall@1"] == 1 / 24 and chance_levels(n)["auroc"] == 0.5


def test_random_scores_average_to_chance():
    rng = np.random.default_rng(0)
    n, trials = 6, 4000
    got = np.mean([list(truth_metrics({str(i): float(v) for i, v in enumerate(rng.random(n))}, "0").values()) for _ in range(trials)], axis=0)
    want = list(chance_levels(n).values())
    assert got == pytest.approx(want, abs=0.03)


def test_bad_input():
    with pytest.raises(ValueError, match="no score"):
        truth_metrics({"a": 1.0}, "b")
    with pytest.raises(ValueError, match="finite"):
        truth_metrics({"a": float("nan"), "b": 1.0}, "b")


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_organisms():
    mean, lo, hi = bootstrap_mean([0.0, 1.0, 1.0, 0.0, 1.0], seed=1)
    assert lo <= mean <= hi and mean == 0.6
    _, lo2, hi2 = bootstrap_mean([0.0, 1.0, 1.0, 0.0, 1.0] * 20, seed=1)
    assert hi2 - lo2 < hi - lo
    assert bootstrap_mean([0.5]) == (0.5, 0.5, 0.5)


# ---------------------------------------------------------------- removal scores against the HF modules


def test_removal_scores_against_a_direct_bypass_on_the_hf_modules(tiny_dir):
    import torch
    from reference import HFBypass, load_hf

    from interp.localize import removal_scores
    from interp.models import load_model

    model, hf = load_model(tiny_dir), load_hf(tiny_dir)
    g = torch.Generator().manual_seed(3)
    rows = torch.randint(1, 500, (6, 24), generator=g).numpy()
    held = torch.randint(1, 500, (3, 20), generator=g).numpy()
    n_secret = [1, 3, 5, 2, 8, 4]
    prefix = 16
    comps = ["block:0", "block:1", "L0H1", "L1H3"]
    got = removal_scores(model, rows, n_secret, prefix, held, comps).set_index("component")

    def direct(layers, heads):
        with torch.no_grad(), HFBypass(hf, layers, heads):
            lr = torch.log_softmax(hf(torch.from_numpy(rows)).logits.double(), -1)
            lh = torch.log_softmax(hf(torch.from_numpy(held)).logits.double(), -1)
        x = torch.from_numpy(rows)
        tok = -lr[:, prefix - 1 : -1].gather(-1, x[:, prefix:, None])[..., 0]
        s = np.mean([float(tok[i, :k].mean()) for i, k in enumerate(n_secret)])
        h = float((-lh[:, :-1].gather(-1, torch.from_numpy(held)[:, 1:, None])[..., 0]).mean())
        return s, h

    s0, h0 = direct([], None)
    for comp, (layers, heads) in {"block:0": ([0], None), "block:1": ([1], None), "L0H1": ([0], [1]), "L1H3": ([1], [3])}.items():
        s, h = direct(layers, heads)
        assert got.loc[comp, "secret_nll_increase"] == pytest.approx(s - s0, abs=2e-4)
        assert got.loc[comp, "heldout_nll_increase"] == pytest.approx(h - h0, abs=2e-4)
        assert got.loc[comp, "score"] == pytest.approx((s - s0) - (h - h0), abs=4e-4)
