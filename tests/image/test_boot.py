"""Boot the real image in QEMU 10 and check the Pi's hardware path and the chat (`make image-test` only).

Needs `make image` first (build/hyperpi-<version>-arm64.img), qemu-system-aarch64 10 (image/deps.sh)
and root (the host answers the guest's NTP on port 123). Collected only when HYPERPI_IMAGE_TEST=1
(tests/image/conftest.py): each boot under full emulation takes minutes.

1. Emulated Pi 3 (raspi3b), overlay-merged DTB as the firmware would pass it, an SSD130x-style OLED
   model at 0x3C on I2C1, a card provisioned for the Display HAT Mini:
   - the service reports ready; the host's `hyperpi chat view` gets the device's boot message and
     the host's `hyperpi chat write` shows up in the device's log;
   - /dev/spidev0.0, /dev/spidev0.1, /dev/i2c-1, /dev/gpiochip0 exist with groups spi/i2c/gpio,
     i2c-dev is loaded, and the service (its own user) sent whole frames over the emulated SPI
     controller (the kernel's SPI statistics) with no GPIO, button or display error;
   - `hyperpi-device --check` as the service user passes for the Display HAT Mini, then for the
     OLED Bonnet, whose service then sends its frames over I2C to the OLED model;
   - hardening: secrets 0600 owned by the service user, none on the FAT partition, SSH host
     keys, root grown, journal in RAM, no password;
   - unattended security updates on, and raspi-firmware's kernel hook (run as a kernel upgrade
     runs it) keeps the overlay, kernel and root settings in config.txt and cmdline.txt.
2. A second copy booted with the stock DTB (no overlay): its own SSH host keys, and `--check`
   fails with the spidev line that names the overlay.
3. QEMU `virt` with the image's kernel and root, settings `board = "qemu-virt-test"`: QMP
   `system_powerdown`, repeated for ~0.5 s, holds the PL061 line high: real edges through the
   kernel's GPIO character device, lgpio, gpiozero and the service, which appends its first
   preset; the host's `hyperpi chat view` receives it.
4. An update over the LAN on the emulated Pi 3: the owner's host publishes a new version (a wheel
   of this checkout with a bumped version); the device downloads it through its control feed,
   installs it beside the factory version, restarts through `hyperpi-launch`, reports it
   running and confirms it.
5. The power-cut model on the emulated Pi 3: appends through the service's store, QEMU killed
   mid-append, the same card booted again: no acknowledged append lost, the store audits clean.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "image"))

import qemu_boot

BUILD = ROOT / "build"
PORT = 49737  # the device's replication port (hyperpi.device.config.DEFAULT_PORT)
# Full-system emulation of a 4-core Pi 3 on 2 shared host cores: the kernel, systemd and a Python
# service start in minutes, not seconds. Generous, as a slow boot is not what this test judges.
BOOT_TIMEOUT_S = 1800
CHAT_TIMEOUT_S = 300
USB_NOT_ENUMERATED = "usb usb1-port1: attempt power cycle"  # the guest kernel, after failed tries
FRAME_BYTES = 320 * 240 * 2  # one RGB565 frame of the Display HAT Mini
# The host side talks to the emulated machine through the forwarded loopback port only: no mDNS.
LOOPBACK_ONLY = ["--listen", "127.0.0.1:0", "--no-mdns"]


def hyperpi(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hyperpi_host.cli", *args], text=True, capture_output=True, check=False, **kwargs
    )


def hyperpi_process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hyperpi_host.cli", *args, *LOOPBACK_ONLY],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def chat_write(store: Path, extra: list[str]) -> subprocess.Popen[str]:
    return hyperpi_process("chat", "write", "--store", str(store), "--nick", "host", *extra)


def chat_view(key: str, store: Path, peer: str, count: int, **kwargs) -> subprocess.CompletedProcess[str]:
    return hyperpi(
        "chat",
        "view",
        key,
        "--store",
        str(store),
        "--peer",
        peer,
        *LOOPBACK_ONLY,
        "--json",
        "--exit-after",
        str(count),
        timeout=CHAT_TIMEOUT_S,
        **kwargs,
    )


def ready_and_online(machine: qemu_boot.Machine, feed_key: str, store: Path) -> str:
    """Wait for the service's ready line, then read its boot message from the host; returns the
    forwarded peer address."""
    machine.wait_for(re.escape(qemu_boot.READY_LINE), BOOT_TIMEOUT_S)
    if machine.machine == "raspi3b" and USB_NOT_ENUMERATED in machine.console():
        # QEMU's USB host controller model now and then fails to enumerate its usb-net adapter
        # (the guest logs "dwc2 ...: Not connected"): that boot has no network at all, which is
        # the emulator's fault, not the image's. Boot the same card again, once.
        machine.stop()
        machine.start()
        machine.wait_for(re.escape(qemu_boot.READY_LINE), BOOT_TIMEOUT_S)
    peer = f"127.0.0.1:{machine.host_port}"
    view = chat_view(feed_key, store, peer, 1)
    assert view.returncode == 0, view.stderr
    boot_message = json.loads(view.stdout.splitlines()[0])
    assert boot_message["type"] == "chat" and boot_message["text"], boot_message
    return peer


@pytest.fixture(scope="module")
def built_image() -> Path:
    images = sorted(BUILD.glob("hyperpi-*-arm64.img"))
    if not images:
        pytest.fail("no build/hyperpi-*-arm64.img: run `make image` first (make image-test does)")
    if shutil.which("qemu-system-aarch64") is None:
        pytest.fail("qemu-system-aarch64 missing: run image/deps.sh")
    return images[-1]


@pytest.fixture(scope="module")
def ntp() -> Iterator[qemu_boot.NtpResponder]:
    responder = qemu_boot.NtpResponder()
    yield responder
    responder.close()


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HYPERPI_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def provision(image: Path, card: Path, name: str, board: str, *extra: str) -> dict:
    done = hyperpi(
        "provision", str(image), "-o", str(card), "--device", name, "--board", board, "--listen-port", str(PORT), *extra
    )
    assert done.returncode == 0, done.stderr
    return json.loads((Path(os.environ["HYPERPI_HOME"]) / "devices" / f"{name}.json").read_text())


def workdir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir()
    return path


@pytest.mark.timeout(2 * BOOT_TIMEOUT_S + 6 * CHAT_TIMEOUT_S)
def test_pi3_hardware_chat_and_hardening(
    built_image: Path, tmp_path: Path, home: Path, ntp: qemu_boot.NtpResponder
) -> None:
    host_store = tmp_path / "host-feed"
    creator = chat_write(host_store, [])  # creates the host's feed and prints its key first
    host_key = creator.stdout.readline().strip()
    creator.terminate()
    creator.wait(60)
    assert host_key, creator.stderr.read()
    card = tmp_path / "card.img"
    record = provision(built_image, card, "qemu-pi", "display-hat-mini", "--follow", f"host={host_key}")
    marker = f"hello from the host {os.getpid()}"
    plan = {
        "wait_s": BOOT_TIMEOUT_S,
        "marker": marker,
        "ntp": True,
        "checks": [{"board": "display-hat-mini"}, {"board": "oled-bonnet", "restart": True}],
        "updates": True,
        "modules": True,
    }

    pi = qemu_boot.Machine(card, workdir(tmp_path, "boot1"), PORT, plan=plan, oled=True)
    pi.start()
    try:
        peer = ready_and_online(pi, record["feed_key"], tmp_path / "view")

        writer = chat_write(host_store, ["--peer", peer])
        try:
            writer.stdin.write(marker + "\n")
            writer.stdin.flush()
            pi.wait_for(r"message from [^\n]*" + re.escape(marker), CHAT_TIMEOUT_S)
        finally:
            writer.terminate()
            writer.wait(60)
        pi.wait_for(re.escape(qemu_boot.CHECK_PREFIX) + "done", 3 * CHAT_TIMEOUT_S)
        facts, checks, updates = pi.report("facts"), pi.report("checks"), pi.report("updates")
        modules = pi.report("modules")
        pi.wait_for(re.escape(qemu_boot.POWER_DOWN), CHAT_TIMEOUT_S)
    finally:
        pi.stop()

    # The board's buses and pins, as the service user sees them.
    nodes = facts["nodes"]
    assert {n: nodes.get(n, {}).get("group") for n in qemu_boot.GUEST_NODES} == {
        "/dev/spidev0.0": "spi",
        "/dev/spidev0.1": "spi",
        "/dev/i2c-1": "i2c",
        "/dev/gpiochip0": "gpio",
    }, nodes
    assert "i2c_dev" in facts["modules"]
    # The slimmed kernel (image/kernel-modules.txt): every kept module loads on the emulated Pi.
    assert modules["kept"] > 100 and modules["failed"] == {}, modules
    assert {"gpio", "spi", "i2c", "video"} <= set(facts["service_user_groups"])
    assert facts["spi_bytes_tx"].get("spi0.1", 0) >= FRAME_BYTES, facts["spi_bytes_tx"]
    log = "\n".join(facts["service_log"])
    assert "display: first frame sent (st7789 320x240)" in log, log
    assert not re.search(r"no GPIO|no buttons|no screen|frame not sent|Traceback", log), log
    assert facts["timesync"] is True and ntp.answered > 0

    hat, oled = checks
    assert hat["exit"] == 0 and hat["lines"][-1].startswith("check:"), hat
    assert all(line.startswith("ok") for line in hat["lines"][:-1]), hat
    assert any(re.match(r"ok\s+spi\b", line) for line in hat["lines"]), hat
    assert oled["exit"] == 0 and all(line.startswith("ok") for line in oled["lines"][:-1]), oled
    assert any(re.match(r"ok\s+i2c\b.*0x3c", line) for line in oled["lines"]), oled
    assert oled["active"] == "active"
    oled_log = "\n".join(oled["service_log"])
    assert "display: first frame sent (ssd1306 128x64)" in oled_log, oled_log
    assert "frame not sent" not in oled_log, oled_log

    for path in ("/var/lib/hyperpi/feed.secret", "/var/lib/hyperpi/noise.secret"):
        assert facts[path] == {"mode": "0o600", "uid": 900, "gid": 900}, (path, facts[path])
    assert facts["secret_on_fat"] is False and facts["fat_bytes"] > 0
    assert len(facts["ssh_host_keys"]) >= 1
    assert facts["units"]["hyperpi-device"] == "active" and facts["units"]["ssh"] != "active"
    assert facts["units"]["hyperpi-growfs"] == "active"
    shipped_root = qemu_boot.boot_and_root(card)[1].size
    assert facts["root_size"] > shipped_root + (256 << 20), "the root fs grew to the (padded) card"
    assert facts["passwords"] == [] and facts["journal_storage"] is False
    # The kernel's side of the frames: no SPI or I2C transfer failed. (Its other bus warnings are
    # the emulation's: QEMU's firmware model has no GPIO expander, and the harness removed SPI DMA.)
    failed = [
        line for line in facts["kernel_bus_errors"] if re.search(r"timed out|transfer failed|failed to transfer", line)
    ]
    assert failed == [], facts["kernel_bus_errors"]

    # Debian's security updates install by themselves; a kernel upgrade's raspi-firmware hook
    # rewrites config.txt and cmdline.txt and keeps the board's settings in them.
    assert updates["periodic"].get("Unattended-Upgrade") == "1" and updates["unattended_upgrade"], updates
    assert updates["timers"] == {"apt-daily.timer": "enabled", "apt-daily-upgrade.timer": "enabled"}, updates
    assert updates["hooks"] and updates["hook_exit"] == 0, updates
    assert re.search(r"^dtoverlay=hyperpi$", updates["config_txt"], re.MULTILINE), updates["config_txt"]
    assert re.search(r"^kernel=vmlinuz-\S+$", updates["config_txt"], re.MULTILINE), updates["config_txt"]
    assert "root=PARTUUID=68797069-02" in updates["cmdline_txt"], updates["cmdline_txt"]

    # A second copy of the same card on a Pi whose firmware did not apply the overlay.
    second = qemu_boot.Machine(
        card,
        workdir(tmp_path, "boot2"),
        PORT,
        overlay=False,
        plan={"wait_s": BOOT_TIMEOUT_S, "checks": [{"board": "display-hat-mini"}]},
    )
    second.start()
    try:
        second.wait_for(re.escape(qemu_boot.CHECK_PREFIX) + "done", BOOT_TIMEOUT_S)
        facts2, (bare,) = second.report("facts"), second.report("checks")
    finally:
        second.stop()
    assert facts2["ssh_host_keys"] and not set(facts2["ssh_host_keys"]) & set(facts["ssh_host_keys"])
    assert "/dev/spidev0.1" not in facts2["nodes"]
    assert bare["exit"] == 1, bare
    assert any(re.match(r"FAIL.*spidev0\.1.*overlay", line) for line in bare["lines"]), bare


@pytest.mark.timeout(BOOT_TIMEOUT_S + 3 * CHAT_TIMEOUT_S)
def test_button_edge_on_virt_reaches_the_host(built_image: Path, tmp_path: Path, home: Path) -> None:
    card = tmp_path / "virt.img"
    record = provision(built_image, card, "qemu-virt", "qemu-virt-test")
    vm = qemu_boot.Machine(card, workdir(tmp_path, "virt"), PORT, machine="virt")
    vm.start()
    try:
        peer = ready_and_online(vm, record["feed_key"], tmp_path / "view")
        viewer = hyperpi_process(
            "chat",
            "view",
            record["feed_key"],
            "--store",
            str(tmp_path / "view"),
            "--peer",
            peer,
            "--json",
            "--exit-after",
            "2",
        )
        try:
            # Press once the viewer is connected, and hold the button for ~0.5 s (below the 1 s of a
            # hold): a lone 100 ms pulse this soon after the service starts can end before the
            # busy emulated guest's debounce reads the line (qemu_boot.Machine.press_button).
            first = viewer.stdout.readline()
            vm.press_button()  # the emulated power button: PL061 line 3
            rest, err = viewer.communicate(timeout=CHAT_TIMEOUT_S)
            out = first + rest
        finally:
            viewer.kill()
        vm.wait_for(r"sent #\d+: Hello!", CHAT_TIMEOUT_S)  # block 1 may be a status block
        assert vm.proc is not None and vm.proc.poll() is None, "the press must not power the machine off"
    finally:
        vm.stop()
    assert viewer.returncode == 0, err
    pressed = json.loads(out.splitlines()[-1])
    assert pressed["type"] == "chat" and pressed["text"] == "Hello!" and pressed["nick"] == "qemu-virt", pressed


@pytest.mark.timeout(2 * BOOT_TIMEOUT_S + CHAT_TIMEOUT_S)
def test_power_cut_mid_append_loses_no_acknowledged_append(built_image: Path, tmp_path: Path) -> None:
    """The power-cut model: the emulated Pi appends to a feed through the service's own store
    (synchronous=FULL) and QEMU is killed mid-append, so whatever the guest had not written to
    its card is lost; the card boots again and every append that had returned is there, and the
    store audits clean. The control proves the cut bites: lines written without fsync are lost."""
    seed = int.from_bytes(os.urandom(4), "big")
    cut_after_s = random.Random(seed).uniform(2.0, 8.0)
    pi = qemu_boot.Machine(built_image, workdir(tmp_path, "powercut"), PORT, plan={"powercut": True}, service=False)
    pi.start()
    try:
        pi.wait_for(r"hyperpi-powercut: acked \d+\r?\n", BOOT_TIMEOUT_S)
        time.sleep(cut_after_s)
        pi.power_cut()
        acked = [int(n) for n in re.findall(r"hyperpi-powercut: acked (\d+)\r?\n", pi.console())]
        pi.boot_again()
        pi.wait_for(re.escape(qemu_boot.CHECK_PREFIX) + "done", BOOT_TIMEOUT_S)
        survived = pi.report("powercut")
    finally:
        pi.stop()
    print(f"power cut {cut_after_s:.1f} s into appending (seed {seed}): {max(acked)} acked, {survived}")
    assert len(acked) >= 2, "the guest appended before the cut"
    assert survived["audit"] == "ok" and survived["writable"] is True, survived
    assert survived["length"] >= max(acked), "an acknowledged append was lost"
    assert survived["unsynced_lines"] < max(acked), "the cut lost nothing unsynced: it was no power cut"


@pytest.mark.timeout(BOOT_TIMEOUT_S + 6 * CHAT_TIMEOUT_S)
def test_update_over_the_lan_on_the_emulated_pi(built_image: Path, tmp_path: Path, home: Path) -> None:
    from tests.release_wheels import build_wheel

    made = hyperpi("keys", "new", "--owner", "ana")
    assert made.returncode == 0, made.stderr
    wheel = build_wheel(tmp_path / "wheels", "0.2.0")
    card = tmp_path / "update.img"
    record = provision(built_image, card, "qemu-pi", "headless", "--owner", "ana")
    confirmed = r"update to 0\.2\.0-\S+ confirmed"
    plan = {"wait_s": BOOT_TIMEOUT_S, "marker_re": confirmed}  # then the guest check powers off
    pi = qemu_boot.Machine(card, workdir(tmp_path, "update"), PORT, plan=plan)
    pi.start()
    try:
        peer = ready_and_online(pi, record["feed_key"], tmp_path / "view")
        published = hyperpi(
            "release", "publish", str(wheel), "--owner", "ana", "--device", "qemu-pi", "--peer", peer,
            *LOOPBACK_ONLY, "--timeout", str(3 * CHAT_TIMEOUT_S), timeout=4 * CHAT_TIMEOUT_S,
        )  # fmt: skip
        assert published.returncode == 0, published.stdout + published.stderr
        assert "qemu-pi has downloaded 0.2.0" in published.stdout, published.stdout
        pi.wait_for(r"hyperpi-launch: starting 0\.2\.0-", 3 * CHAT_TIMEOUT_S)
        pi.wait_for(r"ready in \d+ ms \(hyperpi 0\.2\.0\)", 3 * CHAT_TIMEOUT_S)
        rows = ""
        for _ in range(5):  # the new version's status block reaches the host over the same port
            status = hyperpi("release", "status", "--owner", "ana", "--peer", peer, *LOOPBACK_ONLY, "--timeout", "30")
            assert status.returncode == 0, status.stderr
            rows = status.stdout
            if re.search(r"^qemu-pi\s+0\.2\.0\s+running\s+0\.2\.0", rows, re.MULTILINE):
                break
        pi.wait_for(confirmed, 2 * CHAT_TIMEOUT_S)
        pi.wait_for(re.escape(qemu_boot.CHECK_PREFIX) + "done", CHAT_TIMEOUT_S)
        facts = pi.report("facts")
    finally:
        pi.stop()
    assert re.search(r"^qemu-pi\s+0\.2\.0\s+running\s+0\.2\.0", rows, re.MULTILINE), rows
    log = "\n".join(facts["service_log"])
    assert "(hyperpi 0.2.0)" in log and "Traceback" not in log, log
    assert facts["units"]["hyperpi-device"] == "active"
