"""The host package's library modules (images, partitions, file systems, block devices, the
provisioning and pairing engines, the home folder, store locks) are an engine under the commands,
as bmaptool's BmapCopy is under its CLI: they raise their own errors (BmapError, ImageError,
PartitionError, FatError, Ext4Error, TargetRefused, ProvisionError, PairingError, HomeError,
StoreLockError) and know nothing of the `hyperpi` command line; the command modules (or, for the
errors nearly every command meets, cli.main) turn those errors into one-line `UserError`s.

Every module of the package is one or the other: the command level is named below, every other
module is a library module and is held to these rules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from hyperpi_host.cli import COMMAND_MODULES

HOST = Path(__file__).resolve().parents[2] / "host" / "hyperpi_host"
# The command line, its command modules, and the helpers that parse or check the commands'
# arguments (resolve: names and keys given on the command line; netrun: the network options).
COMMAND_LEVEL = {"__init__", "cli", "resolve", "netrun", *(name.rsplit(".", 1)[1] for name in COMMAND_MODULES)}
LIBRARY_MODULES = sorted(path.stem for path in HOST.glob("*.py") if path.stem not in COMMAND_LEVEL)


def test_the_engine_modules_are_library_modules() -> None:
    """A guard against the list above going stale: the engines split out of the commands are here."""
    expected = {"blockdev", "bmap", "imagefile", "imagewrite", "partitions", "fatfs", "ext4fs", "progress"}
    assert expected | {"provisioning", "pairing", "home", "storelock"} <= set(LIBRARY_MODULES)


def test_library_modules_load_neither_the_cli_nor_a_command() -> None:
    """Imported first in a fresh interpreter, no library module pulls in `hyperpi_host.cli` or a
    command module, directly or through another module."""
    names = [f"hyperpi_host.{m}" for m in LIBRARY_MODULES]
    code = f"import sys\nfor name in {names!r}:\n    __import__(name)\nprint(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = set(result.stdout.split())
    assert set(names) <= loaded
    assert loaded & {"hyperpi_host.cli", *COMMAND_MODULES} == set()


def test_library_modules_do_not_raise_user_error() -> None:
    for module in LIBRARY_MODULES:
        tree = ast.parse((HOST / f"{module}.py").read_text())
        names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
        assert "UserError" not in names | imported, module
