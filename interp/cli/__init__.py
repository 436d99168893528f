"""``interp`` command line. Each subcommand lives in its own module with ``register(subparsers)``.

Bad input (an ``InputError``) prints one sentence to stderr and exits with code 2, having
written nothing.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys

from interp.cli.common import Parser
from interp.errors import InputError

SUBCOMMANDS = ["sweep", "bench", "theory", "localize", "organism", "mitigate"]  # modules under interp.cli, each with register(subparsers)


def build_parser() -> Parser:
    parser = Parser(prog="interp", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"interp.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # a bad option (one line already on stderr) or --help
        return int(stop.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"interp {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        print(f"interp {args.command}: error: cannot write {err.filename or 'the output'!s} ({err.strerror})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
