"""`hyperpi-launch`: the systemd unit's ExecStart; picks which installed version to run, and rolls
a new one back when it keeps failing.

    hyperpi-launch [--state-dir DIR] [--factory PATH] [hyperpi-device arguments ...]

It runs from the factory environment, which updates never change, and decides from the files
of device/releases.py:

- a switch pending confirmation (`pending.json` names the version `current` points at) counts
  one more start; past MAX_START_ATTEMPTS starts without the new version confirming itself,
  `current` goes back to the previous version (or the factory one), the version is recorded in
  `failed.json` as "rolled back: <why>" (the device publishes it) and is never tried again;
- a `current` whose environment is incomplete is never run (the factory one is);
- then it execs that version's `hyperpi-device` with the same arguments, so systemd's
  NOTIFY_SOCKET, watchdog and main PID stay the same process.

`--state-dir` is read from the arguments (and passed on unchanged): a settings file that moves
`state_dir` elsewhere needs `--state-dir` on the command line too. Every decision is one log
line on stdout (the journal).
"""

from __future__ import annotations

import argparse
import os
import site
import sys
from dataclasses import dataclass
from pathlib import Path

from .releases import Pending, Releases

# Starts a new version gets to confirm itself (READY and a healthy period, device/updating.py).
# Two: one start may die of something passing (a power cut, the watchdog on a slow first boot).
MAX_START_ATTEMPTS = 2
DEFAULT_STATE_DIR = Path("/var/lib/hyperpi")
# Set for the device: the launcher started it (it installs updates only then), and the
# factory environment's site-packages that a new environment builds on (device/install.py).
LAUNCHED_ENV = "HYPERPI_LAUNCHED"
FACTORY_SITE_ENV = "HYPERPI_FACTORY_SITE"


@dataclass(frozen=True)
class Decision:
    run: str | None  # version to run; None: the factory one
    log: tuple[str, ...] = ()
    # What to write, in this order (each step atomic; a cut between steps is decided again
    # the same way next start):
    record_failed: tuple[str, str] | None = None  # (release folder, reason)
    set_current: bool = False  # point `current` at `run`
    pending: Pending | None = None  # write it
    clear_pending: bool = False


def decide(current: str | None, pending: Pending | None, usable: set[str]) -> Decision:
    """What to run given `current`, the pending switch and the complete environments."""
    if pending is not None and pending.version != current:
        # Cut before the installer switched `current` (or after a rollback switched it back):
        # the switch never happened, so there is nothing to confirm.
        why = f"pending switch to {pending.version} not in effect (current: {current or 'factory'}); dropped"
        return _settle(current, usable, (why,), clear_pending=True)
    if pending is not None and current is not None:
        reason = None
        if current not in usable:
            reason = "its environment is incomplete"
        elif pending.attempts >= MAX_START_ATTEMPTS:
            reason = f"not confirmed after {pending.attempts} starts"
        if reason is not None:
            back = pending.previous if pending.previous in usable else None
            return Decision(
                back,
                (f"rolling back {current} to {back or 'the factory version'}: {reason}",),
                record_failed=(current, f"rolled back: {reason}"),
                set_current=True,
                clear_pending=True,
            )
        attempts = pending.attempts + 1
        return Decision(
            current,
            (f"starting {current}, not yet confirmed (start {attempts} of {MAX_START_ATTEMPTS})",),
            pending=Pending(pending.version, pending.previous, attempts),
        )
    return _settle(current, usable, ())


def _settle(current: str | None, usable: set[str], log: tuple[str, ...], clear_pending: bool = False) -> Decision:
    if current is not None and current not in usable:
        return Decision(
            None,
            (*log, f"current release {current} is incomplete: running the factory version"),
            set_current=True,
            clear_pending=clear_pending,
        )
    return Decision(current, (*log, f"running {current or 'the factory version'}"), clear_pending=clear_pending)


def apply(releases: Releases, decision: Decision) -> None:
    if decision.record_failed is not None:
        name, reason = decision.record_failed
        releases.record_failed(releases.version_of(name), reason)
    if decision.set_current:
        releases.set_current(decision.run)
    if decision.pending is not None:
        releases.set_pending(decision.pending)
    if decision.clear_pending:
        releases.clear_pending()


def choose(releases: Releases) -> str | None:
    """Decide, write what the decision says, log it; the version to run (None: factory)."""
    current = releases.current()
    usable = {v for v in releases.installed() if releases.usable(v)}
    decision = decide(current, releases.pending(), usable)
    for line in decision.log:
        print(f"hyperpi-launch: {line}", flush=True)
    apply(releases, decision)
    return decision.run


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hyperpi-launch", add_help=False)
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument("--factory", type=Path, default=Path(sys.executable).parent / "hyperpi-device")
    known, _ = parser.parse_known_args(argv)
    device_args = _without_factory(argv)
    releases = Releases(known.state_dir)
    try:
        version = choose(releases)
    except OSError as error:  # a read-only or full state directory: the factory version still runs
        print(f"hyperpi-launch: cannot update {releases.root}: {error}; running the factory version", flush=True)
        version = None
    program = known.factory if version is None else releases.executable(version)
    env = dict(os.environ)
    env[LAUNCHED_ENV] = "1"
    env[FACTORY_SITE_ENV] = os.pathsep.join(site.getsitepackages())
    try:
        os.execve(program, [str(program), *device_args], env)
    except OSError as error:
        print(f"hyperpi-launch: cannot run {program}: {error}", file=sys.stderr, flush=True)
        return 1
    return 0  # not reached


def _without_factory(argv: list[str]) -> list[str]:
    """The arguments meant for hyperpi-device (all but --factory PATH)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--factory":
            skip = True
        elif not arg.startswith("--factory="):
            out.append(arg)
    return out


if __name__ == "__main__":
    sys.exit(main())
