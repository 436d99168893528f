"""Activation patching: corruption policy, agreement with transformer_lens.patching, and an
independent reference computed from the HF modules (no TransformerLens)."""

import pytest
import torch
import transformer_lens.patching as tlp

from interp import patching as P
from interp.generation import greedy_generate
from reference import _values_and_proj, attention_modules, hf_logits

torch.set_num_threads(1)  # the tiny models are far faster single-threaded on a shared CPU

PREFIX, SUFFIX = 6, 5


@pytest.fixture(scope="module")
def setup(bridge):
    rows = torch.randint(1, 500, (4, PREFIX + SUFFIX), generator=torch.Generator().manual_seed(7))
    rows[:, PREFIX:] = greedy_generate(bridge, rows[:, :PREFIX], SUFFIX)  # memorized by construction
    runs = P.prepare_runs(bridge, rows, PREFIX, n_corrupt=2, seed=1)
    return rows, runs


@pytest.fixture(scope="module")
def patched(bridge, setup):
    rows, runs = setup
    return P.patch(bridge, rows, PREFIX, runs=runs, batch_size=40)


def test_corruption_policy_is_seeded_and_changes_exactly_k_prefix_tokens():
    rows = torch.randint(0, 50, (20, 12), generator=torch.Generator().manual_seed(0))
    a = P.corrupt_prefix(rows, 8, 3, 50, seed=4)
    assert torch.equal(a, P.corrupt_prefix(rows, 8, 3, 50, seed=4))
    assert not torch.equal(a, P.corrupt_prefix(rows, 8, 3, 50, seed=5))
    assert ((a != rows).sum(1) == 3).all()
    assert torch.equal(a[:, 8:], rows[:, 8:]) and a.min() >= 0 and a.max() < 50
    with pytest.raises(ValueError):
        P.corrupt_prefix(rows, 8, 9, 50)


def test_table_is_tidy_and_complete(bridge, patched):
    L, H, n_pos = bridge.cfg.n_layers, bridge.cfg.n_heads, PREFIX + SUFFIX - 1
    per_direction_metric = 3 * L * n_pos + L * H
    assert len(patched) == 2 * 2 * per_direction_metric
    heads = patched[patched.site == "head"]
    assert heads.position.isna().all() and set(heads.component) == {f"L{l}H{h}" for l in range(L) for h in range(H)}
    assert patched[patched.site != "head"]["head"].isna().all()


def test_uncorrupted_positions_of_the_embedding_do_nothing(setup, patched):
    """resid_pre of block 0 at a position where clean and corrupted tokens agree is identical in
    both runs, so patching it leaves the base run unchanged (normalized effect exactly 0)."""
    rows, runs = setup
    same = (runs.clean == runs.corrupted).all(0).nonzero().squeeze(1).tolist()
    sel = patched[(patched.site == "resid_pre") & (patched.layer == 0) & patched.position.isin(same)]
    assert len(sel) > 0
    torch.testing.assert_close(torch.tensor(sel.normalized.to_numpy()), torch.zeros(len(sel), dtype=torch.float64), atol=1e-6, rtol=0)


def test_chunking_rows_and_cells_changes_nothing(bridge, setup, patched):
    rows, runs = setup
    small = P.prepare_runs(bridge, rows, PREFIX, n_corrupt=2, seed=1, batch_size=3)  # rows split 3 + 1
    assert small.clean_metrics == pytest.approx(runs.clean_metrics) and torch.equal(small.target.foil, runs.target.foil)
    chunked = P.patch(bridge, rows, PREFIX, runs=small, sites_=["mlp_out", "head"], directions=["noising"], batch_size=3)
    ref = patched[patched.site.isin(["head", "mlp_out"]) & (patched.direction == "noising")]
    torch.testing.assert_close(torch.tensor(chunked["value"].to_numpy()), torch.tensor(ref["value"].to_numpy()), atol=1e-4, rtol=1e-6)


def test_foil_is_the_top_non_true_token():
    """``make_target`` on hand-built logits: at each suffix position the foil is the highest
    logit other than the true token's, even where the true token itself is the highest."""
    rows = torch.tensor([[9, 8, 1, 2, 3], [9, 8, 4, 5, 6]])  # prefix 2, suffix 3
    logits = torch.zeros(2, 4, 10)
    logits[:, 1:, 7] = 5.0  # runner-up everywhere
    logits[0, 1, 1] = logits[0, 3, 3] = logits[1, 2, 5] = 9.0  # true token on top at these positions
    logits[0, 2, 0] = logits[1, 1, 0] = logits[1, 3, 0] = 6.0  # a non-true token beats the runner-up here
    target = P.make_target(logits, rows, 2)
    assert torch.equal(target.suffix, rows[:, 2:])
    assert torch.equal(target.foil, torch.tensor([[7, 0, 7], [0, 7, 0]]))
    logits[0, 2, 2] = 2.0  # true token at (row 0, suffix 1): logit_diff = mean over positions
    assert P.logit_diff(logits, target).tolist() == pytest.approx([(4 + (2 - 6) + 4) / 3, (-6 + 4 - 6) / 3])


