"""The README's walkthrough as a user types it (needs root): an owner key, two devices
provisioned from a real (small) SD card image and flashed, paired with each other and with the
owner by name, then a chat line from the laptop shown on both. The host commands run in
namespace c, the two devices (`hyperpi-device --simulate --lan`, state unpacked from their
provisioned images) in a and b; everyone finds everyone with mDNS. No key is ever typed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hyperpi_host import ext4fs, fatfs
from hyperpi_host.partitions import boot_and_root
from tests.image.test_provision import base_image  # noqa: F401 - the small real image, a fixture
from tests.netns.conftest import NetnsLan
from tests.netns.test_device_e2e import LoggedProcess, start_device

HYPERPI = [sys.executable, "-m", "hyperpi_host.cli"]
PAIR_TIMEOUT = "60"  # s; the device is on the LAN already, found within a few seconds


def hyperpi(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A host command that needs no network, run here as a user runs it."""
    env = {**os.environ, "HYPERPI_HOME": str(home)}
    result = subprocess.run([*HYPERPI, *args], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, f"hyperpi {' '.join(args)}: {result.stderr}"
    return result


def hyperpi_on_lan(lan: NetnsLan, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYPERPI_HOME": str(home)}
    result = lan.run("c", *HYPERPI, *args, env=env, timeout=120, check=False)
    assert result.returncode == 0, f"hyperpi {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def shows(device: LoggedProcess, needle: str) -> None:
    """Wait for a line with `needle`, unless the device logged it already (lines are consumed
    in order by wait_for)."""
    if not any(needle in line for line in device.log):
        device.wait_for(needle)


def unpack(image: Path, state: Path, config: Path) -> None:
    """What the card's first boot reads: its settings (FAT) and its secrets (ext4), kept in a
    state folder for `hyperpi-device --simulate`."""
    boot, root = boot_and_root(image)
    state.mkdir(mode=0o700)
    for name in ("feed.secret", "noise.secret"):
        secret = ext4fs.read_file(image, root, f"/var/lib/hyperpi/{name}")
        assert secret is not None
        (state / name).write_bytes(secret)
        (state / name).chmod(0o600)
    settings = fatfs.read_file(image, boot, "/hyperpi/device.toml")
    assert settings is not None
    config.write_text(f'state_dir = "{state}"\n' + settings.decode())  # top-level key first


def test_readme_walkthrough_by_names_only(lan: NetnsLan, tmp_path: Path, base_image: Path) -> None:  # noqa: F811
    home = tmp_path / "home"
    hyperpi(home, "keys", "new", "--owner", "ana")
    for name, board in (("kitchen", "headless"), ("hall", "oled-bonnet")):
        hyperpi(home, "provision", str(base_image), "-o", str(tmp_path / f"{name}.img"),
                "--device", name, "--board", board, "--owner", "ana")  # fmt: skip
    flashed = hyperpi(home, "flash", str(tmp_path / "kitchen.img"), str(tmp_path / "card.img"), "--to-file", "--yes")
    assert f"using {tmp_path / 'kitchen.img.bmap'}" in flashed.stdout + flashed.stderr
    assert (tmp_path / "card.img").read_bytes() == (tmp_path / "kitchen.img").read_bytes()
    listed = hyperpi(home, "devices", "--no-mdns").stdout
    assert [line.split()[:2] for line in listed.splitlines()[1:]] == [["hall", "oled-bonnet"], ["kitchen", "headless"]]

    devices = {}
    for name, namespace in (("kitchen", "a"), ("hall", "b")):
        unpack(tmp_path / f"{name}.img", tmp_path / f"{name}-state", tmp_path / f"{name}.toml")
        devices[name] = start_device(lan, namespace, tmp_path / f"{name}.toml")
    kitchen, hall = devices["kitchen"], devices["hall"]

    # Pair them with each other and with ana, each by name; each waits until the device has it.
    for device, follows in (("kitchen", "hall"), ("hall", "kitchen"), ("kitchen", "ana"), ("hall", "ana")):
        paired = hyperpi_on_lan(lan, home, "pair", "add", device, follows, "--timeout", PAIR_TIMEOUT)
        assert f"delivered: {device} has every entry meant for it" in paired.stdout
        assert paired.stderr.startswith("KEY: ")
        shows(devices[device], f"control feed: follow {follows}")
    shows(hall, "message from kitchen: kitchen is online")
    shows(kitchen, "message from hall: hall is online")

    # Chat from the laptop as ana: both devices show it.
    writer = LoggedProcess(lan.python("c", "-m", "hyperpi_host.cli", "chat", "write", env={"HYPERPI_HOME": str(home)},
                                      stderr=subprocess.STDOUT), "chat write")  # fmt: skip
    writer.wait_for("writing as ana")
    writer.send("dinner is ready\n")
    for device in (kitchen, hall):
        shows(device, "message from ana: dinner is ready")

    assert writer.terminate() == 0
    for device in (kitchen, hall):
        assert device.terminate() == 0
        assert "Traceback" not in "\n".join(device.log)
    assert "Traceback" not in "\n".join(writer.log)
