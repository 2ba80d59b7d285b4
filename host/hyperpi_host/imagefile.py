"""Read a disk image as one stream of bytes, whether raw or compressed, without unpacking it.

`open_image(path)` looks at the first bytes (not the file name) and returns an `ImageSource`
that decompresses xz, gzip, zstd or bzip2 on the fly, or reads a raw `.img` directly. The
uncompressed size is known up front for raw images and for xz (from the stream index at the
end of the file); for the other formats it is None until the stream ends. Corrupt or
truncated input raises `ImageError` with one line saying so.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import stat
import struct
import sys
from pathlib import Path
from typing import Any, BinaryIO

# Reads from the compressed file go through a buffer this big: large enough that syscalls are
# not the cost, small enough to stay cheap (the decompressors keep their own windows).
COMPRESSED_BUFFER = 1 << 20
# xz stores sizes as varints of at most 9 bytes (63 bits); more is corruption.
XZ_MAX_VARINT = 9
# An xz index this large would describe millions of blocks: treat it as corrupt, not RAM to spend.
XZ_MAX_INDEX = 64 << 20

MAGICS: list[tuple[bytes, str]] = [
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"BZh", "bzip2"),
]
# Formats we recognise but do not stream, with what to do instead.
UNSUPPORTED = [
    (b"PK\x03\x04", "a zip archive: unzip it first, or use the .img.xz"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive: extract it first, or use the .img.xz"),
]


class ImageError(Exception):
    """The image can't be read: missing, unsupported, corrupt or truncated (one line)."""


class ImageSource:
    """A readable stream of the uncompressed image bytes."""

    def __init__(
        self,
        path: Path,
        compression: str,
        raw: BinaryIO,
        stream: BinaryIO,
        size: int | None,
        compressed_size: int | None,
    ) -> None:
        self.path = path
        self.compression = compression  # "raw", "xz", "gzip", "zstd" or "bzip2"
        self.size = size  # uncompressed bytes, or None if not known yet
        self.compressed_size = compressed_size
        self._raw = raw
        self._stream = stream
        self.position = 0  # uncompressed bytes consumed so far

    def compressed_position(self) -> int:
        """How far into the (compressed) file we are, for progress when `size` is unknown."""
        try:
            return self._raw.tell()
        except (OSError, ValueError):
            return 0

    def readinto(self, buffer: memoryview) -> int:
        """Fill `buffer` as far as the image goes; returns the byte count (short only at the end)."""
        filled = 0
        total = len(buffer)
        while filled < total:
            try:
                n = self._stream.readinto(buffer[filled:])
            except Exception as error:
                if not isinstance(error, _decode_errors()):
                    raise
                raise ImageError(
                    f"{self.path} is corrupt or truncated ({self.compression}: {error}); download or build it again"
                ) from None
            if not n:
                break
            filled += n
        self.position += filled
        return filled

    def skip(self, count: int) -> None:
        """Move `count` bytes forward without using them (unmapped ranges of a bmap)."""
        if self.compression == "raw" and self._raw.seekable():
            self._raw.seek(count, os.SEEK_CUR)
            self.position += count
            return
        scratch = memoryview(bytearray(min(count, 4 << 20)))
        left = count
        while left:
            n = self.readinto(scratch[: min(left, len(scratch))])
            if not n:
                raise ImageError(f"{self.path} ends at byte {self.position}, before its bmap says")
            left -= n

    def abandon(self) -> None:
        """Another thread is stuck reading (a pipe that went quiet): make close() a no-op."""
        self._abandoned = True

    def close(self) -> None:
        if getattr(self, "_abandoned", False):
            return
        self._stream.close()
        self._raw.close()

    def __enter__(self) -> ImageSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def detect(head: bytes) -> str:
    """The compression named by an image's first bytes ("raw" when none is recognised)."""
    for magic, what in UNSUPPORTED:
        if head.startswith(magic):
            raise ImageError(f"the image is {what}")
    for magic, name in MAGICS:
        if head.startswith(magic):
            return name
    return "raw"