def test_logit_diff_matches_hf_reference(hf, setup):
    """The foils and the unpatched ``logit_diff`` means, recomputed by hand from HF logits: the
    foil at each suffix position is the corrupted run's top token other than the true suffix
    token (never the true token), and ``logit_diff`` is the per-sequence mean over suffix
    positions of logit(true) - logit(foil), averaged over sequences."""
    rows, runs = setup
    suffix = rows[:, PREFIX:]
    T = suffix.shape[1]
    clean = hf_logits(hf, runs.clean)[:, PREFIX - 1 : PREFIX - 1 + T].double()
    corr = hf_logits(hf, runs.corrupted)[:, PREFIX - 1 : PREFIX - 1 + T].double()
    foil = runs.target.foil
    assert foil.shape == suffix.shape and not (foil == suffix).any()
    # the foil is the best non-true token of the corrupted run (compared by logit: robust to near-ties)
    best_other = torch.tensor([[float(torch.cat([corr[b, j, :t], corr[b, j, t + 1 :]]).max()) for j, t in enumerate(suffix[b].tolist())]
                               for b in range(len(rows))], dtype=torch.float64)  # fmt: skip
    torch.testing.assert_close(corr.gather(-1, foil[..., None]).squeeze(-1), best_other, atol=1e-5, rtol=0)
    assert (corr.argmax(-1) == suffix).any()  # so excluding the true token matters on these rows
    for run, lg in (("clean", clean), ("corrupted", corr)):
        true_l = lg.gather(-1, suffix[..., None]).squeeze(-1)
        foil_l = lg.gather(-1, foil[..., None]).squeeze(-1)
        per_seq = [sum(float(true_l[b, j] - foil_l[b, j]) for j in range(T)) / T for b in range(len(rows))]
        expected = sum(per_seq) / len(per_seq)
        got = (runs.clean_metrics if run == "clean" else runs.corrupted_metrics)["logit_diff"]
        assert got == pytest.approx(expected, abs=1e-5), run


def test_gap_is_positive_for_memorized_rows(setup):
    _, runs = setup
    assert runs.clean_metrics["suffix_logprob"] > runs.corrupted_metrics["suffix_logprob"]


TL_FUNCS = {
    "resid_pre": (tlp.get_act_patch_resid_pre, ["layer", "position"]),
    "attn_out": (tlp.get_act_patch_attn_out, ["layer", "position"]),
    "mlp_out": (tlp.get_act_patch_mlp_out, ["layer", "position"]),
    "head": (tlp.get_act_patch_attn_head_out_all_pos, ["layer", "head"]),
}


@pytest.mark.parametrize("direction", P.DIRECTIONS)
def test_agrees_with_transformer_lens_patching(bridge, setup, patched, direction):
    _, runs = setup
    base, src = (runs.corrupted, runs.clean) if direction == "denoising" else (runs.clean, runs.corrupted)
    _, cache = bridge.run_with_cache(src)
    metrics = {name: (lambda lg, fn=fn: fn(lg, runs.target)) for name, fn in P.METRIC_FNS.items()}
    for site, (tl_fn, order) in TL_FUNCS.items():
        result = tl_fn(bridge, base, cache, metrics, reduce="mean")  # one sweep, every metric
        for i, metric in enumerate(result.metric_names):
            theirs = result.values[i]
            ours = patched[(patched.site == site) & (patched.direction == direction) & (patched.metric == metric)]
            ours = torch.tensor(ours.sort_values(order)["value"].to_numpy(), dtype=torch.float32).view(theirs.shape)
            torch.testing.assert_close(ours, theirs.float(), atol=1e-4, rtol=1e-5, msg=f"{site} {metric}")


# ---------------------------------------------------------------- independent HF reference


def _layers(hf):
    return hf.gpt_neox.layers if hf.config.model_type == "gpt_neox" else hf.transformer.h


def _n_heads(hf):
    return getattr(hf.config, "num_attention_heads", None) or hf.config.num_heads


def _z_from_module(module, args, kwargs, output, n_heads):
    x = args[0] if args else kwargs["hidden_states"]
    v, proj = _values_and_proj(module, x, n_heads)
    return torch.einsum("bhqk,bkhd->bqhd", output[1], v), proj


