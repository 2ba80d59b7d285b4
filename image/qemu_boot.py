"""Boot a provisioned hyperpi image on an emulated Raspberry Pi 3 (`qemu-system-aarch64 -M raspi3b`).

Used by `make image-test` (tests/image/test_boot.py) and by hand:

    python3 image/qemu_boot.py build/kitchen.img --port 49737 [--check] [--timeout 1800]

What it does, without root and without mounting anything:
- copies the image and pads the copy to a power of two (QEMU's SD card model requires it);
- takes the kernel, initrd and the Pi 3 device tree (bcm2837-rpi-3-b.dtb) from the image's
  own FAT partition with mtools, as the Pi's firmware would (config.txt names the kernel);
- boots with the SD card, `-device usb-net` on QEMU user networking with a host port forwarded
  to the device's replication port, and both UARTs captured to one log file;
- optionally (`check=True`) adds a test-only script and unit to the copy (with debugfs) that
  runs once the service is up: it reports the booted system's state on the
  console (modes and owners of the secrets, SSH host key fingerprints, whether a secret is
  on the FAT partition) and powers the machine off cleanly when told to or after a time-out.
  The image under test itself is never changed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "host"))
sys.path.insert(0, str(HERE.parent / "firmware"))

from hyperpi_host import ext4fs, fatfs
from hyperpi_host.partitions import boot_and_root

DTB = "bcm2837-rpi-3-b.dtb"  # Debian's upstream device tree for the Pi 3 Model B
ROOT = "PARTUUID=68797069-02"  # image/build.sh DISK_ID
READY_LINE = "hyperpi-device: ready"  # image/service/50-image.conf
CHECK_PREFIX = "hyperpi-boot-check: "
POWER_DOWN = "reboot: Power down"
CHECK_SCRIPT = "/usr/local/sbin/hyperpi-boot-check"  # only in the harness's copy
CHECK_UNIT = "/etc/systemd/system/hyperpi-boot-check.service"
CHECK_WANTS = "/etc/systemd/system/multi-user.target.wants/hyperpi-boot-check.service"
# (Not `systemd.run=` on the kernel command line: that makes its unit the default target, so
# multi-user.target and the service would never start.)
CHECK_UNIT_TEXT = """[Unit]
Description=hyperpi boot test report (test copy only)
After=hyperpi-device.service hyperpi-ssh-keygen.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/hyperpi-boot-check
ExecStopPost=/bin/systemctl poweroff --no-block

