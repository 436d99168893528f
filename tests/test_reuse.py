"""Reuse below the intervention (``interp.reuse``): running only the blocks from the earliest
hooked one, on the unmodified residual, gives the full forward's numbers bit for bit in every
family (GPT-Neo's local layers and grouped-query models included), with and without a KV cache;
the sweeps built on it give the numbers they give without it; the reference per-head bypass used
by analyses/speed.py is itself right with a KV cache."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch

from interp import reuse
from interp.generation import cached_step, greedy_generate
from interp.interventions import AttentionBypass, MeanAblation, RowGroups, ZeroAblation, apply
from interp.localize import head_bypass_sweep
from interp.memorization import evaluate, evaluate_many, sweep
from interp.models import load_model
from interp.tiny import make_tiny_model
from reference import HFBypass, hf_greedy, load_hf

SHAPES = {
    "neox": dict(n_layers=3, d_model=32, n_heads=4, n_ctx=96),
    "neo": dict(n_layers=4, d_model=32, n_heads=4, n_ctx=96, window=5),  # global, local, global, local
    "llama": dict(n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, weight_scale=3.0),
    "qwen2": dict(n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, weight_scale=3.0),
}
PREFIX, SUFFIX = 6, 8


@pytest.fixture(scope="module", params=list(SHAPES))
def family(request, tmp_path_factory):
    folder = make_tiny_model(tmp_path_factory.mktemp(request.param), request.param, seed=1, **SHAPES[request.param])
    return request.param, load_model(folder), folder


@pytest.fixture
def rows():
    return torch.randint(1, 500, (5, 20), generator=torch.Generator().manual_seed(0))


def mixed(model, n: int = 8) -> np.ndarray:
    """Rows whose suffix is the model's own greedy continuation (memorized by construction), the
    last three with a random suffix."""
    rows = torch.randint(1, 500, (n, PREFIX + SUFFIX), generator=torch.Generator().manual_seed(3))
    rows[:, PREFIX:] = greedy_generate(model, rows[:, :PREFIX], SUFFIX)
    rows[-3:, PREFIX:] = torch.randint(1, 500, (3, SUFFIX), generator=torch.Generator().manual_seed(4))
    return rows.numpy()


def test_earliest_block(family, rows):
    _, model, _ = family
    L = model.cfg.n_layers
    assert reuse.earliest_block(model, []) == L
    assert reuse.earliest_block(model, [AttentionBypass(2)]) == 2
    assert reuse.earliest_block(model, [AttentionBypass(2), ZeroAblation(1, heads=[0])]) == 1
    assert reuse.earliest_block(model, [MeanAblation.fit(model, rows, [2, 1])]) == 1
    assert reuse.earliest_block(model, [RowGroups((((0,), (AttentionBypass(2),)), ((1,), (AttentionBypass(1),))))]) == 1

    class Embed:  # a hook outside the blocks: nothing can be reused
        label = "embed"

        def hooks(self, model):
            return [("hook_embed", lambda x, hook: x)]

    assert reuse.earliest_block(model, [Embed(), AttentionBypass(2)]) == 0


def test_forward_from_equals_the_full_forward_bit_for_bit(family, rows):
    """At every block, under the bypass of that block and under one head's bypass: the logits
    (every position, and the suffix only), and the next decode step from the KV cache whose lower
    layers come from the unmodified pass."""
    arch, model, _ = family
    assert reuse.reusable(model)
    L = model.cfg.n_layers
    x, new = rows[:, :-1], rows[:, -1:]
    with reuse.capture_resid(model, range(1, L)) as resid:
        base, base_cache = model(x, return_type="logits_and_cache", use_cache=True)
    lower = reuse.lower_layers(base_cache)
    assert lower is not None and len(resid) == L - 1
    for block in range(1, L):
        for iv in (AttentionBypass(block), AttentionBypass(block, heads=[1])):
            with apply(model, iv):
                full, full_cache = model(x, return_type="logits_and_cache", use_cache=True)
                part, part_cache = reuse.forward_from(model, resid[block], block, return_type="logits_and_cache", use_cache=True)
                assert torch.equal(full, part), (arch, block, iv.label)
                assert (full - base).abs().max() > 1e-4  # the hook fired in the cut stack
                assert torch.equal(model(x, logits_to_keep=7), reuse.forward_from(model, resid[block], block, logits_to_keep=7))
                assert reuse.fill_lower_cache(part_cache, lower, block)
                assert torch.equal(cached_step(model, new, full_cache)[0], cached_step(model, new, part_cache)[0])
    assert len(model.blocks) == L and torch.equal(model(x), base)  # the stack is whole again


def test_forward_from_restores_the_stack_after_an_error(family, rows):
    _, model, _ = family
    before = list(reuse._stack(model)[0].children())
    with pytest.raises(Exception):
        reuse.forward_from(model, torch.zeros(2, 3, 5), 1)  # wrong width
    assert list(reuse._stack(model)[0].children()) == before


def test_sweeps_give_the_same_numbers_with_and_without_reuse(family, monkeypatch):
    """The block sweep and the head sweep (both through evaluate_many), against the same calls
    with reuse switched off, and the head sweep against evaluate with the full decode."""
    _, model, _ = family
    rows = mixed(model)
    got_blocks = sweep(model, rows, PREFIX, batch_size=4, progress=False)
    got_heads = head_bypass_sweep(model, rows, PREFIX, batch_size=4)
    with monkeypatch.context() as m:
        m.setattr(reuse, "reusable", lambda model: False)
        want_blocks = sweep(model, rows, PREFIX, batch_size=4, progress=False)
        want_heads = head_bypass_sweep(model, rows, PREFIX, batch_size=4)
    pd.testing.assert_frame_equal(got_blocks, want_blocks, check_exact=True)
    pd.testing.assert_frame_equal(got_heads, want_heads, check_exact=True)
    assert 0 < got_heads.exact_match.mean() < 1  # decoded and kept rows both occur
    for (layer, head) in [(1, 0), (model.cfg.n_layers - 1, 3)]:
        full = evaluate(model, rows, PREFIX, [AttentionBypass(layer, heads=[head])], strategy="generate")
        ours = got_heads[got_heads.config == f"L{layer}H{head}"].reset_index(drop=True)
        for col in ("exact_match", "token_accuracy", "match_length"):
            np.testing.assert_array_equal(ours[col].to_numpy(), full[col].to_numpy())
        np.testing.assert_allclose(ours.completion_entropy, full.completion_entropy, rtol=1e-5, atol=1e-6)


def test_configs_without_an_unmodified_one_run_in_full(family):
    """Without the unmodified configuration nothing is reused; the numbers are evaluate's."""
    _, model, _ = family
    rows = mixed(model)
    assert reuse.earliest_block(model, [AttentionBypass(1)]) == 1
    got = evaluate_many(model, rows, PREFIX, {"a": [AttentionBypass(1)], "b": [AttentionBypass(2)]}, batch_size=4)
    for name, layer in (("a", 1), ("b", 2)):
        want = evaluate(model, rows, PREFIX, [AttentionBypass(layer)], strategy="generate")
        np.testing.assert_array_equal(got[name].exact_match.to_numpy(), want.exact_match.to_numpy())


