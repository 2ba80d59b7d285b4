#!/usr/bin/python3
"""Test-only: runs inside a booted copy of the image (image/qemu_boot.py adds it), as root.

Reports the booted system on the console as `hyperpi-boot-check: NAME {json}` lines, then exits
(its unit powers the machine off). What it does comes from plan.json beside it:
  nodes      device nodes to report (group, mode)
  wait_s     how long to wait for the service (and the host's marker) at most
  marker     wait until this text shows in the service's log (the host is done chatting)
  marker_re  the same with a regular expression
  ntp        wait until systemd-timesyncd has synced (the host answers NTP at 10.0.2.2)
  checks     [{"board": NAME, "restart": bool}, ...]: for each, stop the service, set the board in
             the settings, run `hyperpi-device --check` as the service user, and with "restart"
             start the service again and wait until its first frame went out.
  updates    true: check unattended-upgrades and run raspi-firmware's kernel hook
  modules    true: last, stop the service and load every kept kernel module
  powercut   true: the power-cut model (tests/image/test_boot.py). On a card without its store,
             append to a Hypercore (the service's own Store and Core, synchronous=FULL) in a loop,
             printing `hyperpi-powercut: acked N` after each append returned, and after it a line
             to a plain file with no fsync (the control: what a power cut must be able to lose),
             until the host kills the machine. On the next boot, audit that store and report it.
Standard library only: it runs on the image's own python3.
"""

import glob
import grp
import json
import os
import re
import subprocess
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


PLAN = json.loads(read(os.path.join(HERE, "plan.json")))
WAIT_S = PLAN.get("wait_s", 1800)
SETTINGS = "/etc/hyperpi/device.toml"
SECRETS = ("/var/lib/hyperpi/feed.secret", "/var/lib/hyperpi/noise.secret")
KEPT_MODULES = "/usr/share/hyperpi/kernel-modules.kept"  # image/slim.py


def report(name, value):
    with open("/dev/console", "w") as console:
        console.write(f"hyperpi-boot-check: {name} {json.dumps(value, sort_keys=True)}\n")


def sh(*args):
    return subprocess.run(args, capture_output=True, text=True, check=False)


def wait(what, predicate, timeout_s):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(1)
    report("timeout", {"waiting_for": what})
    return False


def service_log(since=""):
    args = ["journalctl", "-o", "cat", "-u", "hyperpi-device", "--no-pager"]
    return sh(*args, *(["--since", since] if since else [])).stdout


