"""Metrics against hand computations, and pins for each defect of the public code (paper.md s4)."""

import math

import numpy as np
import pytest
import torch

from interp import metrics
from interp.generation import greedy_generate
from interp.memorization import evaluate
from interp.models import load_model
from interp.tiny import make_tiny_model


def test_token_accuracy_is_a_fraction_not_exact_match():
    gen = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4]])
    suf = torch.tensor([[1, 2, 3, 9], [1, 2, 3, 4]])
    assert metrics.token_accuracy(gen, suf).tolist() == [0.75, 1.0]
    assert metrics.exact_match(gen, suf).tolist() == [False, True]


def test_match_length_counts_leading_matches_only():
    gen = torch.tensor([[1, 2, 0, 4], [9, 2, 3, 4], [1, 2, 3, 4]])
    suf = torch.tensor([[1, 2, 3, 4]] * 3)
    assert metrics.match_length(gen, suf).tolist() == [2, 0, 4]


def test_completion_entropy_is_over_vocabulary_summed_over_positions():
    batch, T, V = 2, 3, 7
    logits = torch.zeros(batch, T, V)  # uniform: entropy log V at each position
    logits[1, 0, 0] = 1e4  # one certain position in row 1
    ce = metrics.completion_entropy(logits)
    assert ce[0].item() == pytest.approx(T * math.log(V), rel=1e-6)
    assert ce[1].item() == pytest.approx((T - 1) * math.log(V), rel=1e-6)


def test_completion_entropy_matches_numpy():
    logits = torch.randn(4, 5, 11)
    p = np.exp(logits.numpy() - logits.numpy().max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    ref = -(p * np.log(p)).sum(-1).sum(-1)
    np.testing.assert_allclose(metrics.completion_entropy(logits).numpy(), ref, rtol=1e-5)


def test_suffix_slice_offset():
    """Suffix token j (position P+j) is scored by the logits at position P-1+j."""
    P, T, V = 4, 3, 10
    tokens = torch.tensor([[5, 6, 7, 8, 1, 2, 3]])
    logits = torch.full((1, P + T, V), -1e4)
    for t in range(P + T - 1):  # a perfect predictor of the next token
        logits[0, t, tokens[0, t + 1]] = 0
    sl = metrics.suffix_slice(logits, P, T)
    assert metrics.teacher_forced_accuracy(sl, tokens[:, P:]).item() == 1.0
    assert metrics.suffix_nll(sl, tokens[:, P:]).item() == pytest.approx(0, abs=1e-6)
    shifted = logits[:, P : P + T]  # the off-by-one of the public code
    assert metrics.teacher_forced_accuracy(shifted, tokens[:, P:]).item() < 1.0


def test_suffix_nll_matches_hand_computation():
    logits = torch.randn(3, 4, 9)
    suf = torch.randint(0, 9, (3, 4))
    logp = torch.log_softmax(logits.double(), -1)
    ref = -sum(logp[:, j].gather(-1, suf[:, j, None]).squeeze(-1) for j in range(4))
    torch.testing.assert_close(metrics.suffix_nll(logits, suf), ref, rtol=0, atol=4e-6)  # float32 logsumexp: ~1e-6 per position, 4 positions


def test_teacher_forced_summary_matches_float64_reference():
    """The chunked one-pass statistics (3 x 7 = 21 positions: chunks of 16 and 5) against a
    whole-tensor float64 computation, with some logits at -inf (probability 0)."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, 50, generator=g) * 3
    logits[0, 2, :10] = -math.inf
    logits[2, 6, 1:] = -math.inf  # a certain position: entropy 0, margin inf
    suf = torch.randint(10, 50, (3, 7), generator=g)
    suf[2, 6] = 0
    got = metrics.teacher_forced_summary(logits, suf)
    x = logits.double()
    logp = torch.log_softmax(x, -1)
    plogp = torch.where(torch.isneginf(x), torch.zeros_like(x), logp.exp() * logp)
    torch.testing.assert_close(got["completion_entropy"].double(), -plogp.sum(-1).sum(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got["suffix_nll"], -logp.gather(-1, suf[..., None]).squeeze(-1).sum(-1), rtol=0, atol=1e-5)
    top2 = x.topk(2, dim=-1)
    assert torch.equal(got["argmax"], top2.indices[..., 0])
    torch.testing.assert_close(got["margin"].double(), top2.values[..., 0] - top2.values[..., 1], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(metrics.suffix_token_nll(logits, suf).sum(-1), got["suffix_nll"])


def test_chunked_entropy_equals_the_whole_tensor_formula_bit_for_bit():
    """Chunking over positions changes no value: the entropy equals the whole-tensor formula
    (logsumexp - sum softmax * logits) exactly, on a realistic vocabulary, -inf logits included."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 7, 50304, generator=g) * 4  # 35 positions: chunks of 16, 16, 3
    x[1, 3, :100] = -math.inf
    whole = torch.logsumexp(x, -1) - (torch.softmax(x, -1) * x.nan_to_num(0.0, neginf=0.0)).sum(-1)
    assert torch.equal(metrics.completion_entropy(x), whole.sum(1))
    assert torch.equal(metrics.teacher_forced_summary(x, torch.zeros(5, 7, dtype=torch.long) + 200)["completion_entropy"], whole.sum(1))


@pytest.mark.parametrize("nll", [0.0, 0.01, 1.0, 5.0, 30.0, 800.0, 5000.0])
@pytest.mark.parametrize("n", [1, 10, 1000])
def test_extraction_log_prob(nll, n):
    got = metrics.extraction_log_prob(torch.tensor([nll]), n).item()
    from mpmath import mp, mpf, exp, log

    mp.dps = 2500  # enough digits that 1 - p is not rounded to 1 for nll up to 5000
    p = exp(-mpf(nll))
    ref = float(log(1 - (1 - p) ** n))
    assert got == pytest.approx(ref, rel=1e-6, abs=1e-9)
    assert got <= 0


def test_exposure():
    cands = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])  # |R| = 8 with the canary
    assert metrics.exposure(0.5, cands) == pytest.approx(3.0)  # rank 1
    assert metrics.exposure(3.5, cands) == pytest.approx(3.0 - 2.0)  # rank 4
    assert metrics.exposure(100.0, cands) == pytest.approx(0.0)  # rank 8


