"""``aidc``: argument parsing and error reporting shared by every command.

Each command group lives in its own module and contributes ``add_parser(subparsers,
common)``; its handler receives the parsed arguments and returns an exit code. Errors
derived from :class:`aidc.errors.AidcError` print as one line, ``aidc: error: ...``,
with the error's exit code; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import AidcError
from . import audit, data, jobs, keys, models, secrets, server, token, up, user, whoami

COMMANDS = (up, user, token, whoami, server, jobs, models, data, secrets, audit, keys)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        metavar="DIR",
        help="platform data directory (default: $AIDC_DATA_DIR or ./.aidc)",
    )
    parser = argparse.ArgumentParser(
        prog="aidc",
        description="aidc: a notebook-first AI platform on JupyterHub.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS:
        module.add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except AidcError as e:
        print(f"aidc: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
