"""Ground truth: the component an injected organism's manifest declares."""

from __future__ import annotations

import json
from pathlib import Path

from interp import sites


def injected_component(model_dir: str | Path) -> str | None:
    """The ``injected_component`` recorded in ``manifest.json`` of an injected organism, or None."""
    path = Path(model_dir) / "manifest.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("injected_component")


def _coarsen(label: str, to_blocks: bool) -> str:
    layer, head = sites.parse_component(label)
    return sites.block_label(layer) if to_blocks or head is None else label