def facts():
    out = {}
    for path in SECRETS + ("/etc/wpa_supplicant/wpa_supplicant-wlan0.conf",):
        if os.path.exists(path):
            st = os.stat(path)
            out[path] = {"mode": oct(st.st_mode & 0o7777), "uid": st.st_uid, "gid": st.st_gid}
    fat = sh("findmnt", "-no", "SOURCE", "/boot/firmware").stdout.strip()
    secrets = []
    for path in SECRETS:
        data = read(path, "rb")
        secrets += [data, data[:32], data.hex().encode()]
    raw = read(fat, "rb")
    out["fat_device"] = fat
    out["fat_bytes"] = len(raw)
    out["secret_on_fat"] = any(s in raw for s in secrets)
    out["ssh_host_keys"] = sorted(
        sh("ssh-keygen", "-lf", p).stdout.split()[1] for p in glob.glob("/etc/ssh/ssh_host_*_key.pub")
    )
    vfs = os.statvfs("/")
    out["root_size"] = vfs.f_blocks * vfs.f_frsize
    out["units"] = {
        u: sh("systemctl", "is-active", u).stdout.strip()
        for u in ("hyperpi-device", "hyperpi-ssh-keygen", "hyperpi-growfs", "ssh", "systemd-journald")
    }
    out["passwords"] = [
        line.split(":")[0]
        for line in read("/etc/shadow").splitlines()
        if line.split(":")[1] not in ("*", "!", "!*", "") and not line.split(":")[1].startswith("!")
    ]
    out["journal_storage"] = os.path.isdir("/var/log/journal") and bool(os.listdir("/var/log/journal"))
    out["nodes"] = {}
    for node in PLAN.get("nodes", []):
        if os.path.exists(node):
            st = os.stat(node)
            out["nodes"][node] = {"group": grp.getgrgid(st.st_gid).gr_name, "mode": oct(st.st_mode & 0o777)}
    out["modules"] = sorted(line.split()[0] for line in read("/proc/modules").splitlines())
    stats = {}
    for path in glob.glob("/sys/bus/spi/devices/spi0.*/statistics/bytes_tx"):
        stats[path.split("/")[5]] = int(read(path))
    out["spi_bytes_tx"] = stats
    out["i2c_adapters"] = {
        os.path.basename(p): read(p + "/name").strip() for p in glob.glob("/sys/class/i2c-dev/i2c-*")
    }
    out["service_user_groups"] = sh("id", "-nG", "hyperpi").stdout.split()
    out["timesync"] = os.path.exists("/run/systemd/timesync/synchronized")
    out["service_log"] = service_log().splitlines()[-60:]
    # The kernel's own complaints about the buses (e.g. "SPI transfer timed out").
    out["kernel_bus_errors"] = [
        line
        for line in sh("dmesg", "--level", "err,warn").stdout.splitlines()
        if re.search(r"spi|i2c|gpio", line, re.IGNORECASE)
    ][-20:]
    return out


POWERCUT_STORE = "/var/lib/hyperpi-powercut"
POWERCUT_SEED = "706f776572637574" * 4  # the feed's key pair seed (hex): both boots derive the key
VENV_PYTHON = "/opt/hyperpi/venv/bin/python"
APPENDER = """
import os, sys
from hyperpi.hypercore import Core, Store
from hyperpi.hypercore.keys import generate_keypair
store = Store(sys.argv[1])
core = Core.create(store, generate_keypair(bytes.fromhex(sys.argv[2])))
unsynced = os.open(os.path.join(sys.argv[1], "unsynced.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
console = open("/dev/console", "w")
while True:
    n = core.append([b'{"type":"chat","text":"power cut %d","nick":"qemu"}' % core.length])
    os.write(unsynced, b"%d\\n" % n)  # written, never fsynced
    console.write("hyperpi-powercut: acked %d\\n" % n)
    console.flush()
"""
AUDITOR = """
import json, os, sys
from hyperpi.hypercore import Core, Store
from hyperpi.hypercore.keys import core_key, generate_keypair
out = {}
try:
    with Store(sys.argv[1]) as store:
        core = Core.open(store, core_key(generate_keypair(bytes.fromhex(sys.argv[2])).public_key))
        core.audit()
        out.update(length=core.length, writable=core.writable, audit="ok")
except Exception as error:
    out["audit"] = f"{type(error).__name__}: {error}"
try:
    with open(os.path.join(sys.argv[1], "unsynced.log"), "rb") as f:
        out["unsynced_lines"] = len(f.read().splitlines())
except FileNotFoundError:
    out["unsynced_lines"] = 0
print(json.dumps(out))
"""


def powercut():
    """The power-cut model (see the docstring): append until killed, or audit what survived."""
    if not os.path.exists(POWERCUT_STORE):
        os.makedirs(POWERCUT_STORE, 0o700)
        report("powercut-appending", {})
        subprocess.run([VENV_PYTHON, "-c", APPENDER, POWERCUT_STORE, POWERCUT_SEED], check=False)
        report("powercut-appender-ended", {})  # never expected: the host cuts the power first
        return
    done = sh(VENV_PYTHON, "-c", AUDITOR, POWERCUT_STORE, POWERCUT_SEED)
    try:
        report("powercut", json.loads(done.stdout))
    except ValueError:
        report("powercut", {"audit": f"auditor failed: {done.stderr[-1000:]}"})


