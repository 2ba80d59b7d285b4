#!/usr/bin/env python3
"""Builds the lgpio wheel for the new root ($1) into its /opt/hyperpi/wheels, on this host.

lgpio is gpiozero's pin backend on Debian's kernel (the GPIO character device). PyPI has no wheel
for Debian 13's Python 3.13 on arm64, so the build makes one from the pinned sdist, statically
linked as the sdist's own PYPI=1 build is. It used to compile inside the root under qemu-user
(~4.5 of a cold build's ~16 minutes, most of it installing and running gcc emulated); now this
host's cross compiler does it in seconds:
  swig      lgpio.i -> lgpio.py + lgpio_wrap.c (swig from PyPI, pinned by hash: Python 3.13 needs
            swig 4.3; Debian 12's 4.1 is too old)
  headers   the root's own Python headers: libpython3.X-dev of the root's suite, fetched by this
            host's apt with the root's sources and unpacked beside it, never installed in it
  compile   aarch64-linux-gnu-gcc, the flags setuptools uses for the sdist (-O3 -pthread, -lrt -ldl)
  pack      a wheel (zip + RECORD), tagged for the root's Python
The image test proves the result: the service drives the emulated Pi's GPIO through it.
Standard library only: it runs on the build host's python3.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

VERSION = "0.2.2.0"
SDIST_SHA256 = "11372e653b200f76a0b3ef8a23a0735c85ec678a9f8550b9893151ed0f863fff"
SWIG = (
    "swig==4.3.1"
    " --hash=sha256:5f31b7e815b76b42cc503322ad88e6eb3ebb0bb0b91044445c8a31b5b4aa4664"  # x86_64
    " --hash=sha256:c5391080a3785b0505eb211af1cbb1f1e3838e5bb1e54f740a9d7ba2e385c879"  # aarch64
)
CC = "aarch64-linux-gnu-gcc"
TRIPLET = "aarch64-linux-gnu"
PLATFORM = "linux_aarch64"


def run(*args: str | Path, cwd: Path | None = None) -> None:
    subprocess.run([str(a) for a in args], check=True, cwd=cwd)


def target_python(root: Path) -> str:
    """The root's python3 version, e.g. "3.13", from its /usr/bin/python3 link."""
    match = re.fullmatch(r"python(3\.\d+)", os.readlink(root / "usr/bin/python3"))
    if not match:
        sys.exit(f"lgpio_wheel.py: {root}/usr/bin/python3 is not a link to python3.X")
    return match.group(1)


def fetch_sdist(work: Path) -> Path:
    run(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
        "-d", work, f"lgpio=={VERSION}")  # fmt: skip
    sdist = work / f"lgpio-{VERSION}.tar.gz"
    if hashlib.sha256(sdist.read_bytes()).hexdigest() != SDIST_SHA256:
        sys.exit(f"lgpio_wheel.py: {sdist.name} does not match its pinned sha256")
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    return work / f"lgpio-{VERSION}"


def fetch_headers(root: Path, python: str, work: Path) -> Path:
    """Unpack the root's libpython3.X-dev into work/sysroot (headers only are used)."""
    debs = work / "debs"
    debs.mkdir()
    # This host's apt, reading the root's sources, lists and dpkg status (as mmdebstrap's hooks do).
    run("apt-get", "-qq", "-o", f"Dir={root}", "-o", "APT::Architecture=arm64", "-o", "Debug::NoLocking=1",
        "-o", "APT::Sandbox::User=root", "download", f"libpython{python}-dev", cwd=debs)  # fmt: skip
    sysroot = work / "sysroot"
    for deb in debs.glob("*.deb"):
        run("dpkg-deb", "-x", deb, sysroot)
    return sysroot


def fetch_swig(work: Path) -> Path:
    venv = work / "swig-venv"
    run(sys.executable, "-m", "venv", venv)
    requirements = work / "swig.txt"
    requirements.write_text(SWIG + "\n")
    run(venv / "bin/pip", "install", "--quiet", "--require-hashes", "--only-binary", ":all:", "-r", requirements)
    return venv / "bin/swig"


def compile_module(src: Path, sysroot: Path, python: str, swig: Path) -> str:
    """swig + cross gcc in the sdist's folder; returns the extension module's file name."""
    run(swig, "-python", "-o", "lgpio_wrap.c", "lgpio.i", cwd=src)
    tag = python.replace(".", "")
    module = f"_lgpio.cpython-{tag}-{TRIPLET}.so"
    sources = sorted(str(p.relative_to(src)) for p in (src / "src").glob("lg*.c"))
    # Debian's pyconfig.h includes <aarch64-linux-gnu/python3.X/pyconfig.h>: the sysroot's include dir too.
    includes = [f"-I{sysroot}/usr/include/python{python}", f"-I{sysroot}/usr/include"]
    run(CC, "-shared", "-fPIC", "-fwrapv", "-O3", "-pthread", "-DNDEBUG", "-Isrc", *includes,
        *sources, "src/rgpiod.c", "lgpio_wrap.c", "-lrt", "-ldl", "-s", "-o", module, cwd=src)  # fmt: skip
    return module


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def pack_wheel(src: Path, module: str, python: str, out: Path) -> Path:
    tag = "cp" + python.replace(".", "")
    info = f"lgpio-{VERSION}.dist-info"
    files = {
        module: (src / module).read_bytes(),
        "lgpio.py": (src / "lgpio.py").read_bytes(),
        f"{info}/METADATA": (src / "PKG-INFO").read_bytes(),
        f"{info}/LICENSE": (src / "LICENSE").read_bytes(),
        f"{info}/top_level.txt": b"_lgpio\nlgpio\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: hyperpi image/hooks/lgpio_wheel.py\n"
            f"Root-Is-Purelib: false\nTag: {tag}-{tag}-{PLATFORM}\n"
        ).encode(),
    }
    record = [record_line(name, data) for name, data in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    wheel = out / f"lgpio-{VERSION}-{tag}-{tag}-{PLATFORM}.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return wheel


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit("usage: lgpio_wheel.py ROOT")
    root = Path(sys.argv[1]).resolve()
    python = target_python(root)
    with tempfile.TemporaryDirectory(prefix="hyperpi-lgpio-") as tmp:
        work = Path(tmp)
        src = fetch_sdist(work)
        module = compile_module(src, fetch_headers(root, python, work), python, fetch_swig(work))
        wheel = pack_wheel(src, module, python, root / "opt/hyperpi/wheels")
    print(f"lgpio_wheel.py: {wheel.relative_to(root)}")


if __name__ == "__main__":
    main()
