"""Boot a provisioned hyperpi image in QEMU 10: an emulated Raspberry Pi 3 (or 4), or `virt` for buttons.

Used by `make image-test` (tests/image/test_boot.py), tests/bench/bench_image_boot.py and by hand:

    python3 image/qemu_boot.py build/kitchen.img [--machine raspi3b|raspi4b|virt] [--oled] [--check]

QEMU does not run the Pi's GPU firmware, so this script does what the firmware would, from the
image's own FAT partition (with mtools; nothing is mounted and the image under test is never
changed, only a padded copy):
- takes the kernel and initrd that config.txt names, and the board's upstream DTB;
- applies `overlays/hyperpi.dtbo` to it with fdtoverlay, as `dtoverlay=hyperpi` makes the
  firmware do (`overlay=False` boots the stock DTB, for the test of a card without it);
- adds `/system/linux,revision`, which the firmware fills in and gpiozero reads;
- drops the SPI node's DMA channels: QEMU's SPI model cannot serve them (see `_dtb`); the
  kernel then moves SPI transfers by polling (`SPI_BY_POLLING`).

Machines:
- `raspi3b` (default): SD card, `usb-net` on QEMU user networking with a host port forwarded to
  the device's replication port, the BCM2835 SPI and I2C controllers (QEMU 10), and with
  `oled=True` QEMU's `ssd0303` OLED controller model at 0x3C on I2C1 (it acknowledges the
  SSD1306's writes). QEMU's BCM2835 GPIO model has no pull resistors, so inputs read 0; a
  test-only unit stands in for a HAT's pull-ups by leaving the button lines high (it drives them
  high, then releases them) before the service starts.
- `virt`: the same kernel and root (virtio disk and network), for a real button edge. QEMU pulses
  line 3 of virt's PL061 GPIO controller when it gets QMP `system_powerdown` (with ACPI off);
  the `gpio-keys` node is removed from virt's own DTB so the kernel leaves that line to us.
  Settings with `board = "qemu-virt-test"` put a button there.
- `raspi4b`: the Pi 4 DTB with the overlay; see README "Hardware" for how far it boots.

With `plan=` a test-only script and unit are added to the copy (with debugfs): they report the
booted system on the console as `hyperpi-boot-check: NAME {json}` lines (modes and owners of
secrets, device nodes, `hyperpi-device --check` runs for the planned boards, ...) and power the
machine off when done. The guest reaches the host at 10.0.2.2; `ntp=True` answers SNTP there.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "host"))
sys.path.insert(0, str(HERE.parent / "firmware"))

from hyperpi_host import ext4fs, fatfs
from hyperpi_host.partitions import PartitionError, boot_and_root

ROOT = "PARTUUID=68797069-02"  # image/build.sh DISK_ID
OVERLAY = "/overlays/hyperpi.dtbo"  # image/build.sh install_overlay
READY_LINE = "hyperpi-device: ready"  # image/service/50-image.conf
CHECK_PREFIX = "hyperpi-boot-check: "
POWER_DOWN = "reboot: Power down"
MULTI_USER = "Reached target multi-user.target"
# Board revision codes the firmware would put in /system/linux,revision (new-style codes). virt
# poses as a Compute Module 3 (same SoC family as the Pi 3): on every Pi with the 40-pin header
# GPIO 3 carries a fixed I2C pull-up that gpiozero refuses to float, on a CM3's SODIMM it does not,
# and the virt button line is driven both ways with no pull.
REVISIONS = {"raspi3b": 0xA02082, "raspi4b": 0xC03111, "virt": 0xA020A0}
# The virt machine's CPU and memory: the booted machine and the DTB dumped for it must agree.
VIRT_HARDWARE = ("-cpu", "cortex-a72", "-smp", "2", "-m", "1024")
DTBS = {"raspi3b": "bcm2837-rpi-3-b.dtb", "raspi4b": "bcm2711-rpi-4-b.dtb"}
# Lines the harness leaves high on raspi3b, standing in for the HATs' pull-ups: every button pin
# of every board profile (hyperpi.device.boards).
BUTTON_PINS = (4, 5, 6, 16, 17, 22, 23, 24, 27)

# The Pi's SPI driver moves a frame by DMA; QEMU's SPI model has none (see `_dtb`), and by
# interrupt a 4 KiB transfer needs ~70 interrupts on core 0, which the emulated Pi sometimes
# serves more than the kernel's 200 ms transfer timeout late (seen around network activity): the
# frame then fails with ETIMEDOUT though nothing is wrong with it. Polling
# (spi-bcm2835's own `polling_limit_us` parameter, raised to 1 s) moves every transfer in the
# sending thread with no interrupt and no timeout, through the same controller registers.
SPI_BY_POLLING = "spi_bcm2835.polling_limit_us=1000000"

# Room the emulated card has past the image, as a real card does: the first boot grows the root
# into it (the boot test checks it grew by more than ROOT_FREE_MIB of image/build.sh).
CARD_ROOM = 512 << 20

# Device nodes the guest check reports: the buses and pins the HATs use.
GUEST_NODES = ("/dev/spidev0.0", "/dev/spidev0.1", "/dev/i2c-1", "/dev/gpiochip0")
GUEST_DIR = "/usr/local/lib/hyperpi-boot-check"  # only in the harness's copy
GUEST_UNITS = {
    # Before the service: drive the button lines high and release them (see the docstring).
    "hyperpi-test-pullups.service": """[Unit]
