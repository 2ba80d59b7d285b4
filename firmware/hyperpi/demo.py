"""`make demo`: two simulated devices on this machine chat with each other.

Starts two `hyperpi-device --simulate` processes, "kitchen" (Display HAT Mini profile) and
"hallway" (128x64 OLED Bonnet profile), each following the other's feed. They find each other
as static peers on loopback (127.0.0.1) with mDNS off: mDNS would announce them on the real
LAN, and the demo must not send anything off this machine. A press of button B on the kitchen
(keys on the simulator's stdin press its mock GPIO pins) sends a canned message; it replicates
to the hallway, which shows it; the hallway answers the same way. Both screens are written as
PNGs (default `build/demo/<name>.png`) and the demo exits 0, or 1 with both logs if a step
did not happen in time.

    python -m hyperpi.demo [--out build/demo]
"""

from __future__ import annotations

import argparse
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

STEP_TIMEOUT = 30.0  # seconds for any one step; each takes well under 2 s on a laptop
SPLASH_WAIT = 2.5  # the splash shows for 2 s (device.app.SPLASH_SECONDS); a press there only leaves it
SETTLE = 1.5  # after the last message: delivery ticks arrive and the send flash (1 s) ends


class DemoError(Exception):
    pass


class SimulatedDevice:
    """One `hyperpi-device --simulate` process, its log lines queued as they arrive."""

    def __init__(self, name: str, board: str, presets: list[str], root: Path, port: int) -> None:
        from hyperpi.device.main import FEED_SECRET, load_secret
        from hyperpi.hypercore import core_key

        self.name = name
        self.board = board
        self.presets = presets
        self.port = port
        self.state = root / name
        self.state.mkdir(mode=0o700)
        self.frames = root / f"{name}-frames"
        # The feed's secret is made here, so the other device can follow the feed from the start.
        self.feed_key = core_key(load_secret(self.state / FEED_SECRET).public_key)
        self.config = root / f"{name}.toml"
        self.log: list[str] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self.process: subprocess.Popen[bytes] | None = None
        self.screen: Path | None = None  # the PNG the simulator saved on request ("p")

    def write_config(self, peer: SimulatedDevice) -> None:
        presets = ", ".join(f'"{p}"' for p in self.presets)
        self.config.write_text(
            f'name = "{self.name}"\nboard = "{self.board}"\npresets = [{presets}]\n'
            f'state_dir = "{self.state}"\nlisten_host = "127.0.0.1"\nlisten_port = {self.port}\n'
            f'mdns = false\npeers = ["127.0.0.1:{peer.port}"]\n'
            f'[[follow]]\nname = "{peer.name}"\nkey = "{peer.feed_key.hex()}"\n'
        )

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hyperpi.device.main", "--config", str(self.config), "--simulate",
             "--frames", str(self.frames)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            self._lines.put(raw.decode(errors="replace").rstrip())

    def wait_for(self, needle: str, timeout: float = STEP_TIMEOUT) -> str:
        """The next log line containing `needle`; DemoError if none comes in time."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise DemoError(f"{self.name}: no log line with {needle!r} within {timeout:.0f} s") from None
            self.log.append(line)
            if needle in line:
                return line

    def press(self, keys: str) -> None:
        """Keys on the simulator's stdin: each letter presses the button named by it."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(keys.encode())
        self.process.stdin.flush()

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return None
        finally:
            while not self._lines.empty():
                self.log.append(self._lines.get())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def say(text: str) -> None:
    print(f"demo: {text}", flush=True)


def converse(kitchen: SimulatedDevice, hallway: SimulatedDevice) -> None:
    for device in (kitchen, hallway):
        device.start()
    for device in (kitchen, hallway):
        device.wait_for("ready in")
    for device in (kitchen, hallway):
        device.wait_for("connected to")
    say("both devices up and connected over loopback (127.0.0.1, static peers, no mDNS)")
    time.sleep(SPLASH_WAIT)

    for sender, receiver in ((kitchen, hallway), (hallway, kitchen)):
        text = sender.presets[0]
        pressed = time.monotonic()
        sender.press("b")  # button B: send the selected canned message
        sender.wait_for(f"sent #1: {text}")
        receiver.wait_for(f"message from {sender.name}: {text}")
        receiver.wait_for("frame saved")
        say(f"{sender.name} button B -> {text!r} on {receiver.name}'s screen in "
            f"{(time.monotonic() - pressed) * 1000:.0f} ms")  # fmt: skip
    time.sleep(SETTLE)
    for device in (kitchen, hallway):  # while both still run: the status line shows the peer
        device.press("p")
        device.screen = Path(device.wait_for("saved ").split("saved ", 1)[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hyperpi.demo", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("build/demo"), help="folder for the screens (PNG)")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="hyperpi-demo-") as tmp:
        root = Path(tmp)
        kitchen = SimulatedDevice("kitchen", "display-hat-mini", ["Dinner is ready", "Yes", "No"], root, free_port())
        hallway = SimulatedDevice("hallway", "oled-bonnet", ["On my way", "Yes", "No"], root, free_port())
        kitchen.write_config(hallway)
        hallway.write_config(kitchen)
        try:
            converse(kitchen, hallway)
        except DemoError as e:
            for device in (kitchen, hallway):
                device.stop()
                print(f"--- {device.name} log ---\n" + "\n".join(device.log), file=sys.stderr)
            print(f"demo failed: {e}", file=sys.stderr)
            return 1
        finally:
            codes = {device.name: device.stop() for device in (kitchen, hallway)}
        if any(code != 0 for code in codes.values()):
            print(f"demo failed: exit codes {codes}", file=sys.stderr)
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        for device in (kitchen, hallway):
            target = args.out / f"{device.name}.png"
            assert device.screen is not None
            shutil.copyfile(device.screen, target)
            say(f"{device.name} ({device.board}) screen: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
