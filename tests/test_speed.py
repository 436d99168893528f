"""The operation count that analyses/speed.py prints (``arithmetic_bound``), against PyTorch's own
count of the matrix multiplications of a real GPT-NeoX forward pass and decode step."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "analyses"))

import speed  # noqa: E402

SHAPE = dict(n_layers=2, d_model=256, n_heads=4, d_mlp=1024, vocab_size=3000)


def _model():
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(num_hidden_layers=SHAPE["n_layers"], hidden_size=SHAPE["d_model"],
                        num_attention_heads=SHAPE["n_heads"], intermediate_size=SHAPE["d_mlp"],
                        vocab_size=SHAPE["vocab_size"], max_position_embeddings=128, tie_word_embeddings=False)  # fmt: skip
    cfg._attn_implementation = "eager"  # attention scores as plain matmuls, so the counter sees them
    return GPTNeoXForCausalLM(cfg).eval()


def _macs(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2  # one multiply-accumulate = 2 flops


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # HF's own kwarg name until 5.40
@torch.no_grad()
def test_operation_count_matches_pytorch_on_gpt_neox():
    """The per-row sweep count, rebuilt from PyTorch's counts of the passes it is made of (prefill,
    teacher-forced pass unembedding every position or only the suffix, one cached decode step),
    agrees with ``arithmetic_bound`` up to the attention scores it leaves out."""
    model, P, N = _model(), 32, 64
    T, n = N - P, N - 1
    x = torch.randint(0, SHAPE["vocab_size"], (1, n))
    tf_all = _macs(lambda: model(x))
    tf_suffix = _macs(lambda: model(x, logits_to_keep=T))
    cache = model(x[:, :-1], use_cache=True).past_key_values
    step = _macs(lambda: model(x[:, -1:], past_key_values=cache))
    prefill = _macs(lambda: model(x[:, :P], logits_to_keep=1))
    L = SHAPE["n_layers"]
    reference = (L + 1) * (prefill + (T - 1) * step + tf_all)  # generate + teacher-forced pass, per config
    ours = tf_suffix + L * (tf_suffix + (T - 1) * step)
    bound = speed.arithmetic_bound(SHAPE, P, N)
    # the count leaves out only the attention scores: a little below PyTorch's, never above
    # (n / 6d of a block's work per token: under 4% here at d_model 256, under 2% at 512)
    for counted, key in ((reference, "reference_gmac_per_row"), (ours, "ours_gmac_per_row")):
        assert 0 <= 1 - bound[key] * 1e9 / counted < 0.04, (key, bound[key], counted / 1e9)
    assert bound["arithmetic_speedup_bound"] == pytest.approx(reference / ours, rel=0.01)


@pytest.mark.parametrize("arch", ["neox", "neo"])
def test_organism_workload_tiles_the_trained_canaries(tmp_path, arch):
    """``--organism``: the shipped organism and its trained canaries (levels 1-64) repeated in order
    to the requested number of rows; the shape read for the operation count is the model's."""
    import json

    import numpy as np

    from interp.models import load_model

    folder, rows_path, prefix_len = speed.organism_inputs(tmp_path, arch, 300)
    rows = np.load(rows_path)
    canaries = np.load(tmp_path / "canaries" / f"canaries-{arch}.npy")
    assert len(canaries) == 128 and rows.shape == (300, canaries.shape[1])
    assert (rows[:128] == canaries).all() and (rows[128:256] == canaries).all() and (rows[256:] == canaries[:44]).all()
    assert prefix_len == json.loads((folder / "canaries.json").read_text())["prefix_len"]
    cfg = load_model(folder).cfg
    assert speed.model_shape(folder) == {"n_layers": cfg.n_layers, "d_model": cfg.d_model, "vocab_size": cfg.d_vocab, "n_heads": cfg.n_heads}


