"""Writing a disk image to a card or file: safely, fast, and verified (the engine of `hyperpi flash`).

Order of work, chosen so that a card is never left looking good when it is not:
1. (the command, flash.py: the target passes `blockdev.inspect_target`, is confirmed by the
   user, and is opened O_EXCL);
2. its first MiB (partition table) and, on a disk, its last MiB (backup GPT) are zeroed and
   flushed: from here on an interrupted flash leaves a card no computer will boot or mount;
3. the image is streamed (decompressing on the fly) with large aligned O_DIRECT writes: only
   the bmap's mapped ranges, each checked against its sha256 while writing; without a bmap,
   all-zero chunks are skipped only on a target known to read back zeroes (a fresh file);
4. flush, then read the card back (O_DIRECT, or with its cache dropped) and compare with the
   bmap's range checksums, or the chunk hashes computed while writing;
5. only then the first MiB is written, flushed and read back.
Ctrl-C (or SIGTERM) at any point re-zeroes the first MiB and says so.

`flash_image` takes an open target and writes; no prompts, no policy. Errors are FlashError.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import mmap
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hyperpi_host.bmap import Bmap
from hyperpi_host.imagefile import ImageError, ImageSource
from hyperpi_host.progress import Progress

# Writes of 4 MiB: past the point where bigger writes get faster on SD cards and USB readers
# (bmaptool batches 1 MiB, dd users pick 4M), and a whole erase block on most cards.
CHUNK = 4 << 20
# Buffers in flight between the reading (decompress + hash) thread and the writing thread:
# enough to keep both busy, 16 MiB of RAM in all.
BUFFERS = 4
# The first MiB holds the MBR/GPT and the boot partition's start; it is written last.
HEAD = 1 << 20
# The backup GPT header sits in the last sectors of a disk; zeroing its last MiB removes it.
TAIL = 1 << 20
BLKRRPART = 0x125F  # ioctl: ask the kernel to re-read the partition table
BLKFLSBUF = 0x1261  # ioctl: drop a block device's buffer cache
UNBOUNDED = 1 << 62  # "until the image ends" when its size is not known up front
ZERO_CHUNK = bytes(CHUNK)
# After a stop, how long to wait for the reading thread to finish its current piece.
READER_JOIN_SECONDS = 1.0


class FlashError(Exception):
    """Writing or verifying failed; the message says where, and that the card was left invalid."""


class FlashInterrupted(FlashError):
    """The user stopped the flash; the target was left deliberately invalid."""


@dataclass
class FlashResult:
    image_size: int
    written: int  # bytes written to the target
    verified: int  # bytes read back and compared
    write_seconds: float
    verify_seconds: float
    direct_io: bool


@dataclass
class _Segment:
    """Bytes [start, end) the image defines; `checksum` (hex) covers all of them, if known."""

    start: int
    end: int
    checksum: str | None


class _Target:
    """The open target: aligned positional I/O with O_DIRECT when the kernel allows it."""

    def __init__(self, fd: int, direct: bool, is_block: bool, label: str) -> None:
        self.fd, self.direct, self.is_block, self.label = fd, direct, is_block, label

    def _set_direct(self, on: bool) -> None:
        flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, (flags | os.O_DIRECT) if on else (flags & ~os.O_DIRECT))

    def _io(self, call: Callable[[], int]) -> int:
        try:
            return call()
        except OSError as error:
            # O_DIRECT needs aligned offsets and lengths; an odd-sized image tail is not.
            if error.errno != errno.EINVAL or not self.direct:
                raise
        self._set_direct(False)
        try:
            return call()
        finally:
            self._set_direct(True)

    def write(self, data: memoryview, offset: int) -> None:
        done = 0
        while done < len(data):
            try:
                n = self._io(functools.partial(os.pwrite, self.fd, data[done:], offset + done))
                if n == 0:  # the end of a block device
                    raise OSError(errno.ENOSPC, "no space left")
                done += n
            except OSError as error:
                if error.errno == errno.ENOSPC:
                    raise FlashError(
                        f"{self.label} is full at byte {offset + done}: the image is bigger than the target"
                    ) from None
                raise FlashError(f"write error on {self.label} at byte {offset + done}: {error.strerror}") from None

    def read(self, buffer: memoryview, offset: int) -> int:
        try:
            return self._io(lambda: os.preadv(self.fd, [buffer], offset))
        except OSError as error:
            raise FlashError(f"read error on {self.label} at byte {offset}: {error.strerror}") from None

    def flush(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError as error:
            raise FlashError(f"flushing {self.label} failed: {error.strerror}") from None

    def drop_cache(self) -> None:
        """Make the next reads come from the medium, not from memory."""
        if self.direct:
            return
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if self.is_block:
            try:
                fcntl.ioctl(self.fd, BLKFLSBUF)
            except OSError:
                pass


def _aligned(size: int) -> mmap.mmap:
    # Anonymous mmap memory is page-aligned, which O_DIRECT requires of buffers.
    return mmap.mmap(-1, size)


def _segments(source: ImageSource, bmap: Bmap | None) -> list[_Segment]:
    if bmap is not None:
        return [_Segment(r.start, r.end, r.checksum) for r in bmap.ranges]
    return [_Segment(0, source.size if source.size is not None else UNBOUNDED, None)]


class _Reader(threading.Thread):
    """Reads the image (decompressing), checks bmap ranges, hashes chunks; hands buffers on."""

    def __init__(self, source: ImageSource, segments: list[_Segment], bmap: Bmap | None, head: bytearray) -> None:
        super().__init__(daemon=True, name="flash-reader")
        self.source, self.segments, self.bmap, self.head = source, segments, bmap, head
        self.free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(BUFFERS):
            self.free.put(_aligned(CHUNK))
        self.out: queue.Queue[tuple] = queue.Queue()
        self.stop = threading.Event()
        self.head_length = 0
        self.end = 0  # where the image data ended (its size, once known)

    def run(self) -> None:
        try:
            self._run()
            self.out.put(("done",))
        except BaseException as error:  # handed to the writing thread, which reports it
            self.out.put(("error", error))

    def _run(self) -> None:
        source, pos = self.source, 0
        head_view = memoryview(self.head)
        for segment in self.segments:
            if segment.start > pos:
                source.skip(segment.start - pos)
                pos = segment.start
            digest = hashlib.new(self.bmap.checksum_type or "sha256") if segment.checksum and self.bmap else None
            ended = False
            while pos < segment.end and not self.stop.is_set():
                if pos < HEAD:
                    piece = head_view[pos : min(segment.end, HEAD)]
                    n = source.readinto(piece)
                    if digest:
                        digest.update(piece[:n])
                    self.head_length = max(self.head_length, pos + n)
                    pos += n
                    if n < len(piece):
                        ended = True
                        break
                    continue
                buf = self.free.get()
                # Chunks end on CHUNK boundaries of the card (whole erase blocks on most cards).
                view = memoryview(buf)[: min(CHUNK - pos % CHUNK, segment.end - pos)]
                n = source.readinto(view)
                if n == 0:
                    self.free.put(buf)
                    ended = True
                    break
                if digest:
                    digest.update(view[:n])
                    self.out.put(("chunk", pos, buf, n, None))
                else:
                    self.out.put(("chunk", pos, buf, n, hashlib.sha256(view[:n]).digest()))
                pos += n
                if n < len(view):
                    ended = True
                    break
            if self.stop.is_set():
                return
            if ended and segment.end != UNBOUNDED:
                raise ImageError(
                    f"{source.path} ends at byte {pos}, but "
                    f"{'its bmap' if self.bmap else 'its header'} says it has "
                    f"{segment.end if not self.bmap else self.bmap.image_size} bytes; "
                    "it is truncated"
                )
            if digest and digest.hexdigest() != segment.checksum:
                raise ImageError(
                    f"image bytes {segment.start}-{segment.end - 1} do not match the "
                    "checksum in its bmap: the image or the .bmap is corrupt or they "
                    "do not belong together"
                )
        self.end = pos if not self.bmap else self.bmap.image_size


def flash_image(
    source: ImageSource,
    fd: int,
    *,
    label: str,
    bmap: Bmap | None = None,
    verify: bool = True,
    is_block: bool = False,
    zero_skip: bool = False,
    direct: bool = False,
    target_size: int | None = None,
    progress: bool = True,
    after_write: Callable[[], None] | None = None,
) -> FlashResult:
    """Write `source` to the open target `fd` in the safe order described in the module doc.

    `zero_skip`: the target already reads back zeroes everywhere (a freshly truncated file), so
    all-zero chunks need not be written. `after_write` runs once everything but the first MiB
    is written and flushed, before the read-back (tests use it to check the order and to
    damage the target). Raises FlashError / FlashInterrupted / ImageError.
    """
    # Checks that need no writing come first: failing them leaves the target untouched.
    if bmap and source.size is not None and source.size != bmap.image_size:
        raise ImageError(
            f"the bmap describes a {bmap.image_size}-byte image but {source.path} "
            f"has {source.size} bytes: they do not belong together"
        )
    image_size = bmap.image_size if bmap else source.size
    if image_size is not None and target_size is not None and image_size > target_size:
        raise FlashError(f"{label} is too small ({target_size} bytes) for the image ({image_size} bytes)")
    target = _Target(fd, direct, is_block, label)
    zero_head = _aligned(HEAD)
    previous_term = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM too: clean up
    try:
        return _flash(source, target, bmap, verify, zero_skip, target_size, progress, zero_head, after_write)
    except KeyboardInterrupt:
        _invalidate(target, zero_head)
        raise FlashInterrupted(
            f"interrupted: {label} was left deliberately invalid (its first "
            "MiB is zeroed, so nothing will boot or mount it); flash it again"
        ) from None
    except (FlashError, ImageError) as error:
        _invalidate(target, zero_head)
        raise type(error)(f"{error}; {label} was left invalid (first MiB zeroed)") from None
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous_term)


def _invalidate(target: _Target, zero_head: mmap.mmap) -> None:
    """Zero the first MiB again, ignoring a second Ctrl-C while doing so."""
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        target.write(memoryview(zero_head), 0)
        target.flush()
    except FlashError:
        pass  # the error being reported already says what went wrong
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)


def _flash(
    source: ImageSource,
    target: _Target,
    bmap: Bmap | None,
    verify: bool,
    zero_skip: bool,
    target_size: int | None,
    show: bool,
    zero_head: mmap.mmap,
    after_write: Callable[[], None] | None,
) -> FlashResult:
    image_size = bmap.image_size if bmap else source.size

    # Step 2: make the target invalid before anything else is written.
    if not target.is_block:
        os.ftruncate(target.fd, 0)  # fresh file: every unwritten byte is a hole reading as zero
        if image_size is not None:
            os.ftruncate(target.fd, image_size)
    target.write(memoryview(zero_head), 0)
    if target.is_block and target_size and target_size >= 2 * HEAD:
        target.write(memoryview(zero_head)[:TAIL], target_size - TAIL)
    target.flush()

    # Step 3: stream the image.
    segments = _segments(source, bmap)
    head = bytearray(HEAD)
    reader = _Reader(source, segments, bmap, head)
    total = bmap.mapped_bytes if bmap else (image_size or source.compressed_size)
    by_compressed = not bmap and image_size is None
    chunks: list[tuple[int, int, bytes | None]] = []
    written = 0
    started = time.monotonic()
    bar = Progress(total, f"writing {target.label}") if show else None
    reader.start()
    try:
        while True:
            item = reader.out.get()
            if item[0] == "error":
                raise item[1]
            if item[0] == "done":
                break
            _, pos, buf, n, digest = item
            view = memoryview(buf)[:n]
            if digest is None or not (zero_skip and digest == _zero_digest(n)):
                target.write(view, pos)
                written += n
            chunks.append((pos, n, digest))
            reader.free.put(buf)
            if bar:
                bar.update(source.compressed_position() - bar.done if by_compressed else n)
        if bar and not by_compressed:
            bar.update(reader.head_length)  # read along the way, written at the end
    finally:
        reader.stop.set()
        reader.free.put(_aligned(CHUNK))  # unblock the reader if it waits for a buffer
        reader.join(timeout=READER_JOIN_SECONDS)
        if reader.is_alive():
            # Still blocked reading a pipe that has gone quiet: closing the image would wait
            # for that read forever, so leave it to process exit.
            source.abandon()
        if bar:
            bar.close()
    image_size = reader.end
    head_length = min(reader.head_length, image_size)
    if not target.is_block:
        os.ftruncate(target.fd, image_size)  # size unknown until now for some compressed images
    target.flush()
    write_seconds = time.monotonic() - started
    if after_write:
        after_write()

    # Step 4: read back everything but the head.
    verified = 0
    started = time.monotonic()
    if verify:
        verified = _verify(target, segments, bmap, chunks, head, image_size, show)

    # Step 5: the partition table goes on last; read it back too.
    head_buffer = _aligned(HEAD)  # zero_head stays zero: it is what an interruption writes
    head_view = memoryview(head_buffer)
    head_view[:head_length] = memoryview(head)[:head_length]
    target.write(head_view[:head_length], 0)
    target.flush()
    written += head_length
    if verify and head_length:
        target.drop_cache()
        check = _aligned(HEAD)
        n = target.read(memoryview(check)[:head_length], 0)
        if n != head_length or check[:head_length] != head[:head_length]:
            first_bad = next((i for i in range(n) if check[i] != head[i]), n)
            raise FlashError(
                f"verify failed: bytes {first_bad}-{head_length - 1} of {target.label} "
                "differ from the image (a faulty or fake card?)"
            )
        verified += head_length
    if target.is_block:
        try:
            fcntl.ioctl(target.fd, BLKRRPART)  # let the system see the new partitions
        except OSError:
            pass
    return FlashResult(image_size, written, verified, write_seconds, time.monotonic() - started, target.direct)


_ZERO_DIGESTS: dict[int, bytes] = {}


def _zero_digest(n: int) -> bytes:
    if n not in _ZERO_DIGESTS:
        _ZERO_DIGESTS[n] = hashlib.sha256(ZERO_CHUNK[:n]).digest()
    return _ZERO_DIGESTS[n]


def _read_back(target: _Target, spans: list[tuple[int, int]]) -> Iterator[tuple[int, memoryview]]:
    """Read spans [start, end) of the target in CHUNK pieces on a helper thread (so reading the
    card and hashing overlap); yields (offset, data) in order."""
    free: queue.Queue[mmap.mmap] = queue.Queue()
    for _ in range(BUFFERS):
        free.put(_aligned(CHUNK))
    out: queue.Queue[tuple] = queue.Queue()
    stop = threading.Event()

    def work() -> None:
        try:
            for start, end in spans:
                pos = start
                while pos < end and not stop.is_set():
                    buf = free.get()
                    n = target.read(memoryview(buf)[: min(CHUNK, end - pos)], pos)
                    if n <= 0:
                        raise FlashError(f"{target.label} ends at byte {pos}, inside the image")
                    out.put(("data", pos, buf, n))
                    pos += n
            out.put(("done",))
        except BaseException as error:
            out.put(("error", error))

    thread = threading.Thread(target=work, daemon=True, name="flash-verify")
    thread.start()
    try:
        while True:
            item = out.get()
            if item[0] == "error":
                raise item[1]
            if item[0] == "done":
                return
            _, pos, buf, n = item
            yield pos, memoryview(buf)[:n]
            free.put(buf)
    finally:
        stop.set()
        free.put(_aligned(CHUNK))


def _verify(
    target: _Target,
    segments: list[_Segment],
    bmap: Bmap | None,
    chunks: list[tuple[int, int, bytes | None]],
    head: bytearray,
    image_size: int,
    show: bool,
) -> int:
    """Compare the target (past the head) with the bmap's range checksums and, where there
    are none (no bmap, or a bmap range without one), the chunk hashes taken while writing."""
    target.drop_cache()
    ranges = [(s.start, min(s.end, image_size), s.checksum) for s in segments if s.checksum]
    hashed = [(pos, n, digest) for pos, n, digest in chunks if digest is not None]
    spans = [(max(start, HEAD), end) for start, end, _ in ranges if end > HEAD]
    spans += [(pos, pos + n) for pos, n, _ in hashed]
    bar = Progress(sum(end - start for start, end in spans), f"verifying {target.label}") if show else None
    data = _read_back(target, spans)
    verified = 0

    def read_into(digest: hashlib._Hash, count: int) -> None:
        nonlocal verified
        while count > 0:
            _, piece = next(data)
            digest.update(piece)
            count -= len(piece)
            verified += len(piece)
            if bar:
                bar.update(len(piece))

    def mismatch(first: int, last: int) -> FlashError:
        return FlashError(
            f"verify failed: bytes {first}-{last} of {target.label} differ from the image (a faulty or fake card?)"
        )

    try:
        for start, end, checksum in ranges:
            digest = bmap.new_hash() if bmap else hashlib.sha256()
            if start < HEAD:  # the head is checked byte for byte after it is written
                digest.update(memoryview(head)[start : min(end, HEAD)])
            read_into(digest, end - max(start, HEAD))
            if digest.hexdigest() != checksum:
                raise mismatch(start, end - 1)
        for pos, n, expected in hashed:
            digest = hashlib.sha256()
            read_into(digest, n)
            if digest.digest() != expected:
                raise mismatch(pos, pos + n - 1)
    finally:
        data.close()
        if bar:
            bar.close()
    return verified
