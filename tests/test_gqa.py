"""Grouped-query attention (tiny random Llama and Qwen2: 4 query heads, 2 key/value heads; Qwen2
with q/k/v biases): the bypass and its variants equal an independent computation on the HF
modules, where query head j reads key/value head j // 2, and decoding agrees with and without a
cache."""

import pytest
import torch

from interp.generation import greedy_generate, teacher_forced_logits
from interp.interventions import AttentionBypass, ZeroAblation, query_head_values
from interp.models import n_layers
from reference import HFBypass, attention_modules, hf_greedy, hf_logits, load_hf

ATOL = 1e-5


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def gqa(request, tmp_path_factory):
    from interp.models import load_model
    from interp.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path_factory.mktemp(request.param), request.param, n_layers=3, d_model=32, n_heads=4, n_kv_heads=2,
                             weight_scale=3.0)  # fmt: skip
    bridge, hf = load_model(folder), load_hf(folder)
    assert bridge.cfg.n_heads == 4 and hf.config.num_key_value_heads == 2
    return bridge, hf


@pytest.fixture
def rows():
    return torch.randint(1, 500, (4, 16), generator=torch.Generator().manual_seed(0))


def test_unmodified_bridge_equals_hf(gqa, rows):
    bridge, hf = gqa
    torch.testing.assert_close(teacher_forced_logits(bridge, rows), hf_logits(hf, rows), rtol=0, atol=ATOL)


def test_block_bypass_equals_reference_in_every_block(gqa, rows):
    bridge, hf = gqa
    base = teacher_forced_logits(bridge, rows)
    for layer in range(n_layers(bridge)):
        ours = teacher_forced_logits(bridge, rows, [AttentionBypass(layer)])
        with HFBypass(hf, [layer]):
            torch.testing.assert_close(ours, hf_logits(hf, rows), rtol=0, atol=ATOL)
        assert (ours - base).abs().max() > 1e-3


@pytest.mark.parametrize("heads", [[1], [2], [3], [0, 3], [1, 2]])  # heads of both groups, the second of each pair
def test_head_bypass_equals_reference(gqa, rows, heads):
    bridge, hf = gqa
    ours = teacher_forced_logits(bridge, rows, [AttentionBypass(1, heads=heads)])
    with HFBypass(hf, [1], heads=heads):
        torch.testing.assert_close(ours, hf_logits(hf, rows), rtol=0, atol=ATOL)


def test_all_heads_listed_equals_block_bypass(gqa, rows):
    bridge, _ = gqa
    block = teacher_forced_logits(bridge, rows, [AttentionBypass(2)])
    heads = teacher_forced_logits(bridge, rows, [AttentionBypass(2, heads=range(4))])
    torch.testing.assert_close(block, heads, rtol=0, atol=1e-6)


def test_zero_head_ablation_equals_reference(gqa, rows):
    """Zeroing query head h's z removes its columns of o_proj: reference by zeroing them in HF."""
    bridge, hf = gqa
    ours = teacher_forced_logits(bridge, rows, [ZeroAblation(0, heads=[3])])
    o = attention_modules(hf)[0].o_proj
    saved = o.weight.detach().clone()
    with torch.no_grad():
        o.weight[:, 3 * 8 : 4 * 8] = 0.0
    try:
        torch.testing.assert_close(ours, hf_logits(hf, rows), rtol=0, atol=ATOL)
    finally:
        with torch.no_grad():
            o.weight.copy_(saved)


@pytest.mark.parametrize("intervention", [None, AttentionBypass(1), AttentionBypass(0, heads=[1, 2])], ids=["base", "block", "heads"])
def test_greedy_cached_uncached_and_reference_agree(gqa, rows, intervention):
    bridge, hf = gqa
    prefix, extra = rows[:, :6], [intervention] if intervention else []
    cached = greedy_generate(bridge, prefix, 8, extra, batch_size=2)
    uncached = greedy_generate(bridge, prefix, 8, extra, use_cache=False)
    if intervention is None:
        ref = hf_greedy(hf, prefix, 8)
    else:
        with HFBypass(hf, list(intervention.layers), heads=list(intervention.heads) if intervention.heads else None):
            ref = hf_greedy(hf, prefix, 8)
    assert torch.equal(uncached, ref)
    assert torch.equal(cached, ref)