@pytest.mark.parametrize(
    "args, message",
    [(["--device", "bogus"], "--device: Expected one of"),
     pytest.param(["--device", "cuda"], "sees no CUDA device", marks=pytest.mark.skipif(
         torch.cuda.is_available(), reason="a CUDA device is present")),
     (["--decode-rows", "3"], "--decode-rows (3) must be at least --batch-size (64)"),
     (["--repeat", "0"], "--repeat must be at least 1"),
     (["--memorized"], "--memorized needs --organism"),
     (["--layers", "1"], "--layers needs --heads"),
     (["--heads", "--layers", "1,x"], "--layers takes comma-separated block numbers"),
     (["--heads", "--layers", "0,6"], "--layers: the model has blocks 0-5"),
     (["--heads", "--organism", "neo", "--layers", "-1"], "--layers: the model has blocks 0-5"),
     (["--real"], "--real is a workload for --heads"),
     (["--heads", "--real", "--organism", "neo"], "--real is a workload for --heads")],
)  # fmt: skip
def test_bad_option_is_refused_before_any_work(tmp_path, args, message):
    """``--device`` names a device this torch can use and ``--decode-rows`` is at least the batch
    size, or the script stops with exit 2 and says why, before it builds a model or a row file."""
    out = tmp_path / "speed"
    result = subprocess.run([sys.executable, str(ROOT / "analyses" / "speed.py"), *args, "--out", str(out)],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 2
    assert message in result.stderr
    assert not out.exists()


def test_speedup_ceiling_by_hand():
    """The reference's rate is its counted operations (2 flops per multiply-accumulate) over its
    wall time; the ceiling scales the bound with reuse by the bare-matmul rate over that rate."""
    bound = {"reference_gmac_per_row": 10.0, "arithmetic_speedup_bound_with_reuse": 2.0}
    got = speed.speedup_ceiling(bound, n_seq=100, reference_seconds=20.0, matmul={"median": 150.0, "best": 300.0})
    assert got["reference_gflops"] == pytest.approx(100.0)  # 2 * 10 G * 100 rows / 20 s
    assert got["speedup_ceiling_at_median_matmul"] == pytest.approx(3.0)
    assert got["speedup_ceiling_at_best_matmul"] == pytest.approx(6.0)


def test_matmul_rate_is_measured_on_both_shapes():
    got = speed.matmul_gflops({"d_model": 64, "vocab_size": 500}, rows=32, seconds=0.01)
    assert 0 < got["median"] <= got["best"]


def test_head_bound_by_hand():
    """``head_arithmetic_bound`` on a 2-block, 2-head shape, counted term by term: the reference
    runs generate and a full teacher-forced pass per head; ours one unmodified pass, then per head
    of block l blocks l..L-1 with the suffix unembedded."""
    shape = {"d_model": 10, "n_layers": 2, "vocab_size": 7, "n_heads": 2}
    P, N = 3, 5
    T, n, block, unembed = 2, 4, 1200, 70
    reference = 2 * 2 * ((n + n) * 2 * block + (T + n) * unembed)
    ours = (n * 2 * block + T * unembed) + 2 * ((n * 2 * block + T * unembed) + (n * 1 * block + T * unembed))
    got = speed.head_arithmetic_bound(shape, P, N)
    assert got["reference_gmac_per_row"] == pytest.approx(reference / 1e9)
    assert got["ours_best_case_gmac_per_row"] == pytest.approx(ours / 1e9)
    assert got["arithmetic_speedup_bound_no_decode"] == pytest.approx(reference / ours)


def test_head_bound_for_some_layers_by_hand():
    """With ``layers`` both sides sweep only those blocks' heads; the unmodified pass stays."""
    shape = {"d_model": 10, "n_layers": 2, "vocab_size": 7, "n_heads": 2}
    T, n, block, unembed = 2, 4, 1200, 70
    reference = 2 * 1 * ((n + n) * 2 * block + (T + n) * unembed)
    ours = (n * 2 * block + T * unembed) + 2 * (n * 1 * block + T * unembed)
    got = speed.head_arithmetic_bound(shape, 3, 5, layers=[1])
    assert got["reference_gmac_per_row"] == pytest.approx(reference / 1e9)
    assert got["ours_best_case_gmac_per_row"] == pytest.approx(ours / 1e9)
