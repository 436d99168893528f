"""Reference tests: the hook-based bypass equals an independent computation from HF modules."""

import pytest
import torch

from interp import sites
from interp.errors import InputError
from interp.generation import greedy_generate, teacher_forced_logits
from interp.interventions import AttentionBypass, MeanAblation, ZeroAblation, apply, hooks_for
from interp.models import n_layers
from reference import HFBypass, hf_greedy, hf_logits

ATOL = 2e-5


def test_bypass_equals_reference_for_every_block(bridge, hf, rows):
    for layer in range(n_layers(bridge)):
        ours = teacher_forced_logits(bridge, rows, [AttentionBypass(layer)])
        with HFBypass(hf, [layer]):
            ref = hf_logits(hf, rows)
        torch.testing.assert_close(ours, ref, rtol=0, atol=ATOL)
        assert (ours - teacher_forced_logits(bridge, rows)).abs().max() > 1e-3  # it changes something


def test_multi_block_bypass_equals_reference(bridge, hf, rows):
    layers = [0, n_layers(bridge) - 1]
    ours = teacher_forced_logits(bridge, rows, [AttentionBypass(layers)])
    with HFBypass(hf, layers):
        torch.testing.assert_close(ours, hf_logits(hf, rows), rtol=0, atol=ATOL)


@pytest.mark.parametrize("heads", [[0], [1, 3]])
def test_head_bypass_equals_reference(bridge, hf, rows, heads):
    ours = teacher_forced_logits(bridge, rows, [AttentionBypass(1, heads=heads)])
    with HFBypass(hf, [1], heads=heads):
        torch.testing.assert_close(ours, hf_logits(hf, rows), rtol=0, atol=ATOL)


def test_all_heads_listed_equals_block_bypass(bridge, rows):
    block = teacher_forced_logits(bridge, rows, [AttentionBypass(0)])
    heads = teacher_forced_logits(bridge, rows, [AttentionBypass(0, heads=range(bridge.cfg.n_heads))])
    torch.testing.assert_close(block, heads, rtol=0, atol=1e-6)


def test_first_position_is_unchanged(bridge, rows):
    """Token 0 attends only to itself anyway, so the bypass cannot change its logits."""
    base = teacher_forced_logits(bridge, rows)
    byp = teacher_forced_logits(bridge, rows, [AttentionBypass(list(range(n_layers(bridge))))])
    torch.testing.assert_close(base[:, 0], byp[:, 0], rtol=0, atol=1e-5)


def test_hooks_are_removed_after_the_context(bridge, rows):
    base = teacher_forced_logits(bridge, rows)
    with apply(bridge, AttentionBypass(0)):
        pass
    torch.testing.assert_close(teacher_forced_logits(bridge, rows), base, rtol=0, atol=0)


def test_composition_is_concatenation(bridge, rows):
    a, b = AttentionBypass(0), ZeroAblation(1, heads=[2])
    assert len(hooks_for(bridge, [a, b])) == len(a.hooks(bridge)) + len(b.hooks(bridge))
    both = teacher_forced_logits(bridge, rows, [a, b])
    only_a = teacher_forced_logits(bridge, rows, [a])
    assert (both - only_a).abs().max() > 1e-4


def test_greedy_generation_cached_uncached_and_reference_agree(bridge, hf, rows):
    prefix = rows[:, :8]
    for layer in range(n_layers(bridge)):
        cached = greedy_generate(bridge, prefix, 10, [AttentionBypass(layer)], batch_size=2)
        uncached = greedy_generate(bridge, prefix, 10, [AttentionBypass(layer)], use_cache=False)
        with HFBypass(hf, [layer]):
            ref = hf_greedy(hf, prefix, 10)
        assert torch.equal(cached, uncached)
        assert torch.equal(cached, ref)


def test_zero_ablation_removes_the_attention_output(bridge, rows):
    seen = {}

    def keep(x, hook):
        seen["x"] = x.clone()

    with apply(bridge, ZeroAblation(1)), bridge.hooks(fwd_hooks=[("blocks.1.hook_attn_out", keep)]):
        bridge(rows)
    assert seen["x"].abs().max() == 0


def test_zero_head_ablation_equals_reference(bridge, hf, rows):
    """Zeroing head h's z removes exactly its W_O contribution: reference via HF weights."""
    from reference import attention_modules

    mod = attention_modules(hf)[1]
    proj = mod.dense if hasattr(mod, "dense") else mod.out_proj
    d_head = bridge.cfg.d_head
    with torch.no_grad():
        saved = proj.weight[:, 2 * d_head : 3 * d_head].clone()
        proj.weight[:, 2 * d_head : 3 * d_head] = 0
        try:
            ref = hf_logits(hf, rows)
        finally:
            proj.weight[:, 2 * d_head : 3 * d_head] = saved
    ours = teacher_forced_logits(bridge, rows, [ZeroAblation(1, heads=[2])])
    torch.testing.assert_close(ours, ref, rtol=0, atol=ATOL)