def updates():
    """Unattended security updates are on, and a kernel upgrade keeps the Pi's boot settings:
    runs raspi-firmware's kernel hook (what a new kernel package runs), which rewrites
    config.txt and cmdline.txt on the FAT from /etc/default/raspi-firmware*."""
    periodic = dict(re.findall(r'^APT::Periodic::(\S+) "([^"]*)";$', sh("apt-config", "dump").stdout, re.MULTILINE))
    out = {
        "periodic": periodic,
        "timers": {
            t: sh("systemctl", "is-enabled", t).stdout.strip() for t in ("apt-daily.timer", "apt-daily-upgrade.timer")
        },
        "unattended_upgrade": os.path.exists("/usr/bin/unattended-upgrade"),
    }
    hooks = sorted(glob.glob("/etc/kernel/postinst.d/*raspi-firmware*"))
    out["hooks"] = hooks
    for hook in hooks:
        done = sh(hook, os.uname().release)
        out["hook_exit"] = done.returncode
        out["hook_output"] = (done.stdout + done.stderr)[-1000:]
    out["config_txt"] = read("/boot/firmware/config.txt")
    out["cmdline_txt"] = read("/boot/firmware/cmdline.txt")
    return out


def kept_modules():
    """Every module the image kept (image/slim.py) loads on this kernel: none lacks what it needs.
    Run last, with the service stopped: in CI, loading ~150 modules beside the running service
    (minutes of CPU for 4 emulated cores on 2 real ones) stalled two SPI frames past the kernel's
    transfer timeout. That stall is the emulator's; the service's frames are checked before."""
    sh("systemctl", "stop", "hyperpi-device")
    kept = read(KEPT_MODULES).split() if os.path.exists(KEPT_MODULES) else []
    failed = {name: done.stderr.strip()[-300:] for name in kept if (done := sh("modprobe", name)).returncode != 0}
    return {"kept": len(kept), "failed": failed}


def set_board(board):
    text = read(SETTINGS)
    with open(SETTINGS, "w") as f:
        f.write(re.sub(r'^board = ".*"$', f'board = "{board}"', text, flags=re.MULTILINE))


def run_check(board, restart):
    sh("systemctl", "stop", "hyperpi-device")
    set_board(board)
    done = sh("runuser", "-u", "hyperpi", "--", "/usr/local/bin/hyperpi-device", "--check", "--config", SETTINGS)
    result = {"board": board, "exit": done.returncode, "lines": done.stdout.splitlines(), "stderr": done.stderr[-2000:]}
    if restart:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        sh("systemctl", "start", "hyperpi-device")
        wait("first frame after restart", lambda: "first frame sent" in service_log(since), 300)
        result["service_log"] = service_log(since).splitlines()[-40:]
        result["active"] = sh("systemctl", "is-active", "hyperpi-device").stdout.strip()
    return result


def main():
    if PLAN.get("powercut"):
        powercut()
        report("done", {})
        return
    wait(
        "hyperpi-device and ssh keys",
        lambda: sh("systemctl", "is-active", "--quiet", "hyperpi-device", "hyperpi-ssh-keygen").returncode == 0,
        WAIT_S,
    )
    if PLAN.get("marker"):
        wait("the host's marker", lambda: PLAN["marker"] in service_log(), WAIT_S)
    if PLAN.get("marker_re"):
        wait("the host's marker", lambda: re.search(PLAN["marker_re"], service_log()) is not None, WAIT_S)
    if PLAN.get("ntp"):
        wait("NTP sync", lambda: os.path.exists("/run/systemd/timesync/synchronized"), 300)
    report("facts", facts())
    checks = [run_check(c["board"], c.get("restart", False)) for c in PLAN.get("checks", [])]
    report("checks", checks)
    if PLAN.get("updates"):
        report("updates", updates())
    if PLAN.get("modules"):
        report("modules", kept_modules())
    report("done", {})


main()