def open_image(path: str | Path) -> ImageSource:
    """Open `path` (raw or compressed, a regular file or a pipe) for streaming."""
    path = Path(path)
    try:
        raw = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by ImageSource.close
    except FileNotFoundError:
        raise ImageError(f"no such image: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"{path} is a directory, not an image file") from None
    except PermissionError:
        raise ImageError(f"cannot read {path}: permission denied") from None
    info = os.fstat(raw.fileno())
    regular = stat.S_ISREG(info.st_mode)
    if stat.S_ISBLK(info.st_mode):
        raw.close()
        raise ImageError(f"{path} is a block device; to copy a card, read it into a file first")
    # A regular file is probed with pread (position untouched); a pipe only through the buffer.
    buffered = None if regular else io.BufferedReader(raw, buffer_size=COMPRESSED_BUFFER)
    head = os.pread(raw.fileno(), 8, 0) if buffered is None else buffered.peek(8)[:8]
    try:
        compression = detect(head)
    except ImageError as error:
        raw.close()
        raise ImageError(f"{path}: {error}") from None
    compressed_size = info.st_size if regular else None
    size: int | None = None
    if compression == "raw":
        # The raw fast path reads a regular file straight into the caller's buffer (no copy).
        source = buffered or raw
        return ImageSource(path, "raw", source, source, compressed_size, compressed_size)
    if buffered is None:
        buffered = io.BufferedReader(raw, buffer_size=COMPRESSED_BUFFER)
    stream: BinaryIO
    if compression == "xz":
        if regular:
            size = xz_uncompressed_size(path)
        stream = lzma.LZMAFile(buffered)
    elif compression == "gzip":
        # gzip's trailer holds the size modulo 4 GiB only, so it can't be trusted for images.
        stream = gzip.GzipFile(fileobj=buffered)
    elif compression == "zstd":
        stream = _zstandard(path).ZstdDecompressor().stream_reader(buffered, read_across_frames=True)
    else:
        stream = bz2.BZ2File(buffered)
    return ImageSource(path, compression, buffered, stream, size, compressed_size)


def _zstandard(path: Path) -> Any:
    # zstandard is a host-only dependency (the `host` extra): the device image reads no .zst.
    try:
        import zstandard
    except ImportError:
        raise ImageError(
            f"{path} is zstd-compressed and the zstandard module is missing: "
            "pip install 'hyperpi[host]', or decompress it first (unzstd)"
        ) from None
    return zstandard


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What a damaged compressed stream raises (zstandard's error only once it was imported)."""
    errors: tuple[type[BaseException], ...] = (lzma.LZMAError, EOFError, gzip.BadGzipFile, OSError)
    if "zstandard" in sys.modules:
        errors += (sys.modules["zstandard"].ZstdError,)
    return errors


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(XZ_MAX_VARINT):
        if pos + i >= len(data):
            break
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ImageError("corrupt xz index (bad number)")


def xz_uncompressed_size(path: Path) -> int:
    """Sum the uncompressed sizes in the index of every xz stream in the file.

    xz keeps an index of its blocks at the end of each stream, so the size is known without
    decompressing anything (this is what `xz --list` prints).
    """
    total = 0
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        while end > 0:
            # Streams may be followed by zero padding in multiples of 4 bytes.
            f.seek(end - 4)
            if f.read(4) == b"\0\0\0\0":
                end -= 4
                continue
            if end < 24:
                raise ImageError(f"{path} is corrupt or truncated (xz: no stream footer)")
            f.seek(end - 12)
            footer = f.read(12)
            if footer[10:12] != b"YZ":
                raise ImageError(f"{path} is corrupt or truncated (xz: no stream footer)")
            index_size = (struct.unpack("<I", footer[4:8])[0] + 1) * 4
            index_start = end - 12 - index_size
            if index_size > XZ_MAX_INDEX or index_start < 12:
                raise ImageError(f"{path} is corrupt (xz: bad index size)")
            f.seek(index_start)
            index = f.read(index_size)
            if index[0] != 0:
                raise ImageError(f"{path} is corrupt (xz: bad index)")
            count, pos = _read_varint(index, 1)
            blocks = 0
            for _ in range(count):
                unpadded, pos = _read_varint(index, pos)
                uncompressed, pos = _read_varint(index, pos)
                total += uncompressed
                blocks += (unpadded + 3) & ~3
            end = index_start - blocks - 12  # back over the blocks and the stream header
            if end < 0:
                raise ImageError(f"{path} is corrupt (xz: index does not match the file)")
    return total