[Install]
WantedBy=multi-user.target
"""
# The guest's serial ports: PL011 (ttyAMA0) is claimed by the Bluetooth node of the Pi 3 tree,
# so Debian's console is the mini UART (ttyS1); QEMU maps its first -serial to the PL011 and the
# second to the mini UART. Both go to the log so early kernel output is seen whichever works.
KERNEL_ARGS = (
    f"root={ROOT} rw rootwait console=ttyAMA0,115200 console=ttyS1,115200 "
    "net.ifnames=0 systemd.journald.forward_to_console=1 systemd.show_status=1"
)

GUEST_CHECK = r'''#!/usr/bin/python3
"""Test-only (added to a copy by image/qemu_boot.py): report the booted system, then power off."""
import glob, json, os, subprocess, sys, time
def out(msg):
    with open("/dev/console", "w") as c:
        c.write("hyperpi-boot-check: " + msg + "\n")
deadline = time.time() + {wait}
while time.time() < deadline:
    if subprocess.run(["systemctl", "is-active", "--quiet", "hyperpi-device", "hyperpi-ssh-keygen"]).returncode == 0:
        break
    time.sleep(2)
facts = {{}}
for path in ("/var/lib/hyperpi/feed.secret", "/var/lib/hyperpi/noise.secret",
             "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf"):
    if os.path.exists(path):
        st = os.stat(path)
        facts[path] = {{"mode": oct(st.st_mode & 0o7777), "uid": st.st_uid, "gid": st.st_gid}}
fat = subprocess.run(["findmnt", "-no", "SOURCE", "/boot/firmware"], capture_output=True, text=True).stdout.strip()
secrets = []
for path in ("/var/lib/hyperpi/feed.secret", "/var/lib/hyperpi/noise.secret"):
    data = open(path, "rb").read()
    secrets += [data, data[:32], data.hex().encode()]
with open(fat, "rb") as dev:
    raw = dev.read()
facts["fat_device"] = fat
facts["fat_bytes"] = len(raw)
facts["secret_on_fat"] = any(s in raw for s in secrets)
facts["ssh_host_keys"] = sorted(
    subprocess.run(["ssh-keygen", "-lf", p], capture_output=True, text=True).stdout.split()[1]
    for p in glob.glob("/etc/ssh/ssh_host_*_key.pub"))
facts["root_size"] = os.statvfs("/").f_blocks * os.statvfs("/").f_frsize
facts["units"] = {{u: subprocess.run(["systemctl", "is-active", u], capture_output=True, text=True).stdout.strip()
                  for u in ("hyperpi-device", "hyperpi-ssh-keygen", "hyperpi-growfs", "ssh", "systemd-journald")}}
facts["passwords"] = [l.split(":")[0] for l in open("/etc/shadow") if l.split(":")[1] not in ("*", "!", "!*", "") and not l.split(":")[1].startswith("!")]
facts["journal_storage"] = os.path.isdir("/var/log/journal") and bool(os.listdir("/var/log/journal"))
out("facts " + json.dumps(facts, sort_keys=True))
# Wait until the host says it is done (a line on the service's log), then power off cleanly.
marker = "{marker}"
if marker:
    proc = subprocess.Popen(["journalctl", "-f", "-o", "cat", "-u", "hyperpi-device"], stdout=subprocess.PIPE, text=True)
    end = time.time() + {wait}
    for line in proc.stdout:
        if marker in line or time.time() > end:
            break
    proc.kill()
out("done")
'''


class BootError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


class Raspi3:
    """One emulated Pi 3 running a copy of an image; `log` is the serial console."""

    def __init__(self, image: Path, workdir: Path, device_port: int, host_port: int | None = None,
                 check: bool = False, marker: str = "", check_wait_s: int = 1800) -> None:
        self.image = image
        self.workdir = workdir
        self.device_port = device_port
        self.host_port = host_port or free_port()
        self.check = check
        self.marker = marker
        self.check_wait_s = check_wait_s
        self.log = workdir / "console.log"
        self.disk = workdir / "sd.img"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def prepare(self) -> list[str]:
        """Copy the image (sparse), pad it, take the boot files; returns the QEMU command."""
        subprocess.run(["cp", "--sparse=always", str(self.image), str(self.disk)], check=True)
        with open(self.disk, "r+b") as f:
            f.truncate(next_power_of_two(self.disk.stat().st_size))
        boot, root = boot_and_root(self.disk)
        config = (fatfs.read_file(self.disk, boot, "/config.txt") or b"").decode()
        kernel = re.search(r"^kernel=(\S+)", config, re.MULTILINE)
        initrd = re.search(r"^initramfs (\S+)", config, re.MULTILINE)
        if not kernel or not initrd:
            raise BootError("config.txt on the boot partition names no kernel= / initramfs")
        files = {}
        for name in (kernel.group(1), initrd.group(1), DTB):
            data = fatfs.read_file(self.disk, boot, "/" + name)
            if data is None:
                raise BootError(f"{name} is missing from the boot partition")
            files[name] = self.workdir / name
            files[name].write_bytes(data)
        if self.check:
            script = GUEST_CHECK.format(wait=self.check_wait_s, marker=self.marker.replace('"', ""))
            ext4fs.write_file(self.disk, root, CHECK_SCRIPT, script.encode(), 0o755, 0, 0)
            ext4fs.write_file(self.disk, root, CHECK_UNIT, CHECK_UNIT_TEXT.encode(), 0o644, 0, 0)
            ext4fs.symlink(self.disk, root, CHECK_WANTS, CHECK_UNIT)
        append = KERNEL_ARGS
        return [
            "qemu-system-aarch64", "-M", "raspi3b",
            "-kernel", str(files[kernel.group(1)]), "-initrd", str(files[initrd.group(1)]),
            "-dtb", str(files[DTB]), "-append", append,
            "-drive", f"file={self.disk},if=sd,format=raw",
            "-device", "usb-net,netdev=net0",
            "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.host_port}-:{self.device_port}",
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{self.workdir / 'uart0.log'}", "-serial", f"file:{self.log}",
        ]

    def start(self) -> None:
        command = self.prepare()
        (self.workdir / "command.txt").write_text(" ".join(command) + "\n")
        self.started = time.monotonic()
        with open(self.workdir / "qemu.out", "wb") as qemu_out:  # QEMU keeps its own copy of the fd
            self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=qemu_out, stderr=subprocess.STDOUT)

    def console(self) -> str:
        text = ""
        for path in (self.workdir / "uart0.log", self.log):
            if path.exists():
                text += path.read_bytes().decode(errors="replace")
        return text

    def wait_for(self, pattern: str, timeout_s: float) -> float:
        """Seconds since start when `pattern` (a regex) first showed on the console."""
        deadline = time.monotonic() + timeout_s
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            if regex.search(self.console()):
                return time.monotonic() - self.started
            if self.proc and self.proc.poll() is not None:
                raise BootError(f"QEMU exited ({self.proc.returncode}) before {pattern!r}; see {self.workdir}")
            time.sleep(1)
        raise BootError(f"no {pattern!r} on the console after {timeout_s:.0f} s; see {self.log}")

    def facts(self) -> dict:
        match = re.search(re.escape(CHECK_PREFIX) + r"facts (\{.*\})", self.console())
        if not match:
            raise BootError("the boot check printed no facts")
        return json.loads(match.group(1))

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--port", type=int, default=49737, help="the device's replication port")
    parser.add_argument("--host-port", type=int, help="host port forwarded to it (default: a free one)")
    parser.add_argument("--check", action="store_true", help="report the booted system's state, then power off")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    if shutil.which("qemu-system-aarch64") is None:
        print("qemu_boot: qemu-system-aarch64 not found: apt-get install qemu-system-arm", file=sys.stderr)
        return 2
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="hyperpi-qemu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    pi = Raspi3(args.image, workdir, args.port, args.host_port, check=args.check)
    pi.start()
    print(f"console: {pi.log}; device port {args.port} on 127.0.0.1:{pi.host_port}", flush=True)
    try:
        ready = pi.wait_for(re.escape(READY_LINE), args.timeout)
        print(f"ready after {ready:.0f} s", flush=True)
        if args.check:
            pi.wait_for(re.escape(CHECK_PREFIX) + "facts", args.timeout)
            print(json.dumps(pi.facts(), indent=2))
            pi.wait_for(POWER_DOWN, args.timeout)
        else:
            pi.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        pi.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
