import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["INTERP_CACHE_DIR"] = tempfile.mkdtemp(prefix="interp-cache-")  # file hashes: never the user's cache

import pytest  # noqa: E402
import torch  # noqa: E402

from interp.tiny import make_tiny_model  # noqa: E402

TINY = {
    "neox": dict(n_layers=3, d_model=32, n_heads=4, n_ctx=96),
    "neo": dict(n_layers=4, d_model=32, n_heads=4, n_ctx=96, window=5),
}


@pytest.fixture(scope="session", params=["neox", "neo"])
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict:
    """Folders of tiny random GPT-NeoX and GPT-Neo models (weights, config, tokenizer)."""
    root = tmp_path_factory.mktemp("tiny")
    return {a: make_tiny_model(root / a, a, seed=1, **kw) for a, kw in TINY.items()}


@pytest.fixture(scope="session")
def tiny_dir(tiny_dirs, arch):
    return tiny_dirs[arch]


@pytest.fixture(scope="session")
def bridge(tiny_dir):
    from interp.models import load_model

    return load_model(tiny_dir)


@pytest.fixture(scope="session")
def hf(tiny_dir):
    from reference import load_hf

    return load_hf(tiny_dir)


@pytest.fixture
def rows():
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 500, (5, 20), generator=g)
