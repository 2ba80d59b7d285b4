"""The `hyperpi` command: one argparse tree; each command group lives in its own module.

A command module exposes `register(subparsers)`, which adds its sub-parser(s) and sets
`func` (called with the parsed args, returning an exit code). User mistakes raise
`UserError`, printed as one line without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Command-group modules, in the order `hyperpi --help` lists them.
COMMAND_MODULES = [
    # each entry: "hyperpi_host.<module>"; added by the work that builds that command
    "hyperpi_host.keys",
    "hyperpi_host.qr",
    "hyperpi_host.provision",
    "hyperpi_host.flash",
    "hyperpi_host.devices",
    "hyperpi_host.chat",
    "hyperpi_host.pair",
]


class UserError(Exception):
    """A mistake the user can fix; the message says what to do next."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hyperpi",
        description="hyperpi host tool: keys, QR pairing, SD card images, flashing, and LAN chat.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"hyperpi: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("hyperpi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # As `python -m hyperpi_host.cli` this file is `__main__`, a second copy of the module:
    # run the package's copy, whose UserError is the one command modules raise.
    from hyperpi_host.cli import main as package_main

    sys.exit(package_main())
