"""On a CUDA device the bypass, reuse below it, greedy decoding and the sweep give the CPU's
numbers. Skipped where torch sees no CUDA device (CI, and this project's CPU machines)."""

import numpy as np
import pytest
import torch

from interp.generation import greedy_generate, teacher_forced_logits
from interp.interventions import AttentionBypass
from interp.memorization import sweep
from interp.models import load_model

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]


@pytest.fixture(scope="module")
def pair(tiny_dirs):
    return load_model(tiny_dirs["neox"]), load_model(tiny_dirs["neox"], device="cuda")


def test_bypass_logits_equal_the_cpu(pair, rows):
    cpu, gpu = pair
    for ivs in ([], [AttentionBypass(1)], [AttentionBypass(2, heads=[0, 3])]):
        torch.testing.assert_close(teacher_forced_logits(gpu, rows, ivs), teacher_forced_logits(cpu, rows, ivs), rtol=1e-4, atol=1e-4)


def test_greedy_decoding_equals_the_cpu(pair, rows):
    cpu, gpu = pair
    for ivs in ([], [AttentionBypass(1)]):
        assert torch.equal(greedy_generate(gpu, rows[:, :6], 8, ivs), greedy_generate(cpu, rows[:, :6], 8, ivs))


def test_sweep_with_reuse_equals_the_cpu(pair):
    cpu, gpu = pair
    rows = torch.randint(1, 500, (6, 14), generator=torch.Generator().manual_seed(2))
    rows[:, 6:] = greedy_generate(cpu, rows[:, :6], 8)
    a = sweep(cpu, rows.numpy(), 6, batch_size=3, progress=False)
    b = sweep(gpu, rows.numpy(), 6, batch_size=3, progress=False)
    np.testing.assert_array_equal(a.exact_match.to_numpy(), b.exact_match.to_numpy())
    np.testing.assert_allclose(a.suffix_nll.to_numpy(), b.suffix_nll.to_numpy(), rtol=1e-4, atol=1e-4)
