"""Flashing to real files: bmap and whole-image writes, the write order, read-back verification,
Ctrl-C, and the command's refusals (regular-file targets need --to-file)."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hyperpi_host import cli
from hyperpi_host.bmap import make_bmap, read_bmap, write_bmap
from hyperpi_host.flash import open_target
from hyperpi_host.imagefile import open_image
from hyperpi_host.imagewrite import FlashError, flash_image

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


def make_image(path: Path) -> bytes:
    """A 12 MiB sparse image: data at 0 (partition table area), 3-5 MiB, and 9 MiB + a bit."""
    with open(path, "wb") as f:
        for offset, length in [(0, 200_000), (3 * MiB, 2 * MiB + 4096), (9 * MiB, 8192)]:
            f.seek(offset)
            f.write(os.urandom(length))
        f.truncate(12 * MiB)
    return path.read_bytes()


def run_cli(*args: str, stdin: str = "") -> tuple[int, str]:
    """Run `hyperpi flash ...` in this process; returns (exit code, stderr)."""
    old_in, old_err = sys.stdin, sys.stderr
    sys.stdin, sys.stderr = io.StringIO(stdin), io.StringIO()
    try:
        code = cli.main(["flash", *args])
        return code, sys.stderr.getvalue()
    finally:
        sys.stdin, sys.stderr = old_in, old_err


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "hyperpi.img"
    return path, make_image(path)


def test_bmap_flash_writes_only_mapped_ranges_and_verifies(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, data = image
    write_bmap(path, tmp_path / "hyperpi.img.bmap")  # found beside the image
    out = tmp_path / "card.img"
    code, err = run_cli(str(path), str(out), "--to-file", "--yes")
    assert code == 0, err
    assert out.read_bytes() == data
    assert "using " in err and "verified" in err and "done: " in err
    assert out.stat().st_mode & 0o777 == 0o600  # a provisioned image holds secret keys
    # Unmapped ranges stayed holes: the copy occupies about what the image does.
    assert out.stat().st_blocks * 512 <= path.stat().st_blocks * 512 + MiB


@pytest.mark.parametrize("compress", [lzma.compress, gzip.compress])
def test_compressed_without_bmap(tmp_path: Path, image: tuple[Path, bytes], compress) -> None:
    path, data = image
    packed = tmp_path / "hyperpi.img.packed"
    packed.write_bytes(compress(data))
    out = tmp_path / "card.img"
    code, err = run_cli(str(packed), str(out), "--to-file", "--yes")
    assert code == 0, err
    assert out.read_bytes() == data  # gzip: size unknown until the end, file sized after
    # The all-zero 4 MiB chunk (5-9 MiB) was skipped on this fresh file, yet verified as zero.
    assert "verified 12.0 MiB" in err


def test_compressed_with_bmap(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, data = image
    write_bmap(path, tmp_path / "hyperpi.img.bmap")
    packed = tmp_path / "hyperpi.img.xz"
    packed.write_bytes(lzma.compress(data))
    out = tmp_path / "copy.img"
    code, err = run_cli(str(packed), str(out), "--to-file", "--yes", "--no-verify")
    assert code == 0, err
    assert out.read_bytes() == data and "not verified (--no-verify)" in err


def _flash_file(image: Path, out: Path, bmap=None, after_write=None) -> None:
    fd, direct = open_target(str(out), is_block=False)
    try:
        with open_image(image) as source:
            flash_image(
                source,
                fd,
                label=str(out),
                bmap=bmap,
                zero_skip=True,
                direct=direct,
                progress=False,
                after_write=after_write,
            )
    finally:
        os.close(fd)


def test_first_mib_is_written_last(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, data = image
    out = tmp_path / "card.img"
    out.write_bytes(data)  # an old, valid-looking card
    seen = {}

    def check() -> None:
        now = out.read_bytes()
        seen["head"], seen["body"] = now[:MiB], now[3 * MiB : 5 * MiB]

    _flash_file(path, out, after_write=check)
    assert seen["head"] == bytes(MiB)  # while the rest was written, no partition table
    assert seen["body"] == data[3 * MiB : 5 * MiB]
    assert out.read_bytes() == data


@pytest.mark.parametrize(
    "kind, named",
    [
        ("bmap", "bytes 3145728-5246975"),
        ("bmap without checksums", "bytes 4194304-5246975"),
        ("no bmap", "bytes 4194304-8388607"),
    ],
)
def test_read_back_mismatch_names_the_range(tmp_path: Path, image: tuple[Path, bytes], kind: str, named: str) -> None:
    path, data = image
    bmap = None
    if kind != "no bmap":
        xml = make_bmap(path)
        if kind == "bmap without checksums":  # allowed by the format: then we hash as we write
            xml = re.sub(r' chksum="[0-9a-f]+"', "", xml)
            xml = re.sub(r"<BmapFileChecksum>.*</BmapFileChecksum>", "", xml)
        (tmp_path / "x.bmap").write_text(xml)
        bmap = read_bmap(tmp_path / "x.bmap")
    out = tmp_path / "card.img"

    def damage() -> None:  # a card that silently drops a write
        with open(out, "r+b") as f:
            f.seek(4 * MiB + 100)
            f.write(b"\xff")

    with pytest.raises(FlashError) as failed:
        _flash_file(path, out, bmap=bmap, after_write=damage)
    assert str(failed.value) == (
        f"verify failed: {named} of {out} differ from the image (a faulty "
        f"or fake card?); {out} was left invalid (first MiB zeroed)"
    )
    assert out.read_bytes()[:MiB] == bytes(MiB)


def test_image_not_matching_its_bmap(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, data = image
    bmap = tmp_path / "hyperpi.img.bmap"
    write_bmap(path, bmap)
    with open(path, "r+b") as f:  # the image changed after its bmap was made
        f.seek(9 * MiB + 10)
        f.write(b"\0\1")
    out = tmp_path / "card.img"
    code, err = run_cli(str(path), str(out), "--to-file", "--yes")
    assert code == 1
    last = err.splitlines()[-1]
    assert last.startswith("hyperpi: image bytes 9437184-9445375 do not match the checksum in its bmap")
    assert "left invalid" in last and "Traceback" not in err
    assert out.read_bytes()[:MiB] == bytes(MiB)


def test_bmap_of_another_image(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    other = tmp_path / "other.img"
    other.write_bytes(os.urandom(8192))
    write_bmap(other, tmp_path / "other.bmap")
    target = tmp_path / "o.img"
    target.write_bytes(b"kept")
    code, err = run_cli(str(path), str(target), "--to-file", "--yes", "--bmap", str(tmp_path / "other.bmap"))
    assert code == 1 and err.endswith("do not belong together\n")
    assert target.read_bytes() == b"kept"  # found before anything was written


def test_refusals_without_writing(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    existing = tmp_path / "keep.img"
    existing.write_bytes(b"precious")
    code, err = run_cli(str(path), str(existing))
    assert code == 2 and "is a regular file, not a disk; pass --to-file" in err
    code, err = run_cli(str(path), str(existing), "--to-file", stdin="no\n")
    assert code == 1 and "not confirmed, nothing was written" in err
    assert existing.read_bytes() == b"precious"
    code, err = run_cli(str(path), "/dev/null", "--yes")
    assert code == 2 and "/dev/null is not a block device" in err
    code, err = run_cli(str(path), "/dev/null", "--to-file", "--yes")
    assert code == 2 and "not a regular file; --to-file writes image files only" in err
    code, err = run_cli(str(tmp_path / "missing.img.xz"), str(existing), "--to-file", "--yes")
    assert code == 2 and err == f"hyperpi: no such image: {tmp_path / 'missing.img.xz'}\n"
    code, err = run_cli(str(path))
    assert code == 2 and "give an IMAGE and a TARGET" in err
    code, err = run_cli(str(path), str(path), "--to-file", "--yes")
    assert code == 2 and "is the image or its bmap itself" in err
    assert path.stat().st_size == 12 * MiB
    code, err = run_cli(str(path), "/dev/sdzz7", "--yes")
    assert code == 2 and "no such device: /dev/sdzz7" in err
    assert existing.read_bytes() == b"precious"


def test_confirmed_overwrite_of_a_file(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, data = image
    existing = tmp_path / "old.img"
    existing.write_bytes(b"old" * 10_000_000)  # longer than the image: must shrink
    code, err = run_cli(str(path), str(existing), "--to-file", stdin="yes\n")
    assert code == 0, err
    assert "will be overwritten" in err and existing.read_bytes() == data


def test_ctrl_c_leaves_an_invalid_card(tmp_path: Path) -> None:
    fifo = tmp_path / "image.pipe"  # the image arrives slowly, so we stop it mid-write
    os.mkfifo(fifo)
    out = tmp_path / "card.img"
    out.write_bytes(b"\x55" * (4 * MiB))  # an old card that looks valid
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyperpi_host.cli", "flash", str(fifo), str(out), "--to-file", "--yes"],
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    head = os.urandom(MiB)
    writer = open(fifo, "wb")
    try:
        writer.write(head + os.urandom(5 * MiB))
        writer.flush()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait until data past the first MiB is on disk
            with open(out, "rb") as f:
                f.seek(MiB)
                if f.read(MiB) not in (b"", bytes(MiB), b"\x55" * MiB):
                    break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        threading.Thread(target=writer.close, daemon=True).start()  # may block on a dead reader
    assert proc.returncode == 130, err
    assert f"interrupted: {out} was left deliberately invalid (its first MiB is zeroed" in err
    assert "Traceback" not in err
    assert out.read_bytes()[:MiB] == bytes(MiB)


def test_list_shows_every_disk_with_a_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["flash", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    # This machine's own disks are never offered; whatever it has, each line says why or what.
    assert lines and all(
        line.startswith(("/dev/", "    /dev/", "not usable: /dev/", "usable once", "no removable disk found"))
        for line in lines
    )
    assert not any(line.startswith("/dev/vda:") for line in lines)
