import time

import pytest
import torch

from interp.errors import InputError
from interp.models import load_model, model_family, n_heads, n_layers
from interp.tiny import make_tiny_model
from reference import hf_logits


def test_bridge_logits_equal_hf_eager(bridge, hf, rows):
    with torch.no_grad():
        ours = bridge(rows, return_type="logits")
    torch.testing.assert_close(ours, hf_logits(hf, rows), rtol=0, atol=1e-5)


def test_family_and_shape_come_from_the_model(bridge, arch):
    assert model_family(bridge) == {"neox": "gpt_neox", "neo": "gpt_neo"}[arch]
    assert (n_layers(bridge), n_heads(bridge)) == ({"neox": 3, "neo": 4}[arch], 4)


def test_block_count_is_read_not_defaulted(tmp_path):
    model = load_model(make_tiny_model(tmp_path / "m", "neox", n_layers=5, n_heads=2, d_model=16))
    assert (n_layers(model), n_heads(model)) == (5, 2)


def test_tensor_input_gets_no_bos(bridge, rows):
    """Rows are used exactly as given on both families (the bridge adds BOS only to strings)."""
    captured = {}

    def keep(x, hook):
        captured["n"] = x.shape[1]

    with torch.no_grad(), bridge.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", keep)]):
        bridge(rows)
    assert captured["n"] == rows.shape[1]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "nope")


def test_organism_specs_resolve_to_their_folders():
    """``organism``, ``organism:ARCH`` and ``organism:ARCH-injected`` name the shipped folders."""
    from interp.models import resolve_source
    from interp.organism import DATA_DIR

    assert resolve_source("organism") == str(DATA_DIR / "neox")
    for arch in ("neox", "neo"):
        assert resolve_source(f"organism:{arch}") == str(DATA_DIR / arch)
        if (DATA_DIR / f"{arch}-injected" / "config.json").is_file():
            assert resolve_source(f"organism:{arch}-injected") == str(DATA_DIR / f"{arch}-injected")
    with pytest.raises(InputError, match="must be 'neox' or 'neo'"):
        resolve_source("organism:gpt2")


def test_a_file_is_not_a_model(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(InputError, match="is a file"):
        load_model(tmp_path / "weights.bin")


def test_folder_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        load_model(tmp_path)


def test_uncached_hub_id_fails_at_once_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(InputError, match="local folder"):
        load_model("EleutherAI/pythia-nonexistent-interp-test")
    assert time.monotonic() - start < 30
