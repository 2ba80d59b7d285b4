"""Installing a downloaded release beside the running one, and switching to it.

`install(releases, release, get_block, ...)` runs in a worker thread (it waits on pip) and:

1. checks free space (INSTALL_SPACE_FACTOR times the bundle, plus MIN_FREE_BYTES);
2. reads the release feed's blocks (already verified by the core's Merkle tree and the owner's
   signature), checks the manifest, every file's size and sha256 and the whole payload's
   sha256 against the control entry, and writes the wheels to `<folder>/bundle/`;
3. makes `<folder>/venv` (`python -m venv --system-site-packages --without-pip`), adds a .pth
   line for each of the factory environment's site-packages (so the dependencies the factory
   has are found; the new wheels come first on sys.path), and installs every wheel of the bundle
   with pip from the factory (`--no-index --no-deps`: nothing is fetched from anywhere);
4. runs the new `hyperpi-device --version` (every import the service needs, and the version);
5. syncs the disks, then writes `release.json` (the folder becomes usable), then `pending.json`,
   then points `current` at it (device/releases.py says why this order survives power cuts).

The caller then exits with EXIT_UPDATED, which systemd restarts through the launcher.
InstallError (one line) says what failed; nothing is switched then.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .bundle import Manifest, feed_length, parse_manifest, parse_version, split_files
from .control import Release
from .releases import MANIFEST, VENV, Pending, Releases, write_atomic

log = logging.getLogger("hyperpi.device")

# Exit code of a service that installed an update and wants to be started again (the unit's
# RestartForceExitStatus=); outside sysexits.h's 64-78 so it never means an error.
EXIT_UPDATED = 42
# Free bytes needed per bundle byte: the wheels themselves, their unpacked files (wheels are
# zip files, ~3x), and pip's temporary copies.
INSTALL_SPACE_FACTOR = 6
MIN_FREE_BYTES = 32 * 1024 * 1024  # the feed store and the journal keep room to work
PIP_TIMEOUT = 600.0  # s; a Pi Zero 2 installs hyperpi's wheel in well under a minute
WHEEL_VERSION = re.compile(r"hyperpi-([0-9.]+)-")


class InstallError(Exception):
    """Why a release was not installed; str() is one line."""


Step = Callable[[str], None]  # told the name of each step before it runs (tests cut power there)


def _no_step(name: str) -> None:
    pass


def check_space(folder: Path, size: int) -> None:
    needed = size * INSTALL_SPACE_FACTOR + MIN_FREE_BYTES
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise InstallError(f"not enough free space: {free // 2**20} MiB free, {needed // 2**20} MiB needed")


def assemble(release: Release, get_block: Callable[[int], bytes], folder: Path) -> Manifest:
    """Write the release feed's files into `folder`, checking them on the way; InstallError."""
    try:
        manifest = parse_manifest(get_block(0))
    except ValueError as error:
        raise InstallError(str(error)) from None
    if manifest.version != release.version:
        raise InstallError(f"release feed holds version {manifest.version}, announced {release.version}")
    if manifest.size != release.size or feed_length(manifest.size) != release.length:
        raise InstallError(f"release feed holds {manifest.size} bytes, announced {release.size}")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    total = hashlib.sha256()
    digests = [hashlib.sha256() for _ in manifest.files]
    handles = [open(folder / f.name, "wb") for f in manifest.files]  # noqa: SIM115 - closed below
    try:
        for index, piece in split_files(manifest, (get_block(i) for i in range(1, release.length))):
            total.update(piece)
            digests[index].update(piece)
            handles[index].write(piece)
    except ValueError as error:
        raise InstallError(str(error)) from None
    finally:
        for handle in handles:
            handle.close()
    if total.hexdigest() != release.sha256:
        raise InstallError("the bundle's sha256 is not the one announced")
    for f, digest in zip(manifest.files, digests, strict=True):
        if digest.hexdigest() != f.sha256:
            raise InstallError(f"sha256 of {f.name} is not the one in the manifest")
    if not any(_wheel_version(f.name) == manifest.version for f in manifest.files):
        raise InstallError(f"the bundle has no hyperpi {manifest.version} wheel")
    return manifest


def _wheel_version(name: str) -> str | None:
    match = WHEEL_VERSION.match(name)
    if match is None:
        return None
    try:
        parse_version(match.group(1))
    except ValueError:
        return None
    return match.group(1)


