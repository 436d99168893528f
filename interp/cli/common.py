"""Argument helpers shared by subcommands: typed options that refuse bad values in one sentence,
the model options, and the output-folder claim every subcommand writes through."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from interp.errors import InputError
from interp.models import DEFAULT_MODEL

# options that change neither what is computed nor where: left out of a run's key
NOT_IN_KEY = frozenset({"func", "command", "out", "no_progress", "verbose", "allow_pickle", "batch_size",
                        "decode_rows", "organism_command"})  # fmt: skip


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (``prog: error: ...``) and exit 2."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _int(text: str, flag_min: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}") from None
    if value < flag_min:
        raise argparse.ArgumentTypeError(f"must be at least {flag_min}; got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int(text, 1)


def nonneg_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int(text, 0)


def seed_int(text: str) -> int:
    """argparse type: a random seed, 0 <= seed < 2**32 (what numpy and torch both accept)."""
    value = _int(text, 0)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must be below 2**32; got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive finite number; got {text}")
    return value


def device_arg(text: str) -> str:
    """argparse type: a torch device this torch build can use (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (expected e.g. cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r} needs a CUDA GPU, and this torch build sees none")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} needs Apple's MPS backend, which this machine lacks")
    elif device.type == "cpu" and device.index not in (None, 0):
        raise argparse.ArgumentTypeError(f"{text!r}: torch has one cpu device; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"{text!r}: only cpu, cuda and mps devices are supported")
    return str(device)


def add_model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"HF folder, hub id, or organism[:neox|:neo] (default: {DEFAULT_MODEL})")  # fmt: skip
    p.add_argument("--device", default="cpu", type=device_arg, help="torch device (default: cpu)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="load pickle weights (pytorch_model.bin) when the folder has no safetensors: unpickling can run "
                        "arbitrary code, so only for files you trust")  # fmt: skip


def parse_int_list(text: str | None, what: str) -> list[int] | None:
    """``"0,3,5"`` -> [0, 3, 5]; None stays None. Empty lists and repeated values are refused:
    a selection is a set, and an empty one would silently run nothing."""
    if text is None:
        return None
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{what} must be comma-separated integers like 0,3; got {text!r}") from None
    if not values:
        raise InputError(f"{what} names nothing; give comma-separated integers like 0,3 or leave it out")
    check_unique(values, what)
    return values


def check_unique(values: Sequence, what: str) -> None:
    """Refuse a selection that names something twice."""
    seen, dupes = set(), []
    for v in values:
        if v in seen and v not in dupes:
            dupes.append(v)
        seen.add(v)
    if dupes:
        raise InputError(f"{what} names {', '.join(map(str, dupes))} more than once; a selection is a set")


def run_key(args: argparse.Namespace) -> str:
    """Hash of the options that define what a run computes (not where, how fast or how loudly)."""
    from interp.results import config_hash

    return config_hash({k: v for k, v in sorted(vars(args).items()) if k not in NOT_IN_KEY})


@contextmanager
def claimed_output(args: argparse.Namespace, kind: str) -> Iterator:
    """Claim ``args.out`` for this run (``interp.outputs.claim``) under the run's key."""
    from interp.outputs import claim

    with claim(args.out, kind, run_key(args)) as c:
        yield c


def record_inputs(claim, model_source: str, files: dict, **digests: str) -> dict:
    """Fingerprint the model folder and input files (plus ready ``digests`` of other inputs),
    and record them in the claim (stale results of other inputs are deleted there). Returns
    the fingerprints. Call after the model loaded: its folder is known to be usable then."""
    from interp.fingerprint import inputs_fingerprint
    from interp.models import weights_folder

    inputs = inputs_fingerprint(weights_folder(model_source, allow_pickle=True), files) | digests
    claim.set_inputs(inputs)
    return inputs


def add_interventions_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interventions", metavar="FILE",
                   help="an interventions file (from 'interp mitigate' or in its schema, docs/mitigation.md): "
                        "adds its set as one more configuration, named file:<its name>")  # fmt: skip


def check_interventions_file(args: argparse.Namespace) -> None:
    """Refuse a malformed ``--interventions`` file before any model is loaded."""
    if getattr(args, "interventions", None) is not None:
        from interp.mitigate import read_interventions_file

        read_interventions_file(args.interventions)


def interventions_configs(args: argparse.Namespace, model) -> dict:
    """``{"file:<name>": interventions}`` from ``--interventions`` (checked against ``model``'s
    weights), or ``{}``."""
    if getattr(args, "interventions", None) is None:
        return {}
    from interp.mitigate import load_interventions, read_interventions_file

    name = str(read_interventions_file(args.interventions).get("name") or "interventions")
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    return {f"file:{safe}": load_interventions(args.interventions, model)}
