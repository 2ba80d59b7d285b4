"""Image streams (imagefile), block maps (bmap) and the progress display, on real files."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import lzma
import os
import pty
import shutil
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest
import zstandard

from hyperpi_host import bmap as bmapmod
from hyperpi_host.bmap import BmapError, make_bmap, read_bmap
from hyperpi_host.imagefile import ImageError, open_image, xz_uncompressed_size
from hyperpi_host.progress import Progress

MiB = 1 << 20


def sparse_image(path: Path, size: int, extents: list[tuple[int, int]], seed: int = 1) -> bytes:
    """A sparse file of `size` with random data at each (offset, length); returns its bytes."""
    rng = hashlib.sha256(str(seed).encode()).digest()
    with open(path, "wb") as f:
        for offset, length in extents:
            f.seek(offset)
            f.write((rng * (length // len(rng) + 1))[:length] if seed == 0 else os.urandom(length))
        f.truncate(size)
    return path.read_bytes()


def read_all(path: Path) -> bytes:
    out = bytearray()
    buf = memoryview(bytearray(300_000))  # odd size: chunking must not matter
    with open_image(path) as source:
        while n := source.readinto(buf):
            out += buf[:n]
    return bytes(out)


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "disk.img"
    data = sparse_image(path, 9 * MiB + 512, [(0, 70_000), (3 * MiB, MiB + 5), (9 * MiB, 512)])
    return path, data


@pytest.mark.parametrize("kind", ["raw", "xz", "gzip", "zstd", "bzip2"])
def test_every_format_streams_the_same_bytes(tmp_path: Path, image: tuple[Path, bytes], kind: str) -> None:
    path, data = image
    packed = tmp_path / f"disk.{kind}"
    writers = {
        "raw": lambda d: d,
        "xz": lzma.compress,
        "gzip": gzip.compress,
        "bzip2": bz2.compress,
        "zstd": zstandard.ZstdCompressor().compress,
    }
    packed.write_bytes(writers[kind](data))
    with open_image(packed) as source:
        assert source.compression == kind
        assert source.size == (len(data) if kind in ("raw", "xz") else None)
    assert read_all(packed) == data


def test_xz_size_from_index_of_several_streams(tmp_path: Path) -> None:
    # Two concatenated streams (`cat a.xz b.xz`); the index reader also skips stream padding.
    a, b = os.urandom(200_000), bytes(3 * MiB)
    packed = tmp_path / "two.img.xz"
    packed.write_bytes(lzma.compress(a) + lzma.compress(b))
    assert read_all(packed) == a + b
    assert xz_uncompressed_size(packed) == len(a) + len(b)
    with open(packed, "ab") as f:
        f.write(b"\0" * 8)
    assert xz_uncompressed_size(packed) == len(a) + len(b)
    if shutil.which("xz"):  # the real tool's multi-block, multi-threaded output
        raw = tmp_path / "mt.img"
        raw.write_bytes(os.urandom(MiB) + bytes(5 * MiB))
        subprocess.run(["xz", "-T2", "--block-size=1MiB", "-k", str(raw)], check=True)
        assert xz_uncompressed_size(tmp_path / "mt.img.xz") == 6 * MiB


def test_truncated_and_corrupt_images_fail_in_one_line(tmp_path: Path) -> None:
    whole = lzma.compress(os.urandom(MiB))
    cut = tmp_path / "cut.img.xz"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        open_image(cut)  # the index at the end is missing
    gz = tmp_path / "cut.img.gz"
    gz.write_bytes(gzip.compress(os.urandom(MiB))[:-5000])
    with pytest.raises(ImageError, match=r"cut.img.gz is corrupt or truncated \(gzip: "):
        read_all(gz)


def test_unsupported_and_missing(tmp_path: Path) -> None:
    archive = tmp_path / "image.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("image.img", b"x" * 100)
    with pytest.raises(ImageError, match="is a zip archive: unzip it first"):
        open_image(archive)
    with pytest.raises(ImageError, match="no such image"):
        open_image(tmp_path / "nope.img")
    with pytest.raises(ImageError, match="is a directory"):
        open_image(tmp_path)


def test_pipe_source(tmp_path: Path) -> None:
    data = os.urandom(3 * MiB)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes(lzma.compress(data)))
    feeder.start()
    assert read_all(fifo) == data
    feeder.join()


# ------------------------------------------------------------------------------------- bmap


def test_bmap_round_trip_and_matches_bmaptool(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, data = image
    ours = tmp_path / "ours.bmap"
    bmapmod.write_bmap(path, ours)
    parsed = read_bmap(ours)
    assert parsed.image_size == len(data) and parsed.block_size == 4096
    for r in parsed.ranges:
        assert hashlib.sha256(data[r.start : r.end]).hexdigest() == r.checksum
    # Everything outside the ranges is zero (holes).
    covered = bytearray(len(data))
    for r in parsed.ranges:
        covered[r.start : r.end] = data[r.start : r.end]
    assert bytes(covered) == data
    if shutil.which("bmaptool") is None:
        pytest.fail("bmaptool is missing: tests/system-deps.sh installs bmap-tools")
    theirs = tmp_path / "theirs.bmap"
    subprocess.run(["bmaptool", "create", "-o", str(theirs), str(path)], check=True, capture_output=True)
    assert read_bmap(theirs).ranges == parsed.ranges
    # ...and bmaptool accepts ours.
    out = tmp_path / "copy.img"
    subprocess.run(["bmaptool", "copy", "--bmap", str(ours), str(path), str(out)], check=True, capture_output=True)
    assert out.read_bytes() == data


def _rewrite(path: Path, old: str, new: str) -> None:
    """Edit a bmap and fix its file checksum, so only the edit is wrong."""
    text = path.read_text().replace(old, new, 1)
    checksum = text.split("<BmapFileChecksum>")[1].split("</BmapFileChecksum>")[0].strip()
    blank = text.replace(checksum, "0" * 64, 1)
    path.write_text(blank.replace("0" * 64, hashlib.sha256(blank.encode()).hexdigest(), 1))


def test_bmap_errors(tmp_path: Path, image: tuple[Path, bytes]) -> None:
    path, _ = image
    good = make_bmap(path)
    bad = tmp_path / "x.bmap"
    bad.write_text(good.replace("<BlockSize> 4096", "<BlockSize>  4096", 1))  # checksum now wrong
    with pytest.raises(BmapError, match="is corrupt: its checksum does not match"):
        read_bmap(bad)
    bad.write_text(good)
    _rewrite(bad, 'version="2.0"', 'version="3.0"')
    with pytest.raises(BmapError, match="is bmap format 3.0; this hyperpi reads up to 2.x"):
        read_bmap(bad)
    bad.write_text(good)
    _rewrite(bad, "<MappedBlocksCount> ", "<MappedBlocksCount> 1")
    with pytest.raises(BmapError, match="MappedBlocksCount is 1"):
        read_bmap(bad)
    bad.write_text(good)
    _rewrite(bad, "> 0-17 </Range>", "> 17-0 </Range>")
    with pytest.raises(BmapError, match="range '17-0' is out of order"):
        read_bmap(bad)
    bad.write_text("<bmap version='2.0'><ImageSize>")
    with pytest.raises(BmapError, match="XML error"):
        read_bmap(bad)
    with pytest.raises(BmapError, match="no such bmap file"):
        read_bmap(tmp_path / "missing.bmap")


def test_bmap_format_1_with_sha1(tmp_path: Path) -> None:
    data = os.urandom(8192)
    ranges = f'<Range sha1="{hashlib.sha1(data).hexdigest()}"> 0-1 </Range>'
    text = (
        f'<?xml version="1.0" ?>\n<bmap version="1.4"><ImageSize> 20480 </ImageSize>'
        f"<BlockSize> 4096 </BlockSize><BlocksCount> 5 </BlocksCount>"
        f"<MappedBlocksCount> 2 </MappedBlocksCount><BmapFileSHA1> {'0' * 40} </BmapFileSHA1>"
        f"<BlockMap>{ranges}</BlockMap></bmap>"
    )
    text = text.replace("0" * 40, hashlib.sha1(text.encode()).hexdigest())
    path = tmp_path / "old.bmap"
    path.write_text(text)
    parsed = read_bmap(path)
    assert parsed.checksum_type == "sha1" and parsed.mapped_bytes == 8192
    assert parsed.ranges[0].checksum == hashlib.sha1(data).hexdigest()


def test_find_bmap_beside_the_image(tmp_path: Path) -> None:
    image = tmp_path / "hyperpi.img.xz"
    image.write_bytes(b"")
    assert bmapmod.find_bmap(image) is None
    (tmp_path / "hyperpi.img.bmap").write_text("")
    assert bmapmod.find_bmap(image) == tmp_path / "hyperpi.img.bmap"
    (tmp_path / "hyperpi.img.xz.bmap").write_text("")
    assert bmapmod.find_bmap(image) == tmp_path / "hyperpi.img.xz.bmap"


# --------------------------------------------------------------------------------- progress


def test_progress_plain_lines_when_not_a_terminal() -> None:
    out = io.StringIO()
    with Progress(100 * MiB, "writing /dev/sdb", stream=out) as bar:
        for _ in range(100):
            bar.update(MiB)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("writing /dev/sdb [") and "0.0%" in lines[0]
    assert 10 <= len(lines) <= 13  # one per 10%, plus start and end
    assert "100.0% 100.0 MiB/100.0 MiB" in lines[-1]
    assert "\r" not in out.getvalue()


def test_progress_redraws_one_line_on_a_terminal() -> None:
    master, slave = pty.openpty()
    with open(slave, "w", closefd=True) as stream:
        bar = Progress(None, "reading", stream=stream)  # unknown total: no bar, just bytes
        bar.update(3 * MiB)
        bar.close()
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other end is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    text = b"".join(chunks).decode()
    assert text.startswith("\rreading 0 B") and "\rreading 3.0 MiB" in text
    assert text.endswith("\n") and text.count("\n") == 1
