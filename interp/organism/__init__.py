"""The model organism: small GPT-NeoX and GPT-Neo models trained here, shipped as the default.

Modules: ``corpus`` (offline real text: the CPython standard library, split by file),
``rules`` (rule-governed task families with distractors), ``canaries`` (planted secrets at
duplication levels 1/4/16/64 plus held-out controls, exported as token rows), ``train``
(tokenizer, training stream, HF model, manifest), ``evaluate`` (final metrics through
``interp.models.load_model``), ``inject`` (ground-truth injection into one block's attention or
one head). Shipped folders live in ``data/{neox,neo}`` and ``data/{neox,neo}-injected``; see
``README.md`` beside this file.
"""

from __future__ import annotations

from pathlib import Path

from interp.errors import InputError

DATA_DIR = Path(__file__).parent / "data"


def organism_path(arch: str = "neox", *, injected: bool = False) -> Path:
    """Folder of the shipped organism ``arch`` (``neox`` or ``neo``), or of its injected variant."""
    if arch not in ("neox", "neo"):
        raise InputError(f"organism architecture must be 'neox' or 'neo'; got {arch!r}")
    path = DATA_DIR / (f"{arch}-injected" if injected else arch)
    if not (path / "config.json").is_file():
        raise InputError(f"the {arch} organism{' (injected)' if injected else ''} is not shipped in this checkout ({path})")
    return path
