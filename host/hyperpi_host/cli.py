"""The `hyperpi` command: one argparse tree; each command group lives in its own module.

A command module exposes `register(subparsers)`, which adds its sub-parser(s) and sets
`func` (called with the parsed args, returning an exit code). User mistakes raise
`UserError`, printed as one line without a traceback.

Exit status: 0 done; 1 the command could not finish (a store in use, a file it cannot write);
2 a mistake in the command line, with one line saying what to do; 3 `hyperpi pair`: the entry is
kept, not yet delivered; 130 interrupted (Ctrl-C, SIGTERM); 141 the reader of stdout went away
(`| head`), said by nothing.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import NoReturn

from hyperpi import __version__
from hyperpi_host.home import HomeError
from hyperpi_host.storelock import StoreLockError

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
    "hyperpi_host.release",
]


class UserError(Exception):
    """A mistake the user can fix; the message says what to do next."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell shows for `yes | head`

# Library errors that nearly every command can meet (the home folder, a store in use), so they
# are turned into one line here rather than in each command; the value is the exit status.
LIBRARY_ERRORS: dict[type[Exception], int] = {HomeError: 2, StoreLockError: 1}


def confirm(question: str, skip_with: str) -> None:
    """Ask on the terminal for `yes`; anything else is a UserError (exit 1) naming the option
    (`skip_with`) that skips the question."""
    print(question + " Type 'yes' to continue: ", end="", file=sys.stderr, flush=True)
    try:
        answer = input()
    except EOFError:
        answer = ""
    if answer.strip().lower() != "yes":
        raise UserError(f"not confirmed, nothing was written (pass {skip_with} to skip this question)", 1)


def command_group(subparsers: argparse._SubParsersAction, name: str, **texts: str) -> argparse._SubParsersAction:
    """A command made of actions (`hyperpi keys new`, `hyperpi pair add`): the sub-parsers to add
    them to. Given no action, the command prints its own help and exits 2."""
    parser = subparsers.add_parser(name, **texts)
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
    return parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")


def timeout_within(seconds: float, limit: float) -> float:
    """A `--timeout` value checked against its command's limit (one line if it is outside)."""
    if not 0 <= seconds <= limit:
        raise UserError(f"--timeout must be between 0 and {limit:g} seconds, got {seconds:g}")
    return seconds


class Parser(argparse.ArgumentParser):
    """argparse with its mistakes in one line (usage stays in --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hyperpi",
        description="hyperpi host tool: keys, QR pairing, SD card images, flashing, and LAN chat.",
        epilog="Exit status: 0 done, 1 could not finish, 2 a mistake in the command (one line says "
        "what to do), 3 pair entry kept but not yet delivered, 130 interrupted.",
    )
    parser.add_argument("--version", action="version", version=f"hyperpi {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return int(args.func(args) or 0)
    except UserError as error:
        print(f"hyperpi: {error}", file=sys.stderr)
        return error.exit_code
    except tuple(LIBRARY_ERRORS) as error:
        print(f"hyperpi: {error}", file=sys.stderr)
        return LIBRARY_ERRORS[type(error)]
    except KeyboardInterrupt:
        print("hyperpi: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly. Point stdout at /dev/null so the
        # interpreter's last flush at exit cannot fail on the closed pipe again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE
    except OSError as error:
        # A file or folder the commands did not expect to fail (a folder where a file was
        # meant, a read-only place): one line naming it, never a traceback.
        where = f"{error.filename}: " if error.filename else ""
        print(f"hyperpi: {where}{error.strerror or error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # As `python -m hyperpi_host.cli` this file is `__main__`, a second copy of the module:
    # run the package's copy, whose UserError is the one command modules raise.
    from hyperpi_host.cli import main as package_main

    sys.exit(package_main())