def test_exposure_ties_count_against_the_canary():
    """Rank is the number of members of R at least as likely as the canary, the canary included,
    so candidates whose NLL equals the canary's push its rank down (by hand, |R| = 8)."""
    cands = torch.tensor([1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert metrics.exposure(2.0, cands) == pytest.approx(3.0 - 2.0)  # 1.0, 2.0 x2 and itself: rank 4, not 2
    three = torch.tensor([1.0, 2.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    assert metrics.exposure(2.0, three) == pytest.approx(3.0 - math.log2(5))  # rank 5, not 2
    assert metrics.exposure(1.0, cands) == pytest.approx(3.0 - 1.0)  # ties the best: rank 2, not 1
    assert metrics.exposure(6.0, cands) == pytest.approx(0.0)  # ties the worst: rank 8, not 7
    assert metrics.exposure(7.0, torch.full((7,), 7.0)) == pytest.approx(0.0)  # all tied: rank |R|


def test_shape_mismatch_is_an_error():
    # jaxtyping's runtime check (TypeError) fires first when the suite runs with it; our own
    # ValueError covers runs without it
    with pytest.raises((ValueError, TypeError), match="shapes differ|T"):
        metrics.exact_match(torch.zeros(2, 3), torch.zeros(2, 4))


def test_suffix_containing_end_of_text_can_match(tmp_path):
    """Defect 4: a suffix made of the end-of-text token (id 0) must be reproducible."""
    folder = make_tiny_model(tmp_path / "m", "neox", n_layers=2, d_model=16, n_heads=2)
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    # make id 0 the greedy choice everywhere: the final LayerNorm outputs a constant vector of
    # ones, and only the unembedding row of id 0 is aligned with it
    weights["gpt_neox.final_layer_norm.weight"].zero_()
    weights["gpt_neox.final_layer_norm.bias"].fill_(1.0)
    weights["embed_out.weight"][0] = 10.0
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    model = load_model(folder)
    prefix = torch.randint(1, 500, (3, 6))
    gen = greedy_generate(model, prefix, 5)
    assert (gen == model.tokenizer.eos_token_id).all()
    rows = torch.cat([prefix, gen], dim=1).numpy()
    df = evaluate(model, rows, 6)
    assert df.exact_match.tolist() == [1.0, 1.0, 1.0]