Description=hyperpi boot test: stand in for the HAT's pull-ups (test copy only)
Before=hyperpi-device.service
[Service]
Type=oneshot
Environment=LG_WD=/run
ExecStart=/opt/hyperpi/venv/bin/python /usr/local/lib/hyperpi-boot-check/pullups.py
[Install]
WantedBy=multi-user.target
""",
    # After the service: report, then power off. (Not `systemd.run=` on the kernel command line:
    # that makes its unit the default target, so multi-user.target would never start.)
    "hyperpi-boot-check.service": """[Unit]
Description=hyperpi boot test report (test copy only)
After=hyperpi-device.service hyperpi-ssh-keygen.service
[Service]
Type=oneshot
ExecStart=/usr/bin/python3 /usr/local/lib/hyperpi-boot-check/check.py
ExecStopPost=/bin/systemctl poweroff --no-block
[Install]
WantedBy=multi-user.target
""",
}
PULLUPS_SCRIPT = f"""import lgpio
chip = lgpio.gpiochip_open(0)
for pin in {BUTTON_PINS!r}:
    lgpio.gpio_claim_output(chip, pin, 1)
    lgpio.gpio_free(chip, pin)
lgpio.gpiochip_close(chip)
"""
GUEST_SCRIPT = HERE / "qemu_guest_check.py"


class BootError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def run(args: list[str]) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BootError(f"{args[0]} failed: {(done.stderr or done.stdout).strip()}")


class Machine:
    """One emulated machine running a padded copy of an image; `console()` is its serial output."""

    def __init__(
        self,
        image: Path,
        workdir: Path,
        device_port: int,
        *,
        machine: str = "raspi3b",
        host_port: int | None = None,
        plan: dict[str, Any] | None = None,
        overlay: bool = True,
        oled: bool = False,
        service: bool = True,
    ) -> None:
        if machine not in ("raspi3b", "raspi4b", "virt"):
            raise BootError(f"unknown machine {machine!r}: raspi3b, raspi4b or virt")
        self.image = image
        self.workdir = workdir
        self.machine = machine
        self.device_port = device_port
        self.host_port = host_port or free_port()
        self.plan = plan
        self.overlay = overlay
        self.oled = oled
        self.service = service
        self.log = workdir / "console.log"
        self.disk = workdir / "sd.img"
        self.qmp_path = workdir / "qmp.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.command: list[str] = []
        self.started = 0.0
        self.boots = 1

    # -- preparing the copy and the command ---------------------------------------------------
    def prepare(self) -> list[str]:
        subprocess.run(["cp", "--sparse=always", str(self.image), str(self.disk)], check=True)
        with open(self.disk, "r+b") as f:  # QEMU's SD card model wants a power-of-two size
            f.truncate(next_power_of_two(self.disk.stat().st_size + CARD_ROOM))
        boot, root = boot_and_root(self.disk)
        config = (fatfs.read_file(self.disk, boot, "/config.txt") or b"").decode()
        kernel = re.search(r"^kernel=(\S+)", config, re.MULTILINE)
        initrd = re.search(r"^initramfs (\S+)", config, re.MULTILINE)
        if not kernel or not initrd:
            raise BootError("config.txt on the boot partition names no kernel= / initramfs")
        if self.overlay and not re.search(r"^dtoverlay=hyperpi$", config, re.MULTILINE):
            raise BootError("config.txt on the boot partition has no dtoverlay=hyperpi line")
        files = {}
        for name in (kernel.group(1), initrd.group(1)):
            files[name] = self._take(boot, "/" + name)
        dtb = self._dtb(boot)
        if self.plan is not None:
            self._add_guest_check(root)
        if not self.service:  # the baseline boot: the same card with hyperpi-device disabled
            ext4fs.debugfs(
                self.disk, root, ["rm /etc/systemd/system/multi-user.target.wants/hyperpi-device.service"], write=True
            )
        common = [
            "-kernel",
            str(files[kernel.group(1)]),
            "-initrd",
            str(files[initrd.group(1)]),
            "-dtb",
            str(dtb),
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
        ]
        forward = f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.host_port}-:{self.device_port}"
        if self.machine == "virt":
            return [
                "qemu-system-aarch64",
                "-M",
                "virt,acpi=off",
                *VIRT_HARDWARE,
                *common,
                "-append",
                self._kernel_args("ttyAMA0"),
                "-drive",
                f"file={self.disk},if=none,format=raw,id=sd",
                "-device",
                "virtio-blk-pci,drive=sd",
                "-netdev",
                forward,
                "-device",
                "virtio-net-pci,netdev=net0,romfile=",
                "-serial",
                f"file:{self.log}",
            ]
        # The Pi 3's PL011 (ttyAMA0) is claimed by the Bluetooth node of its tree, so Debian's
        # console is the mini UART (ttyS1); QEMU maps its first -serial to the PL011 and the
        # second to the mini UART. Both go to logs, so early output is seen whichever works.
        command = [
            "qemu-system-aarch64",
            "-M",
            self.machine,
            *common,
            "-append",
            self._kernel_args("ttyAMA0", "ttyS1", extra=SPI_BY_POLLING),
            "-drive",
            f"file={self.disk},if=sd,format=raw",
            "-serial",
            f"file:{self.workdir / 'uart0.log'}",
            "-serial",
            f"file:{self.log}",
        ]
        if self.machine == "raspi3b":  # QEMU's raspi4b has no USB (nor PCIe, nor GENET Ethernet)
            command += ["-device", "usb-net,netdev=net0", "-netdev", forward]
        if self.oled:
            command += ["-device", "ssd0303,bus=i2c-bus.1,address=0x3c"]
        return command

    def _kernel_args(self, *consoles: str, extra: str = "") -> str:
        return " ".join(
            [
                f"root={ROOT} rw rootwait",
                *(f"console={c},115200" for c in consoles),
                "net.ifnames=0 systemd.journald.forward_to_console=1 systemd.show_status=1",
                extra,
            ]
        ).strip()

    def _take(self, boot: Any, path: str) -> Path:
        data = fatfs.read_file(self.disk, boot, path)
        if data is None:
            raise BootError(f"{path} is missing from the boot partition")
        out = self.workdir / Path(path).name
        out.write_bytes(data)
        return out

    def _dtb(self, boot: Any) -> Path:
        """The device tree the firmware would hand the kernel (virt: QEMU's own, edited)."""
        out = self.workdir / "boot.dtb"
        if self.machine == "virt":
            run(
                [
                    "qemu-system-aarch64",
                    "-M",
                    f"virt,acpi=off,dumpdtb={out}",
                    *VIRT_HARDWARE,
                    "-display",
                    "none",
                    "-nic",
                    "none",
                ]
            )
            run(["fdtput", "-r", str(out), "/gpio-keys"])  # the line is the test board's button now
        else:
            base = self._take(boot, "/" + DTBS[self.machine])
            if self.overlay:
                run(["fdtoverlay", "-i", str(base), "-o", str(out), str(self._take(boot, OVERLAY))])
            else:
                shutil.copyfile(base, out)
            # QEMU's BCM2835 SPI model has no DMA requests wired: a DMA transfer (the kernel uses DMA
            # for anything longer than 96 bytes, so every frame) never completes and the guest hangs.
            # Without `dmas` the driver moves frames by interrupt, as on a Pi for short transfers.
            spi = "/soc/spi@7e204000"
            present = subprocess.run(
                ["fdtget", "-p", str(out), spi], capture_output=True, text=True, check=False
            ).stdout.split()
            for prop in ("dmas", "dma-names"):
                if prop in present:
                    run(["fdtput", "-d", str(out), spi, prop])
        run(["fdtput", "-p", "-t", "x", str(out), "/system", "linux,revision", f"{REVISIONS[self.machine]:x}"])
        return out

    def _add_guest_check(self, root: Any) -> None:
        plan = json.dumps({"nodes": GUEST_NODES, **self.plan}).encode()
        ext4fs.make_dir(self.disk, root, GUEST_DIR, 0o755, 0, 0)
        ext4fs.write_file(self.disk, root, f"{GUEST_DIR}/check.py", GUEST_SCRIPT.read_bytes(), 0o755, 0, 0)
        ext4fs.write_file(self.disk, root, f"{GUEST_DIR}/plan.json", plan, 0o644, 0, 0)
        units = ["hyperpi-boot-check.service"]
        if self.machine == "raspi3b":
            ext4fs.write_file(self.disk, root, f"{GUEST_DIR}/pullups.py", PULLUPS_SCRIPT.encode(), 0o644, 0, 0)
            units.append("hyperpi-test-pullups.service")
        for unit in units:
            path = f"/etc/systemd/system/{unit}"
            ext4fs.write_file(self.disk, root, path, GUEST_UNITS[unit].encode(), 0o644, 0, 0)
            ext4fs.symlink(self.disk, root, f"/etc/systemd/system/multi-user.target.wants/{unit}", path)
        if self.machine == "raspi3b":
            # Emulated, the Pi 3 runs Python tens of times slower and moves SPI frames by interrupt:
            # one redraw can hold the service's loop past the 30 s watchdog, which a Pi never does.
            ext4fs.make_dir(self.disk, root, "/etc/systemd/system/hyperpi-device.service.d", 0o755, 0, 0)
            ext4fs.write_file(
                self.disk,
                root,
                "/etc/systemd/system/hyperpi-device.service.d/test-watchdog.conf",
                b"[Service]\nWatchdogSec=600\n",
                0o644,
                0,
                0,
            )
        if self.plan.get("ntp"):  # the host's SNTP responder (NtpResponder) through QEMU's gateway
            ext4fs.make_dir(self.disk, root, "/etc/systemd/timesyncd.conf.d", 0o755, 0, 0)
            ext4fs.write_file(
                self.disk, root, "/etc/systemd/timesyncd.conf.d/test.conf", b"[Time]\nNTP=10.0.2.2\n", 0o644, 0, 0
            )

    # -- running ------------------------------------------------------------------------------
    def start(self) -> None:
        self.command = self.prepare()
        (self.workdir / "command.txt").write_text(" ".join(self.command) + "\n")
        self._launch()

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL QEMU. What the guest had not written to its card (its page
        cache, unflushed files) is gone, as on a Pi losing power; the card file keeps the rest."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def boot_again(self) -> None:
        """Power the same card on again (after `power_cut` or a power-off): the same command on
        the same disk file; the earlier console logs move aside to `*.before-N.log`."""
        if self.proc is None or self.proc.poll() is None:
            raise BootError("boot_again needs a machine that was started and is off")
        self.boots += 1
        for path in (self.workdir / "uart0.log", self.log):
            if path.exists():
                path.rename(path.with_suffix(f".before-{self.boots}.log"))
        self._launch()

    def _launch(self) -> None:
        self.started = time.monotonic()
        with open(self.workdir / "qemu.out", "ab") as qemu_out:  # QEMU keeps its own copy of the fd
            self.proc = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=qemu_out, stderr=subprocess.STDOUT
            )

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
            time.sleep(0.5)
        raise BootError(f"no {pattern!r} on the console after {timeout_s:.0f} s; see {self.log}")

    def report(self, name: str) -> Any:
        """The JSON the guest check printed as `hyperpi-boot-check: NAME {...}`."""
        match = re.search(re.escape(CHECK_PREFIX) + re.escape(name) + r" (\{.*\}|\[.*\])", self.console())
        if not match:
            raise BootError(f"the boot check printed no {name!r} report")
        return json.loads(match.group(1))

    def qmp(self, command: str, *, repeat_for_s: float = 0.0) -> dict[str, Any]:
        """Run one QMP command (e.g. `system_powerdown`, the virt machine's button) and return its
        answer; with `repeat_for_s`, run it again every 40 ms for that long on the same connection."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.qmp_path))
            reader = s.makefile("rb")
            json.loads(reader.readline())  # greeting

            def execute(name: str) -> dict[str, Any]:
                s.sendall(json.dumps({"execute": name}).encode() + b"\n")
                while True:
                    answer = json.loads(reader.readline())
                    if "event" not in answer:
                        break
                if "error" in answer:
                    raise BootError(f"QMP {name}: {answer['error']}")
                return answer

            execute("qmp_capabilities")
            end = time.monotonic() + repeat_for_s
            answer = execute(command)
            while time.monotonic() < end:
                time.sleep(0.04)
                answer = execute(command)
            return answer

    def press_button(self, hold_s: float = 0.4) -> None:
        """Hold virt's power button (PL061 line 3) high for about `hold_s` + 0.1 s. One
        `system_powerdown` is a 100 ms pulse (QEMU hw/gpio/gpio_key.c), and each one raises the
        line again and restarts that 100 ms, so repeating it every 40 ms holds the line like a
        finger does. A lone pulse right after the service starts, while the emulated guest is at
        its busiest, was lost now and then (1 of 10 in a trial, always the first press; held, 0 of
        6): most likely the kernel's 20 ms debounce read the line after it had fallen again."""
        self.qmp("system_powerdown", repeat_for_s=hold_s)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class NtpResponder:
    """A minimal SNTP server on 127.0.0.1:123 (the guest's 10.0.2.2:123 under QEMU user networking),
    so the emulated device's systemd-timesyncd syncs as a Pi does from its LAN's router. Binding
    port 123 needs root, as the image tests do anyway."""

    NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01

    def __init__(self, host: str = "127.0.0.1", port: int = 123) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.bind((host, port))
        except OSError as e:
            self.sock.close()
            raise BootError(f"cannot answer NTP on {host}:{port} ({e.strerror}); run the image tests as root") from None
        self.sock.settimeout(0.5)
        self.answered = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _timestamp(self) -> bytes:
        now = time.time() + self.NTP_EPOCH_OFFSET
        return struct.pack("!II", int(now), int((now % 1) * (1 << 32)))

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                request, peer = self.sock.recvfrom(512)
            except (TimeoutError, OSError):
                continue
            if len(request) < 48:
                continue
            received = self._timestamp()
            # LI 0, version 4, mode 4 (server); stratum 1; poll 4; precision -20; root delay and
            # dispersion ~0; reference id "LOCL"; reference time; origin = the client's transmit time.
            header = struct.pack("!BBbbII4s", 0x24, 1, 4, -20, 0, 16, b"LOCL")
            self.sock.sendto(header + received + request[40:48] + received + self._timestamp(), peer)
            self.answered += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path)
    parser.add_argument("--machine", default="raspi3b", choices=["raspi3b", "raspi4b", "virt"])
    parser.add_argument("--port", type=int, default=49737, help="the device's replication port")
    parser.add_argument("--host-port", type=int, help="host port forwarded to it (default: a free one)")
    parser.add_argument("--no-overlay", action="store_true", help="boot the stock DTB, without hyperpi.dtbo")
    parser.add_argument("--oled", action="store_true", help="an SSD130x-style OLED at 0x3C on I2C1 (raspi3b)")
    parser.add_argument("--check", action="store_true", help="report the booted system's state, then power off")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--keep", type=Path, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()
    if shutil.which("qemu-system-aarch64") is None:
        print("qemu_boot: qemu-system-aarch64 not found: run image/deps.sh", file=sys.stderr)
        return 2
    if not args.image.is_file():
        print(f"qemu_boot: {args.image}: no such image file", file=sys.stderr)
        return 2
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="hyperpi-qemu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    plan = {"wait_s": args.timeout, "checks": []} if args.check else None
    pi = Machine(
        args.image,
        workdir,
        args.port,
        machine=args.machine,
        host_port=args.host_port,
        plan=plan,
        overlay=not args.no_overlay,
        oled=args.oled,
    )
    try:
        pi.start()
        print(f"console: {pi.log}; device port {args.port} on 127.0.0.1:{pi.host_port}; QMP {pi.qmp_path}", flush=True)
        ready = pi.wait_for(re.escape(READY_LINE), args.timeout)
        print(f"ready after {ready:.0f} s", flush=True)
        if args.check:
            pi.wait_for(re.escape(CHECK_PREFIX) + "facts", args.timeout)
            print(json.dumps(pi.report("facts"), indent=2))
            pi.wait_for(POWER_DOWN, args.timeout)
        elif pi.proc is not None:
            pi.proc.wait()
    except (BootError, PartitionError, fatfs.FatError, ext4fs.Ext4Error) as e:  # a wrong or broken image file
        print(f"qemu_boot: {args.image}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        pi.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
