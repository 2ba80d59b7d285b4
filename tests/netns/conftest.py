"""A real LAN on this machine: network namespaces joined by a bridge, with multicast.

The `lan` fixture builds, per test:

    namespace <prefix>-br : bridge br0 (multicast snooping off, so mDNS floods to all ports)
    namespace <prefix>-a  : eth0 10.99.0.1/24   --veth-- port va in br0
    namespace <prefix>-b  : eth0 10.99.0.2/24   --veth-- port vb in br0
    namespace <prefix>-c  : eth0 10.99.0.3/24   --veth-- port vc in br0

Each device namespace has `lo` up and a route for 224.0.0.0/4 on eth0 (mDNS needs a
multicast route; there is no default route). The veth ends are created directly inside
the namespaces, so nothing is ever added to the root namespace. The prefix holds the
pytest pid, so parallel runs do not collide, and leftovers of a killed run (whose pid is
gone) are removed the next time. Teardown kills the processes the test started in the
namespaces and deletes the namespaces, which deletes the veths and the bridge, also when
the test fails.

Creating namespaces needs root: without it the tests are skipped with that reason
(CI runs as root and runs them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBNET = "10.99.0"  # private, and only ever configured inside the test namespaces
PREFIX = "hpt"  # namespace names: hpt<pid>-<device>
DEVICES = ("a", "b", "c")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def _remove_leftovers() -> None:
    """Delete namespaces of earlier test runs whose pytest process no longer exists."""
    listing = _ip("netns", "list", check=False).stdout
    for match in re.finditer(rf"^({PREFIX}(\d+)-\w+)", listing, re.MULTILINE):
        name, pid = match.group(1), int(match.group(2))
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            _kill_namespace_processes(name)
            _ip("netns", "del", name, check=False)


def _kill_namespace_processes(namespace: str) -> None:
    pids = _ip("netns", "pids", namespace, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


class NetnsLan:
    """A bridged LAN of device namespaces. Addresses live only inside the namespaces."""

    def __init__(self, devices: tuple[str, ...] = DEVICES) -> None:
        self.prefix = f"{PREFIX}{os.getpid()}"
        self.bridge = f"{self.prefix}-br"
        self.devices = devices
        self.namespaces = {device: f"{self.prefix}-{device}" for device in devices}
        self.addresses = {device: f"{SUBNET}.{index + 1}" for index, device in enumerate(devices)}
        self.processes: list[subprocess.Popen[str]] = []

    # -- building and removing -------------------------------------------------------

    def create(self) -> None:
        _ip("netns", "add", self.bridge)
        _ip("-n", self.bridge, "link", "set", "lo", "up")
        _ip("-n", self.bridge, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", self.bridge, "link", "set", "br0", "up")
        for device, namespace in self.namespaces.items():
            _ip("netns", "add", namespace)
            port = self.port(device)
            # Both ends are born in their namespaces: nothing touches the root namespace.
            _ip("link", "add", "eth0", "netns", namespace, "type", "veth", "peer", "name", port, "netns", self.bridge)
            _ip("-n", self.bridge, "link", "set", port, "master", "br0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            _ip("-n", namespace, "addr", "add", f"{self.addresses[device]}/24", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "multicast", "on", "up")
            _ip("-n", namespace, "route", "add", "224.0.0.0/4", "dev", "eth0")

    def destroy(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for namespace in [*self.namespaces.values(), self.bridge]:
            _kill_namespace_processes(namespace)
            _ip("netns", "del", namespace, check=False)

    # -- using it --------------------------------------------------------------------

    def port(self, device: str) -> str:
        """The bridge-side interface of a device's link (in the bridge namespace)."""
        return f"v{device}"

    def exec_args(self, device: str, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.namespaces[device], *args]

    def run(
        self, device: str, *args: str, timeout: float = 60, check: bool = True, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside a device's namespace and wait for it."""
        return subprocess.run(
            self.exec_args(device, *args), capture_output=True, text=True, timeout=timeout, check=check, **kwargs
        )  # type: ignore[call-overload]

    def popen(self, device: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
        """Start a command inside a device's namespace; it is killed at teardown.

        stdin/stdout are pipes (text, line buffered) and stderr is inherited unless given.
        """
        options: dict[str, object] = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True, "bufsize": 1}
        options.update(kwargs)
        process = subprocess.Popen(self.exec_args(device, *args), **options)  # type: ignore[call-overload]
        self.processes.append(process)
        return process

    def python(self, device: str, *args: str, **kwargs: object) -> subprocess.Popen[str]:
        """Start this venv's Python inside a device's namespace (unbuffered output)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.update(kwargs.pop("env", {}))  # type: ignore[arg-type]
        return self.popen(device, sys.executable, *args, env=env, cwd=str(ROOT), **kwargs)

    def link_down(self, device: str) -> None:
        """Unplug a device: its bridge port goes down (the device's eth0 loses carrier)."""
        _ip("-n", self.bridge, "link", "set", self.port(device), "down")

    def link_up(self, device: str) -> None:
        _ip("-n", self.bridge, "link", "set", self.port(device), "up")

    def remove_address(self, device: str) -> None:
        """Take the device's IPv4 address away, as before DHCP answered."""
        _ip("-n", self.namespaces[device], "addr", "del", f"{self.addresses[device]}/24", "dev", "eth0")

    def add_address(self, device: str) -> None:
        _ip("-n", self.namespaces[device], "addr", "add", f"{self.addresses[device]}/24", "dev", "eth0")


class JsonLinesAgent:
    """A test process in a namespace that prints one JSON event per line on stdout (each with an
    "event" key) and takes commands on stdin; a reader thread collects the events."""

    timeout = 15.0  # seconds a wait_for() waits by default

    def __init__(self, device: str, process: subprocess.Popen[str]) -> None:
        self.device = device
        self.process = process
        self.events: list[dict[str, Any]] = []  # everything printed so far, in order
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self.changed:
                self.events.append(json.loads(line))
                self.changed.notify_all()

    def mark(self) -> int:
        """The index the next event will have."""
        with self.changed:
            return len(self.events)

    def send(self, command: str) -> int:
        """Send a command; returns the event index its answer will come after."""
        start = self.mark()
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return start

    def wait_for(self, kind: str, timeout: float | None = None, since: int = 0, **match: Any) -> dict[str, Any]:
        """The first event of this kind (at or after index `since`) matching `match`."""
        timeout = self.timeout if timeout is None else timeout

        def found() -> dict[str, Any] | None:
            for event in self.events[since:]:
                if event["event"] == kind and all(event.get(k) == v for k, v in match.items()):
                    return event
            return None

        with self.changed:
            if not self.changed.wait_for(lambda: found() is not None, timeout=timeout):
                raise AssertionError(
                    f"{self.device}: no {kind} event matching {match} in {timeout} s; saw {self.events[since:]}"
                )
            return found()  # type: ignore[return-value]


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces (CI runs as root and runs these)")
    if shutil.which("ip") is None:
        pytest.fail("the `ip` command is missing: tests/system-deps.sh installs iproute2")


@pytest.fixture
def lan() -> Iterator[NetnsLan]:
    """Three device namespaces a, b, c on one bridge; removed after the test, pass or fail."""
    _require_root()
    _remove_leftovers()
    network = NetnsLan()
    try:
        network.create()
        yield network
    finally:
        network.destroy()