@torch.no_grad()
def hf_suffix_logprob(hf, tokens, suffix, *, layer=None, head=None, z_src=None, pos=None, resid_src=None):
    """Mean suffix log-prob from HF, optionally with head ``head``'s z or the residual stream
    entering block ``layer`` at ``pos`` replaced by the given source activations."""
    handles, store = [], {}
    n_heads = _n_heads(hf)
    if z_src is not None or head is not None:
        def attn_hook(module, args, kwargs, output):
            z, proj = _z_from_module(module, args, kwargs, output, n_heads)
            store["z"] = z
            if z_src is None:
                return output
            z = z.clone()
            z[:, :, head] = z_src[:, :, head]
            return (proj(z.reshape(*z.shape[:2], -1)), output[1])

        handles.append(attention_modules(hf)[layer].register_forward_hook(attn_hook, with_kwargs=True))
    if pos is not None:
        def pre_hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            store["resid"] = h.clone()
            if resid_src is None:
                return None
            h = h.clone()
            h[:, pos] = resid_src[:, pos]
            return ((h, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": h})

        handles.append(_layers(hf)[layer].register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        logits = hf(tokens, output_attentions=True).logits
    finally:
        for h in handles:
            h.remove()
    T = suffix.shape[1]
    logp = torch.log_softmax(logits[:, PREFIX - 1 : PREFIX - 1 + T].double(), -1)
    return float(logp.gather(-1, suffix[..., None]).squeeze(-1).sum(-1).mean()), store


def test_head_and_residual_patches_match_hf_reference(bridge, hf, setup, patched):
    rows, runs = setup
    suffix = rows[:, PREFIX:]
    last = int(bridge.cfg.n_layers) - 1
    # head patch, denoising: clean z of head (last, 1) into the corrupted run
    _, clean_store = hf_suffix_logprob(hf, runs.clean, suffix, layer=last, head=1)
    ref, _ = hf_suffix_logprob(hf, runs.corrupted, suffix, layer=last, head=1, z_src=clean_store["z"])
    comp = f"L{last}H1"
    ours = patched.query("site == 'head' and direction == 'denoising' and metric == 'suffix_logprob' and component == @comp")
    assert ours["value"].item() == pytest.approx(ref, abs=1e-4)
    # residual patch, noising: corrupted residual entering block 1 at position 2 into the clean run
    _, corr_store = hf_suffix_logprob(hf, runs.corrupted, suffix, layer=1, pos=2)
    ref, _ = hf_suffix_logprob(hf, runs.clean, suffix, layer=1, pos=2, resid_src=corr_store["resid"])
    ours = patched.query("site == 'resid_pre' and direction == 'noising' and metric == 'suffix_logprob' and layer == 1 and position == 2")
    assert ours["value"].item() == pytest.approx(ref, abs=1e-4)
    # unpatched endpoints
    clean, _ = hf_suffix_logprob(hf, runs.clean, suffix)
    assert runs.clean_metrics["suffix_logprob"] == pytest.approx(clean, abs=1e-4)


@pytest.mark.parametrize("direction", P.DIRECTIONS)
def test_normalized_effect_matches_documented_formula_on_hf_reference(bridge, hf, setup, patched, direction):
    """``normalized`` of cells with a clearly nonzero effect equals the module docstring's
    formula applied to HF reference values of suffix log-prob (patched, clean, corrupted):
    denoising ``(patched - corrupted) / (clean - corrupted)``, noising
    ``(clean - patched) / (clean - corrupted)``; cells: every head of the last layer and the
    residual stream entering block 1 at each prefix position."""
    rows, runs = setup
    suffix = rows[:, PREFIX:]
    base, src = (runs.corrupted, runs.clean) if direction == "denoising" else (runs.clean, runs.corrupted)
    clean, _ = hf_suffix_logprob(hf, runs.clean, suffix)
    corr, _ = hf_suffix_logprob(hf, runs.corrupted, suffix)
    gap = clean - corr
    assert gap > 0.05  # the formula's denominator, comfortably away from 0
    mine = patched[(patched.direction == direction) & (patched.metric == "suffix_logprob")]
    assert ((mine["clean"] - clean).abs() < 1e-4).all() and ((mine["corrupted"] - corr).abs() < 1e-4).all()
    last = int(bridge.cfg.n_layers) - 1
    cells = []  # (row of ours, HF patched value)
    for head in range(int(bridge.cfg.n_heads)):
        _, src_store = hf_suffix_logprob(hf, src, suffix, layer=last, head=head)
        value, _ = hf_suffix_logprob(hf, base, suffix, layer=last, head=head, z_src=src_store["z"])
        cells.append((mine[(mine.site == "head") & (mine.component == f"L{last}H{head}")], value))
    for pos in range(PREFIX):
        _, src_store = hf_suffix_logprob(hf, src, suffix, layer=1, pos=pos)
        value, _ = hf_suffix_logprob(hf, base, suffix, layer=1, pos=pos, resid_src=src_store["resid"])
        cells.append((mine[(mine.site == "resid_pre") & (mine.layer == 1) & (mine.position == pos)], value))
    tol = 5e-5 / gap  # HF and the bridge agree to ~1e-6 nats here
    n_nonzero = 0
    for ours, value in cells:
        expected = (value - corr) / gap if direction == "denoising" else (clean - value) / gap
        assert ours["normalized"].item() == pytest.approx(expected, abs=tol), ours.component.item()
        n_nonzero += abs(expected) > 10 * tol
    assert n_nonzero >= 5  # a sign or orientation error cannot hide behind zero effects
