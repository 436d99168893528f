"""``interp`` command line. Each subcommand lives in its own module with ``register(subparsers)``.

Bad input (an ``InputError``) prints one sentence to stderr and exits with code 2, having
written nothing.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from interp.errors import InputError

SUBCOMMANDS = ["sweep", "bench", "theory", "localize", "organism"]  # modules under interp.cli, each with register(subparsers)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interp", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"interp.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"interp {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