def _run(args: Sequence[str | Path], what: str) -> str:
    try:
        done = subprocess.run(
            [str(a) for a in args], capture_output=True, text=True, timeout=PIP_TIMEOUT, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise InstallError(f"{what}: {error}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise InstallError(f"{what} failed: {lines[-1] if lines else f'exit code {done.returncode}'}")
    return done.stdout


def install(
    releases: Releases,
    release: Release,
    get_block: Callable[[int], bytes],
    *,
    factory_site: Sequence[str],
    python: str = sys.executable,
    step: Step = _no_step,
) -> str:
    """Install and switch to `release` (see the module docstring); the release folder's name."""
    name, manifest = prepare(releases, release, get_block, step=step)
    finish(releases, name, release, manifest, factory_site=factory_site, python=python, step=step)
    return name


def prepare(
    releases: Releases, release: Release, get_block: Callable[[int], bytes], *, step: Step = _no_step
) -> tuple[str, Manifest]:
    """Steps 1 and 2: a new release folder holding the checked bundle (on the thread that owns
    the store: it reads the core)."""
    releases.ensure()
    step("space")
    check_space(releases.root, release.size)
    name = f"{release.version}-{secrets.token_hex(4)}"
    log.info("update %s: checking the bundle into %s", release.version, releases.path(name))
    with _cleanup(releases, name):
        step("assemble")
        manifest = assemble(release, get_block, releases.path(name) / "bundle")
    return name, manifest


def finish(
    releases: Releases,
    name: str,
    release: Release,
    manifest: Manifest,
    *,
    factory_site: Sequence[str],
    python: str = sys.executable,
    step: Step = _no_step,
) -> None:
    """Steps 3 to 5 (slow: pip; fine in a worker thread, it touches no core)."""
    with _cleanup(releases, name):
        _install_into(releases, name, release, manifest, factory_site, python, step)
    log.info("update %s: installed; current -> %s, restarting into it", release.version, name)


@contextlib.contextmanager
def _cleanup(releases: Releases, name: str) -> Iterator[None]:
    """A failure removes the new folder (never switched to, so not needed) and is one line."""
    try:
        yield
    except BaseException as error:
        if releases.current() != name:
            shutil.rmtree(releases.path(name), ignore_errors=True)
        if isinstance(error, OSError):
            raise InstallError(f"{error.filename or 'install'}: {error.strerror or error}") from None
        raise


def _install_into(
    releases: Releases,
    name: str,
    release: Release,
    manifest: Manifest,
    factory_site: Sequence[str],
    python: str,
    step: Step,
) -> None:
    folder = releases.path(name)
    step("venv")
    log.info("update %s: making the environment %s", release.version, folder / VENV)
    venv = folder / VENV
    _run([python, "-m", "venv", "--system-site-packages", "--without-pip", venv], "making the environment")
    site_packages = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    if not site_packages.is_dir():
        raise InstallError(f"the new environment has no {site_packages}")
    # Plain paths (no `import` lines): the factory's own .pth files are not run in the new one.
    (site_packages / "hyperpi-factory.pth").write_text("".join(f"{p}\n" for p in factory_site if p))
    step("pip")
    wheels = [folder / "bundle" / f.name for f in manifest.files]
    log.info("update %s: installing %s", release.version, ", ".join(f.name for f in manifest.files))
    _run(
        [venv / "bin" / "python", "-m", "pip", "install", "--no-index", "--no-deps", "--ignore-installed",
         "--no-cache-dir", "--disable-pip-version-check", "--no-warn-script-location", "--quiet", *wheels],
        "pip install",
    )  # fmt: skip
    step("check")
    log.info("update %s: checking that the new hyperpi-device starts", release.version)
    said = _run([releases.executable(name), "--version"], "the new hyperpi-device --version").strip()
    if said != f"hyperpi-device {release.version}":
        raise InstallError(f"the new hyperpi-device says {said[:60]!r}, not version {release.version}")
    step("sync")
    os.sync()  # every file pip wrote is on the disk before the folder is marked usable
    step("mark")
    write_atomic(folder / MANIFEST, json.dumps({"version": release.version, "sha256": release.sha256}).encode())
    step("pending")
    log.info("update %s: complete; switching to it, pending its confirmation", release.version)
    releases.set_pending(Pending(name, releases.current(), 0))
    step("switch")
    releases.set_current(name)


def prune(releases: Releases, keep: set[str]) -> None:
    """Remove release folders other than `keep` (the running one and the one to roll back to);
    the folder is renamed out of the way first, so a cut mid-removal never leaves a half
    folder under a usable name."""
    for name in releases.installed():
        if name in keep:
            continue
        doomed = releases.root / f".{name}.removing"
        try:
            os.replace(releases.path(name), doomed)
            shutil.rmtree(doomed)
            log.info("removed old release folder %s", name)
        except OSError as error:
            log.warning("cannot remove old release folder %s: %s", name, error)
    for leftover in releases.root.glob(".*.removing"):
        shutil.rmtree(leftover, ignore_errors=True)
