"""End to end: `hyperpi-device` processes on a real LAN of network namespaces (needs root).

Namespace a runs a headless device ("kitchen"), namespace b a device with a simulated 128x64
OLED Bonnet ("hallway") that follows the kitchen's feed and the owner's control feed, and
namespace c the owner: a small process with a control feed and a chat feed on a swarm. The
devices find each other and the owner with mDNS alone (no static peers).

- A button press on the kitchen (a key on its `--simulate` stdin drives a gpiozero mock pin)
  appends a canned message that the hallway logs and draws: a new frame right after it.
- The owner appends `follow` to the control feed; the hallway starts replicating and showing
  the owner's chat feed.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

from PIL import Image, ImageChops

from tests.netns.conftest import NetnsLan

STEP_TIMEOUT = 30.0  # mDNS discovery takes ~1.5 s; a busy 2-core CI machine gets room

OWNER = r"""
import asyncio, json, sys, time
from pathlib import Path
from hyperpi.hypercore import Core, Store
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.swarm import Swarm
from hyperpi.wire.noise import keypair

async def main(folder):
    store = Store(Path(folder))
    control = Core.create(store)  # only this process holds its secret key: the owner
    chat = Core.create(store)
    chat.append([json.dumps({"type": "chat", "text": "hello from the owner",
                             "time": int(time.time() * 1000), "nick": "owner"}).encode()])
    cores = CoreSet(store, [control, chat])
    swarm = Swarm(keypair(), name="owner", on_connection=lambda conn: replicate(conn, cores))
    for core in cores:
        await swarm.join(core.discovery_key)
    await swarm.start()
    print(json.dumps({"control": control.key.hex(), "chat": chat.key.hex()}), flush=True)
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        control.append([line.strip().encode()])  # one control entry per line
        print("appended", control.length, flush=True)
    await swarm.stop()
    store.close()

asyncio.run(main(sys.argv[1]))
"""


class LoggedProcess:
    """A process in a namespace whose stdout lines are queued with their arrival time."""

    def __init__(self, process: subprocess.Popen[str], name: str) -> None:
        self.process = process
        self.name = name
        self.log: list[str] = []
        self._lines: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put((time.monotonic(), line.rstrip()))

    def wait_for(self, needle: str, timeout: float = STEP_TIMEOUT) -> tuple[float, str]:
        """(arrival time, line) of the next line containing `needle`."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"{self.name}: no line with {needle!r} in {timeout:.0f} s; log:\n" + "\n".join(self.log)
                ) from None
            self.log.append(line)
            if needle in line:
                return at, line

    def send(self, text: str) -> float:
        assert self.process.stdin is not None
        sent = time.monotonic()
        self.process.stdin.write(text)
        self.process.stdin.flush()
        return sent

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        while not self._lines.empty():
            self.log.append(self._lines.get()[1])
        return code


def feed_key(state: Path) -> bytes:
    """Make a device's feed secret (0600) before it starts, and return its feed key."""
    from hyperpi.device.main import FEED_SECRET, load_secret
    from hyperpi.hypercore import core_key

    state.mkdir(mode=0o700, parents=True)
    return core_key(load_secret(state / FEED_SECRET).public_key)


def start_device(lan: NetnsLan, ns: str, config: Path, *extra: str) -> LoggedProcess:
    process = lan.python(
        ns, "-m", "hyperpi.device.main", "--config", str(config), "--simulate", "--lan", *extra,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    device = LoggedProcess(process, ns)
    device.wait_for("ready in")
    return device


def start_pair(lan: NetnsLan, tmp: Path, owner: bytes | None = None) -> tuple[LoggedProcess, LoggedProcess, Path]:
    """The kitchen (headless, namespace a) and the hallway (OLED, namespace b, follows the
    kitchen and, if given, the owner's control feed), connected; and the hallway's frames.
    The hallway starts without an address: its status goes from "no network" to "1 peer" as
    the address comes and the kitchen is found."""
    kitchen_key = feed_key(tmp / "kitchen")
    feed_key(tmp / "hallway")
    (tmp / "kitchen.toml").write_text(
        f'name = "kitchen"\nboard = "headless"\nstate_dir = "{tmp / "kitchen"}"\npresets = ["Dinner is ready", "Yes"]\n'
    )
    (tmp / "hallway.toml").write_text(
        f'name = "hallway"\nboard = "oled-bonnet"\nstate_dir = "{tmp / "hallway"}"\n'
        + (f'owner = "{owner.hex()}"\n' if owner else "")
        + f'[[follow]]\nname = "kitchen"\nkey = "{kitchen_key.hex()}"\n'
    )
    frames = tmp / "hallway-frames"
    kitchen = start_device(lan, "a", tmp / "kitchen.toml")
    lan.remove_address("b")  # the hallway boots before DHCP answered
    hallway = start_device(lan, "b", tmp / "hallway.toml", "--frames", str(frames))
    hallway.wait_for("network status: no network")
    lan.add_address("b")  # ("no peers yet" may be skipped: the kitchen can be found at once)
    # Found by mDNS, connected, and the kitchen's first message replicated.
    hallway.wait_for("network status: 1 peer")
    hallway.wait_for("message from kitchen: kitchen is online")
    hallway.wait_for("frame saved")
    time.sleep(2.5)  # past the hallway's 2 s splash: what follows is drawn on the chat screen
    return kitchen, hallway, frames


def press_and_see(kitchen: LoggedProcess, hallway: LoggedProcess, frames: Path, text: str) -> float:
    """Press send on the kitchen; seconds until the hallway drew the message. Checks that the
    frame drawn right after the message arrived differs from the one before it."""
    pressed = kitchen.send("s")  # headless board: button "send" (GPIO 6) on a mock pin
    assert "sent #" in kitchen.wait_for(f": {text}")[1]
    hallway.wait_for(f"message from kitchen: {text}")
    shown, line = hallway.wait_for("frame saved")
    number = int(line.rsplit("frame-", 1)[1].split(".")[0])
    after = Image.open(frames / f"frame-{number:05d}.png")
    before = Image.open(frames / f"frame-{number - 1:05d}.png")
    assert ImageChops.difference(after.convert("L"), before.convert("L")).getbbox() is not None
    return shown - pressed


def test_button_press_reaches_the_other_screen_and_owner_follow_applies(lan: NetnsLan, tmp_path: Path) -> None:
    owner = LoggedProcess(lan.python("c", "-c", OWNER, str(tmp_path / "owner")), "owner")
    keys = json.loads(owner.wait_for("control")[1])
    kitchen, hallway, frames = start_pair(lan, tmp_path, owner=bytes.fromhex(keys["control"]))

    latency = press_and_see(kitchen, hallway, frames, "Dinner is ready")
    assert 0 < latency < STEP_TIMEOUT

    # The owner, from a third namespace, tells the hallway to follow the owner's chat feed.
    owner.send(json.dumps({"type": "follow", "key": keys["chat"], "name": "Ana"}) + "\n")
    owner.wait_for("appended 1")
    hallway.wait_for("control feed: follow Ana")
    hallway.wait_for("message from Ana: hello from the owner")
    hallway.wait_for("frame saved")

    assert kitchen.terminate() == 0
    assert hallway.terminate() == 0
    for device in (kitchen, hallway):
        assert "Traceback" not in "\n".join(device.log)
        assert any("network stopped" in line for line in device.log)