def test_query_heads_read_their_groups_value_head():
    v = torch.arange(2 * 3 * 2 * 5, dtype=torch.float32).reshape(2, 3, 2, 5)
    out = query_head_values(v, 6)
    for j in range(6):
        assert torch.equal(out[:, :, j], v[:, :, j // 3])
    assert query_head_values(v, 2) is v
    with pytest.raises(Exception, match="evenly"):
        query_head_values(v, 5)


def test_decode_rows_are_sized_by_key_value_heads(gqa):
    """The decode cache holds 2 key/value heads per block here, not 4: twice the rows fit."""
    from interp.memorization import auto_decode_rows

    bridge, _ = gqa
    per_row = 2 * 3 * 2 * 8 * 20 * 4  # keys and values, 3 blocks, 2 kv heads, d_head 8, 20 positions, float32
    assert auto_decode_rows(bridge, 20, 1, budget=100 * per_row) == 100


def test_logit_decomposition_sums_to_the_logit_through_rmsnorm(gqa, rows):
    from interp import attribution as A

    bridge, _ = gqa
    pos, tok = A.suffix_positions_and_tokens(rows, 8)
    terms = A.logit_decomposition(bridge, rows[:, :-1], pos, tok)
    with torch.no_grad():
        logits = bridge(rows[:, :-1])
    torch.testing.assert_close(sum(terms.values()), logits[torch.arange(len(rows))[:, None], pos, tok], atol=2e-5, rtol=0)
    assert {f"L{l}H{h}" for l in range(3) for h in range(4)} <= set(terms)


@torch.no_grad()
def test_dla_matches_hf_reference(gqa, rows):
    """Per query head: z from HF's eager attention weights and the group's values, the head's
    columns of o_proj, divided by the final RMSNorm's scale (no centring), times gain x W_U."""
    from interp import attribution as A
    from reference import _values_and_proj

    bridge, hf = gqa
    pos, tok = A.suffix_positions_and_tokens(rows, 8)
    ours = A.logit_decomposition(bridge, rows[:, :-1], pos, tok)
    store, handles = {}, []
    for layer, mod in enumerate(attention_modules(hf)):
        def hook(module, args, kwargs, output, layer=layer):
            v, proj = _values_and_proj(module, args[0] if args else kwargs["hidden_states"], 4)
            store[layer] = (torch.einsum("bhqk,bkhd->bqhd", output[1], v), proj.weight)

        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    norm = hf.model.norm
    handles.append(norm.register_forward_pre_hook(lambda m, a: store.__setitem__("x", a[0])))
    hf(rows[:, :-1], output_attentions=True)
    for h in handles:
        h.remove()
    b = torch.arange(len(rows))[:, None]
    x = store["x"][b, pos].double()
    s = (x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).sqrt()
    w = norm.weight.double() * hf.get_output_embeddings().weight[tok].double()
    for layer in range(3):
        z, W = store[layer]
        for h in range(4):
            o = z[b, pos][..., h, :].double() @ W[:, h * 8 : (h + 1) * 8].T.double()
            torch.testing.assert_close(ours[f"L{layer}H{h}"].double(), ((o / s) * w).sum(-1), atol=2e-5, rtol=0)


@torch.no_grad()
def test_head_patching_equals_hf_reference(gqa):
    """Denoising patch of query head h (its z from the clean run, all positions) in the corrupted
    run, against the same patch written on the HF modules."""
    from interp import patching as P
    from reference import _values_and_proj

    bridge, hf = gqa
    rows = torch.randint(1, 500, (4, 11), generator=torch.Generator().manual_seed(7))
    rows[:, 6:] = greedy_generate(bridge, rows[:, :6], 5)
    runs = P.prepare_runs(bridge, rows, 6, n_corrupt=2, seed=1)
    table = P.patch(bridge, rows, 6, runs=runs, sites_=["head"], directions=["denoising"], layers=[1])
    mods = attention_modules(hf)

    def z_of(module, args, kwargs, output):
        v, proj = _values_and_proj(module, args[0] if args else kwargs["hidden_states"], 4)
        return torch.einsum("bhqk,bkhd->bqhd", output[1], v), proj

    clean = {}
    handle = mods[1].register_forward_hook(lambda m, a, k, o: clean.__setitem__("z", z_of(m, a, k, o)[0]), with_kwargs=True)
    hf(runs.clean, output_attentions=True)
    handle.remove()
    moved = []
    for head in range(4):
        def patched(module, args, kwargs, output, head=head):
            z, proj = z_of(module, args, kwargs, output)
            z[:, :, head] = clean["z"][:, :, head]
            return (proj(z.reshape(*z.shape[:2], -1)), output[1])

        handle = mods[1].register_forward_hook(patched, with_kwargs=True)
        ref = float(P.suffix_logprob(hf(runs.corrupted, output_attentions=True).logits, runs.target).mean())
        handle.remove()
        row = table[(table.component == f"L1H{head}") & (table.metric == "suffix_logprob")]
        assert float(row.value.iloc[0]) == pytest.approx(ref, abs=1e-4)
        moved.append(abs(ref - runs.corrupted_metrics["suffix_logprob"]))
    assert max(moved) > 1e-3  # the patch does something, so agreement is not the trivial kind


@torch.no_grad()
def test_mean_head_ablation_equals_reference(gqa, rows):
    """Query heads 2 and 3 (one group) set to their mean z over the fitting rows, against the
    same edit written on the HF modules (z from eager weights and the group's values)."""
    from interp.interventions import MeanAblation
    from reference import _values_and_proj

    bridge, hf = gqa
    fit_rows = torch.randint(1, 500, (6, 16), generator=torch.Generator().manual_seed(5))
    ours = teacher_forced_logits(bridge, rows, [MeanAblation.fit(bridge, fit_rows, 1, heads=[2, 3])])
    mod = attention_modules(hf)[1]

    def z_of(module, args, kwargs, output):
        v, proj = _values_and_proj(module, args[0] if args else kwargs["hidden_states"], 4)
        return torch.einsum("bhqk,bkhd->bqhd", output[1], v), proj

    seen = {}
    handle = mod.register_forward_hook(lambda m, a, k, o: seen.__setitem__("z", z_of(m, a, k, o)[0]), with_kwargs=True)
    hf(fit_rows, output_attentions=True)
    handle.remove()
    mean = seen["z"].mean(dim=(0, 1))  # [head d_head]

    def ablate(module, args, kwargs, output):
        z, proj = z_of(module, args, kwargs, output)
        z[:, :, [2, 3]] = mean[[2, 3]]
        return (proj(z.reshape(*z.shape[:2], -1)), output[1])

    handle = mod.register_forward_hook(ablate, with_kwargs=True)
    try:
        ref = hf(rows, output_attentions=True).logits
    finally:
        handle.remove()
    torch.testing.assert_close(ours, ref, rtol=0, atol=ATOL)
    assert (ours - teacher_forced_logits(bridge, rows)).abs().max() > 1e-3


def test_attribution_patching_equals_hf_gradient(gqa):
    """Attribution patching's per-head estimate (denoising: base = corrupted, source = clean) is
    mean_rows sum_{pos, d} (z_clean - z_corr) * dM/dz at the corrupted run; here dM/dz is taken
    through the HF modules, z per query head from the eager weights and the group's values."""
    from interp import attribution as A
    from interp import patching as P
    from reference import _values_and_proj

    bridge, hf = gqa
    rows = torch.randint(1, 500, (4, 11), generator=torch.Generator().manual_seed(7))
    rows[:, 6:] = greedy_generate(bridge, rows[:, :6], 5)
    runs = P.prepare_runs(bridge, rows, 6, n_corrupt=2, seed=1)
    table = A.attribution_patching(bridge, runs, directions=["denoising"])
    mods = attention_modules(hf)
    zs, deltas, handles = {}, {}, []
    for layer, mod in enumerate(mods):
        def hook(module, args, kwargs, output, layer=layer):
            v, proj = _values_and_proj(module, args[0] if args else kwargs["hidden_states"], 4)
            z = torch.einsum("bhqk,bkhd->bqhd", output[1], v)
            zs[layer] = z.detach()
            if layer in deltas:
                z = z + deltas[layer]
            return (proj(z.reshape(*z.shape[:2], -1)), output[1])

        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            hf(runs.clean, output_attentions=True)
        z_clean = dict(zs)
        for layer in range(len(mods)):
            deltas[layer] = torch.zeros_like(z_clean[layer], requires_grad=True)
        metric = P.suffix_logprob(hf(runs.corrupted, output_attentions=True).logits, runs.target).sum()
        grads = torch.autograd.grad(metric, [deltas[l] for l in range(len(mods))])
    finally:
        for h in handles:
            h.remove()
    for layer in range(len(mods)):
        est = ((z_clean[layer] - zs[layer]) * grads[layer]).sum(dim=(0, 1, 3)) / len(rows)
        for head in range(4):
            got = table[(table["layer"] == layer) & (table["head"] == head)]["estimate"].iloc[0]
            assert float(got) == pytest.approx(float(est[head]), abs=1e-4, rel=1e-4)
    assert table.estimate.abs().max() > 1e-3
