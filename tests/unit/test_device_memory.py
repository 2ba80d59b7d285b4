"""The service's 40 MB memory budget (README "The device"): no OpenSSL in the service process, heap trimming."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hyperpi import memory

LOOPBACK = 'listen_host = "127.0.0.1"\nlisten_port = 0\nmdns = false\n'


def _start(command: list[str], tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start a service with a notify socket; (process, its memory maps once READY=1)."""
    config = tmp_path / "device.toml"
    config.write_text(f'name = "kitchen"\nboard = "oled-bonnet"\nstate_dir = "{tmp_path / "state"}"\n' + LOOPBACK)
    sock_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        sock.settimeout(30)
        proc = subprocess.Popen(
            [*command, "--config", str(config), "--simulate"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "NOTIFY_SOCKET": str(sock_path)},
        )
        try:
            while sock.recv(100) != b"READY=1":
                pass
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
        except BaseException:
            proc.kill()
            raise
    return proc, maps


@pytest.mark.parametrize("how", ["module", "console script"])
def test_service_process_runs_without_openssl(tmp_path: Path, how: str) -> None:
    if how == "module":
        command = [sys.executable, "-m", "hyperpi.device.main"]
    else:
        script = shutil.which("hyperpi-device", path=str(Path(sys.executable).parent))
        if script is None:
            pytest.skip("hyperpi-device is not installed next to this Python (pip install -e .)")
        command = [script]
    proc, maps = _start(command, tmp_path)
    try:
        assert "libcrypto" not in maps and "libssl" not in maps
        assert "_sodium" in maps  # the maps are the live service's: its crypto (libsodium) is there
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0


def test_hashes_the_firmware_uses_work_without_openssl() -> None:
    code = (
        "from hyperpi.device import without_openssl; without_openssl()\n"
        "import hashlib, hmac, sys\n"
        "assert '_hashlib' not in sys.modules or sys.modules['_hashlib'] is None\n"
        "print(hashlib.blake2b(b'x', digest_size=32).hexdigest(), hashlib.sha512(b'x').hexdigest()[:16],\n"
        "      hmac.new(b'k', b'x', hashlib.blake2b).hexdigest()[:16])\n"
        "import asyncio, ssl\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "ModuleNotFoundError: import of ssl halted" in out.stderr  # only TLS is gone
    import hashlib
    import hmac

    assert out.stdout.split() == [
        hashlib.blake2b(b"x", digest_size=32).hexdigest(),
        hashlib.sha512(b"x").hexdigest()[:16],
        hmac.new(b"k", b"x", hashlib.blake2b).hexdigest()[:16],
    ]


def test_release_free_memory_gives_pages_back() -> None:
    if memory._malloc_trim is None:
        pytest.skip("not glibc: malloc_trim does not exist, release_free_memory is a no-op")

    def rss_kib() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    blocks = [bytearray(4000) for _ in range(20_000)]  # ~80 MB below the mmap threshold: the heap
    keep = blocks[-1]  # holds the heap's top: freed pages below it cannot be returned by free()
    del blocks
    before = rss_kib()
    assert memory.release_free_memory() is True
    assert rss_kib() < before - 20_000
    del keep


def test_trim_periodically_trims_until_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(memory, "_malloc_trim", lambda pad: calls.append(pad) or 1)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(memory.trim_periodically(stop, every=0.01))
        await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
    assert len(calls) >= 3 and set(calls) == {0}