def test_mixed_layer_types_are_not_cut(tmp_path):
    """Qwen2 with sliding-window layers below full ones reads each layer's mask by its position
    in the list, so its stack is not cut; the sweep still gives evaluate's numbers."""
    folder = make_tiny_model(tmp_path / "q", "qwen2", seed=1, **SHAPES["qwen2"])
    config = json.loads((folder / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=4, layer_types=["full_attention", "sliding_attention", "full_attention"])
    (folder / "config.json").write_text(json.dumps(config))
    model = load_model(folder)
    types = model.original_model.config.layer_types
    assert len(set(types)) == 2, types
    assert not reuse.reusable(model)
    rows = mixed(model)
    got = sweep(model, rows, PREFIX, batch_size=4, progress=False)
    for layer in range(model.cfg.n_layers):
        want = evaluate(model, rows, PREFIX, [AttentionBypass(layer)], strategy="generate")
        np.testing.assert_array_equal(got[got.config == f"block:{layer}"].exact_match.to_numpy(), want.exact_match.to_numpy())


def test_sliding_window_caches_are_not_shared(tmp_path):
    """Every layer sliding (a uniform stack, so it is cut): its cache layers are not plain dynamic
    ones, so nothing is shared from the unmodified pass and contexts of different lengths are not
    padded together; the sweep and the benchmark scores are still the per-configuration ones."""
    from interp.benchmarks import _pads_safely, loglikelihoods, loglikelihoods_many

    folder = make_tiny_model(tmp_path / "q", "qwen2", seed=1, **SHAPES["qwen2"])
    config = json.loads((folder / "config.json").read_text())
    config.update(use_sliding_window=True, sliding_window=4, layer_types=["sliding_attention"] * 3)
    (folder / "config.json").write_text(json.dumps(config))
    model = load_model(folder)
    assert reuse.reusable(model) and not _pads_safely(model)
    rows = mixed(model)
    _, cache = model(torch.as_tensor(rows)[:, :-1], return_type="logits_and_cache", use_cache=True)
    assert reuse.lower_layers(cache) is None  # the case under test: nothing can be shared
    got = sweep(model, rows, PREFIX, batch_size=4, progress=False)
    for layer in (1, 2):
        want = evaluate(model, rows, PREFIX, [AttentionBypass(layer)], strategy="generate")
        np.testing.assert_array_equal(got[got.config == f"block:{layer}"].exact_match.to_numpy(), want.exact_match.to_numpy())
    g = torch.Generator().manual_seed(6)
    requests = [(torch.randint(1, 500, (n,), generator=g).tolist(), torch.randint(1, 500, (k,), generator=g).tolist())
                for n in (3, 7, 7) for k in (1, 4)]  # fmt: skip
    configs = {"baseline": [], "block:1": [AttentionBypass(1)]}
    many = loglikelihoods_many(model, requests, configs, batch_size=16, progress=False)
    for name, ivs in configs.items():
        want_scores, want_greedy = loglikelihoods(model, requests, ivs, batch_size=16, progress=False)
        np.testing.assert_allclose(many[name][0], want_scores, rtol=1e-5, atol=1e-4, err_msg=name)
        np.testing.assert_array_equal(many[name][1], want_greedy, err_msg=name)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_reference_head_bypass_is_right_with_a_kv_cache(family):
    """The HF reference for one head (analyses/speed.py's per-head baseline): HF ``generate``
    with its KV cache gives the tokens of decoding by full recomputation, and both equal ours."""
    arch, model, folder = family
    hf = load_hf(folder)
    hf.generation_config.eos_token_id = None
    prefix = torch.randint(1, 500, (4, PREFIX), generator=torch.Generator().manual_seed(9))
    for heads in ([1], [0, 3]):
        with HFBypass(hf, [1], heads=heads):
            cached = hf.generate(prefix, attention_mask=torch.ones_like(prefix), max_new_tokens=SUFFIX, min_new_tokens=SUFFIX,
                                 do_sample=False, num_beams=1, pad_token_id=0)[:, PREFIX:]  # fmt: skip
            uncached = hf_greedy(hf, prefix, SUFFIX)
        ours = greedy_generate(model, prefix, SUFFIX, [AttentionBypass(1, heads=heads)])
        assert torch.equal(cached, uncached) and torch.equal(ours, uncached), (arch, heads)


def test_loglikelihoods_many_equals_one_config_at_a_time(family):
    """Shared contexts (several choices, a repeated request, one-token continuations, contexts of
    several lengths), a request the context window cuts, and configurations with and without
    reuse: every score within 1e-4 of ``loglikelihoods`` run per configuration, the greedy flags equal."""
    from interp.benchmarks import loglikelihoods, loglikelihoods_many

    _, model, _ = family
    L, n_ctx = model.cfg.n_layers, model.cfg.n_ctx
    g = torch.Generator().manual_seed(5)

    def rnd(n):
        return torch.randint(1, 500, (n,), generator=g).tolist()

    contexts = [rnd(5), rnd(5), rnd(9), rnd(1)]
    requests = [(c, rnd(k)) for c in contexts for k in (1, 3, 4)]
    requests += [requests[1], (rnd(n_ctx), rnd(3))]  # a repeated request; one the window cuts
    configs = {"a": [AttentionBypass(L - 1, heads=[0])], "baseline": [], "block:1": [AttentionBypass(1)],
               "zero:0": [ZeroAblation(0)]}  # fmt: skip
    subsets = (configs, {k: v for k, v in configs.items() if k != "baseline"})  # with reuse, and without
    # batch 4: one context per batch; batch 16: contexts of lengths 9, 5, 5 and 1 left-padded together
    for subset, batch_size in itertools.product(subsets, (4, 16)):
        got = loglikelihoods_many(model, requests, subset, batch_size=batch_size, progress=False)
        for name, ivs in subset.items():
            want_scores, want_greedy = loglikelihoods(model, requests, ivs, batch_size=4, progress=False)
            np.testing.assert_allclose(got[name][0], want_scores, rtol=1e-5, atol=1e-4, err_msg=name)
            np.testing.assert_array_equal(got[name][1], want_greedy, err_msg=name)
