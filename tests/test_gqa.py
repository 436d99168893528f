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