def test_mean_ablation_uses_the_fitted_mean(bridge, rows):
    mean = MeanAblation.fit(bridge, rows, [1])
    _, cache = bridge.run_with_cache(rows, names_filter=lambda n: n == "blocks.1.hook_attn_out")
    torch.testing.assert_close(mean.means[1], cache["blocks.1.hook_attn_out"].mean(dim=(0, 1)))
    seen = {}

    def keep(x, hook):
        seen["x"] = x.clone()

    with apply(bridge, mean), bridge.hooks(fwd_hooks=[("blocks.1.hook_attn_out", keep)]):
        bridge(rows[:2, :7])
    torch.testing.assert_close(seen["x"], mean.means[1].expand(2, 7, -1))


def _hf_z(hf, layer, tokens, edit=None):
    """Block ``layer``'s per-head ``z`` [batch, pos, head, d_head] read from the HF model: the
    input of its attention output projection (heads concatenated head-major). ``edit(z)``, if
    given, replaces that input in place; returns (z seen before the edit, logits)."""
    from reference import attention_modules

    mod = attention_modules(hf)[layer]
    proj = mod.dense if hasattr(mod, "dense") else mod.out_proj
    n_heads = hf.config.num_attention_heads if hasattr(hf.config, "num_attention_heads") else hf.config.num_heads
    seen = {}

    def pre(module, args):
        x = args[0]
        z = x.view(*x.shape[:2], n_heads, -1)
        seen["z"] = z.clone()
        if edit is not None:
            edit(z)
        return (x,) + tuple(args[1:])

    handle = proj.register_forward_pre_hook(pre)
    try:
        logits = hf_logits(hf, tokens)
    finally:
        handle.remove()
    return seen["z"], logits


@pytest.mark.parametrize("heads", [[2], [0, 3]])
def test_mean_head_ablation_uses_the_fitted_per_head_mean(bridge, hf, rows, heads):
    """``MeanAblation.fit(..., heads=)``: the means of block 1 are a [head, d_head] array equal
    to the mean of z over the fitting rows and positions, taken from the HF model (input of the
    output projection); under the ablation the listed heads' z equals that mean at every
    position, the other heads' z is unchanged, and the logits equal HF's with the same heads'
    z overwritten by the independent mean."""
    layer, n_heads, d_head = 1, bridge.cfg.n_heads, bridge.cfg.d_head
    mean = MeanAblation.fit(bridge, rows, [layer], heads=heads)
    assert mean.heads == tuple(heads) and mean.label == "mean:" + ",".join(f"L1H{h}" for h in heads)
    ref_z, _ = _hf_z(hf, layer, rows)
    ref_mean = ref_z.double().mean(dim=(0, 1))
    assert tuple(mean.means[layer].shape) == (n_heads, d_head)
    torch.testing.assert_close(mean.means[layer].double(), ref_mean, rtol=0, atol=ATOL)
    assert ref_mean[heads].abs().max() > 1e-3  # a non-zero mean, so zeroing would be caught

    probe = rows[:2, :7]
    seen = {}

    def keep(z, hook):
        seen["z"] = z.clone()

    with apply(bridge, mean), bridge.hooks(fwd_hooks=[(sites.z(layer), keep)]):
        bridge(probe)
    clean_z, _ = _hf_z(hf, layer, probe)
    others = [h for h in range(n_heads) if h not in heads]
    torch.testing.assert_close(seen["z"][:, :, heads].double(), ref_mean[heads].expand(2, 7, -1, -1), rtol=0, atol=ATOL)
    torch.testing.assert_close(seen["z"][:, :, others], clean_z[:, :, others], rtol=0, atol=ATOL)

    def overwrite(z):
        z[:, :, heads] = ref_mean[heads].to(z)

    _, ref_logits = _hf_z(hf, layer, probe, edit=overwrite)
    torch.testing.assert_close(teacher_forced_logits(bridge, probe, [mean]), ref_logits, rtol=0, atol=ATOL)


@pytest.mark.parametrize(
    "make",
    [lambda: AttentionBypass(99), lambda: AttentionBypass(0, heads=[99]), lambda: AttentionBypass([]), lambda: ZeroAblation(-1),
     lambda: AttentionBypass([1, 1]), lambda: AttentionBypass(0, heads=[1, 0, 1])],
)
def test_out_of_range_components_are_clear_errors(bridge, make):
    with pytest.raises(InputError, match="layer|heads"):
        make().hooks(bridge)


def test_labels():
    assert AttentionBypass(3).label == "block:3"
    assert AttentionBypass(2, heads=[1]).label == "L2H1"
    assert ZeroAblation(1).label == "zero:block:1"
