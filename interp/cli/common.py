"""Argument helpers shared by subcommands."""

from __future__ import annotations

import argparse

from interp.errors import InputError
from interp.models import DEFAULT_MODEL


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"HF folder, hub id, or organism[:neox|:neo] (default: {DEFAULT_MODEL})")  # fmt: skip
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")


def parse_int_list(text: str | None, what: str) -> list[int] | None:
    """``"0,3,5"`` -> [0, 3, 5]; None stays None."""
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers like 0,3; got {text!r}") from None
