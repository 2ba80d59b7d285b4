"""No traceback for a user's mistake, in any command: every subcommand and option is given bad
values (one at a time, the others valid) and must answer with one line on stderr and a non-zero
exit, without reaching the network. Also: stores in use, secrets behind a redirect, a closed
pipe, Ctrl-C, --version, and a help text for every subcommand and option."""

from __future__ import annotations

import argparse
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hyperpi.hypercore import generate_keypair
from hyperpi_host import cli, devices, keys, netrun, provisioning

HYPERPI = [sys.executable, "-m", "hyperpi_host.cli"]
CASE_TIMEOUT = 20  # s; a case that gets this far is waiting for something: a failure


class ReachedNetwork(BaseException):
    """Raised where a command would join the LAN: bad values must be refused before that."""


Leaf = tuple[tuple[str, ...], argparse.ArgumentParser]


def leaf_parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Leaf]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += leaf_parsers(sub, (*path, name))
    return found or [(path, parser)]


@pytest.fixture
def household(hyperpi_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Owner ana, person bea, device kitchen (owned by ana); the network is out of reach."""
    keys.create_identity("ana", owner=True)
    keys.create_identity("bea")
    control = keys.load_identity("ana").control_feed_key
    identity = provisioning.Identity(feed=generate_keypair(), noise=generate_keypair())
    settings = provisioning.Settings(name="kitchen", board="headless", owner=control)
    provisioning.record_device(settings, identity, tmp_path / "k.img")

    def unreachable(*args: object, **kwargs: object) -> None:
        raise ReachedNetwork

    monkeypatch.setattr(netrun, "start_swarm", unreachable)
    monkeypatch.setattr(devices, "browse", unreachable)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def valid_positionals(path: tuple[str, ...], tmp: Path) -> dict[str, str]:
    """A value each positional accepts, so that the option under test is what fails."""
    return {
        "name": {"new": "cem", "import": "cem", "rm": "bea"}.get(path[-1], "ana"),
        "file": str(tmp / "export.key") if path[-1] == "export" else str(tmp / "notes.txt"),
        "key": "ana" if path[0] != "pair" else "bea",
        "device": "kitchen",
        "image": str(tmp / "notes.txt"),  # not an image: provision checks options before the image
        "target": str(tmp / "copy.img"),
    }


def bad_values(action: argparse.Action, tmp: Path) -> list[str]:
    """Values that are wrong for this argument, by the kind of value it takes."""
    a_file, a_folder = tmp / "notes.txt", tmp / "folder"
    under_a_file = str(a_file / "x")  # ENOTDIR even for root
    if action.type in (int, float):
        return ["nan", "-1", "1e999", "abc"]
    if action.metavar == "HOST:PORT":
        return ["nohost", "host:99999", ""]
    if action.dest in ("store",):
        return [str(a_file), under_a_file, ""]
    if action.dest in ("png", "read", "file", "output", "ssh_key", "bmap", "image", "target"):
        return [str(a_folder), under_a_file, ""]
    if action.dest in ("name", "device", "key", "person", "owner", "board", "follow", "wifi_country"):
        return ["", "x" * 300, "no such", "-"]
    return ["", "x" * 300]


# Text shown as it is typed (sanitised on screens): no value of these is a mistake.
FREE_TEXT = {"nick", "preset", "wifi_ssid", ("pair", "add", "name")}
# Arguments not walked, and why.
SKIPPED = {
    ("keys", "import", "file"): "`-` (stdin) is valid; bad files are tested in test_host_keys.py",
}


def cases(tmp: Path) -> list[tuple[str, list[str]]]:
    found = []
    for path, parser in leaf_parsers(cli.build_parser()):
        positionals = [a for a in parser._actions if not a.option_strings]
        fill = valid_positionals(path, tmp)
        base = [fill[a.dest] for a in positionals if a.nargs != "?" or path[0] == "flash"]
        for action in parser._actions:
            if action.nargs == 0 or action.dest in FREE_TEXT or (*path, action.dest) in FREE_TEXT:
                continue
            if (*path, action.dest) in SKIPPED:
                continue
            for value in bad_values(action, tmp):
                if action.option_strings:
                    argv = [*path, *base, f"{action.option_strings[-1]}={value}"]
                else:
                    position = positionals.index(action)
                    args = list(base) + [""] * (position + 1 - len(base))
                    args[position] = value
                    argv = [*path, *args]
                found.append((f"{' '.join(path)} {action.dest}={value[:20]!r}", argv))
    return found


def test_every_argument_with_a_bad_value_is_one_line(household: Path, capsys: pytest.CaptureFixture) -> None:
    (household / "notes.txt").write_text("not an image, not a key\n")
    (household / "folder").mkdir()
    failures = []
    walked = cases(household)
    assert len(walked) > 100, "the walk found the commands"

    def timeout(*_: object) -> None:
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, timeout)
    try:
        for label, argv in walked:
            signal.alarm(CASE_TIMEOUT)
            try:
                code = cli.main(argv)
            except SystemExit as exit:
                code = exit.code
            except ReachedNetwork:
                code = "reached the network"
            except BaseException as error:  # noqa: BLE001 - any escape is what this test looks for
                code = f"raised {type(error).__name__}: {error}"
            finally:
                signal.alarm(0)
            out, err = capsys.readouterr()
            one_line = err.endswith("\n") and err.count("\n") == 1
            if not (isinstance(code, int) and code != 0 and one_line and "Traceback" not in err):
                failures.append(f"{label}: exit {code!r}, stderr {err!r}")
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not failures, "\n".join(failures)


def test_every_subcommand_and_option_has_help() -> None:
    missing = []
    for path, parser in leaf_parsers(cli.build_parser()):
        for action in parser._actions:
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path)} {action.option_strings or action.dest}")
    assert not missing, missing


@pytest.mark.parametrize(
    ("program", "module"), [("hyperpi", "hyperpi_host.cli"), ("hyperpi-device", "hyperpi.device.main")]
)
def test_version_of_both_programs(program: str, module: str) -> None:
    from hyperpi import __version__

    result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, f"{program} {__version__}\n")


def run_hyperpi(home: Path, *argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYPERPI_HOME": str(home)}
    return subprocess.run([*HYPERPI, *argv], capture_output=True, text=True, env=env, timeout=60, **kwargs)


def test_export_behind_a_redirect_is_made_private(hyperpi_home: Path, tmp_path: Path) -> None:
    keys.create_identity("ana")
    target = tmp_path / "ana.key"
    fd = os.open(target, os.O_WRONLY | os.O_CREAT, 0o644)  # what `> ana.key` makes under umask 022
    os.fchmod(fd, 0o644)
    try:
        result = subprocess.run([*HYPERPI, "keys", "export", "ana"], stdout=fd, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "HYPERPI_HOME": str(hyperpi_home)}, timeout=60)  # fmt: skip
    finally:
        os.close(fd)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "made the file stdout goes to private" in result.stderr
    assert b"secret_key" in target.read_bytes()


def test_a_store_in_use_names_its_holder(hyperpi_home: Path, tmp_path: Path) -> None:
    keys.create_identity("ana", owner=True)
    env = {**os.environ, "HYPERPI_HOME": str(hyperpi_home), "PYTHONUNBUFFERED": "1"}
    store = tmp_path / "chat"
    writer = subprocess.Popen(
        [*HYPERPI, "chat", "write", "--store", str(store), "--no-mdns", "--listen", "127.0.0.1:0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    host = subprocess.Popen(
        [*HYPERPI, "chat", "write", "--as", "ana", "--no-mdns", "--listen", "127.0.0.1:0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert writer.stdout is not None and host.stdout is not None
        key = writer.stdout.readline().strip()
        host.stdout.readline()
        second = run_hyperpi(hyperpi_home, "chat", "write", "--store", str(store), "--no-mdns", input="lost?\n")
        assert second.returncode == 1
        assert second.stderr == (
            f"hyperpi: the store {store.resolve()} is in use by pid {writer.pid}: "
            "hyperpi chat write; stop that command or wait for it to end\n"
        )
        viewer = run_hyperpi(hyperpi_home, "chat", "view", key, "--store", str(store), "--no-mdns")
        assert viewer.returncode == 1 and f"in use by pid {writer.pid}" in viewer.stderr
        # The host store too: `chat write --as` holds it, a key change waits its turn.
        other = run_hyperpi(hyperpi_home, "keys", "new", "--owner", "bea")
        assert other.returncode == 1 and f"in use by pid {host.pid}: hyperpi chat write" in other.stderr
        assert other.stderr.count("\n") == 1 and not keys.is_stored("bea")
    finally:
        for proc in (writer, host):
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    # Gone with its holder: the store opens again.
    assert run_hyperpi(hyperpi_home, "keys", "new", "--owner", "bea").returncode == 0


def test_closed_pipe_is_quiet(hyperpi_home: Path) -> None:
    keys.create_identity("ana")
    env = {**os.environ, "HYPERPI_HOME": str(hyperpi_home)}
    proc = subprocess.Popen([*HYPERPI, "qr", "ana", "--style", "dark"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # as `| head -0`: the reader is gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(60) == cli.EXIT_BROKEN_PIPE
    assert "Traceback" not in err and "BrokenPipe" not in err


READ_SYSCALL = {"x86_64": 0, "aarch64": 63}  # the `read` system call's number


def wait_until_reading_stdin(pid: int) -> None:
    """Until the process blocks in read(0, ...): past its imports, waiting for the user."""
    number = READ_SYSCALL[os.uname().machine]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
        if fields[:2] == [str(number), "0x0"]:
            return
        time.sleep(0.05)
    raise AssertionError("the command never read stdin")


def test_ctrl_c_while_waiting_is_one_line(hyperpi_home: Path) -> None:
    env = {**os.environ, "HYPERPI_HOME": str(hyperpi_home)}
    # `keys import NAME -` waits for the export on stdin: Ctrl-C there.
    proc = subprocess.Popen([*HYPERPI, "keys", "import", "bea", "-"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)  # fmt: skip
    wait_until_reading_stdin(proc.pid)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "hyperpi: interrupted\n"
