"""A release bundle in a Hypercore: the format the host writes and the device reads back.

A release feed (one Hypercore per release, written by the owner's host: hyperpi_host/release.py)
holds the bundle, a handful of wheels, as:

    block 0       the manifest: {"type": "hyperpi-release", "version": "0.2.0",
                                 "files": [{"name": "hyperpi-0.2.0-py3-none-any.whl",
                                            "size": 181234, "sha256": HEX}, ...]}
    blocks 1..    the files' bytes, concatenated in manifest order, cut in CHUNK_BYTES blocks
                  (the last one shorter)

The owner's control feed announces it with a `release` entry (device/control.py) naming the
feed's key, its length, the payload's size and the payload's sha256. Every block is verified by
the core's Merkle tree and signature when it arrives, as for any feed; the size and hashes are
checked again on the assembled files before anything is installed (device/install.py).

Pure functions, no I/O.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from hyperpi import blockjson

CHUNK_BYTES = 64 * 1024  # one block of the release feed; small enough to resume cheaply
MAX_RELEASE_BYTES = 64 * 1024 * 1024  # a bundle above this is not ours (hyperpi's wheel is ~200 KiB)
MAX_FILES = 32  # hyperpi's wheel plus the dependencies the devices lack
MAX_MANIFEST_BYTES = 8192
MAX_VERSION_CHARS = 32
MANIFEST_TYPE = "hyperpi-release"
# A wheel's file name (PEP 427): no folders, nothing a shell or a path could act on.
WHEEL_NAME = re.compile(r"[A-Za-z0-9_.+!-]{1,200}\.whl")
VERSION = re.compile(r"(0|[1-9][0-9]{0,8})(\.(0|[1-9][0-9]{0,8})){0,4}")


def parse_version(text: object) -> tuple[int, ...]:
    """A release version as comparable numbers: "0.2.10" -> (0, 2, 10). Only plain dotted
    numbers (at most five parts) are releases; ValueError for anything else."""
    if not isinstance(text, str) or len(text) > MAX_VERSION_CHARS or not VERSION.fullmatch(text):
        raise ValueError(f"version must be dotted numbers such as 0.2.0, got {str(text)[:40]!r}")
    parts = [int(p) for p in text.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()  # 0.2 == 0.2.0
    return tuple(parts)


def chunk_count(size: int) -> int:
    """Blocks holding a payload of `size` bytes."""
    return -(-size // CHUNK_BYTES)


def feed_length(size: int) -> int:
    """Blocks of a release feed for a payload of `size` bytes: the manifest and the chunks."""
    return 1 + chunk_count(size)


@dataclass(frozen=True)
class BundleFile:
    name: str
    size: int
    sha256: str  # hex


@dataclass(frozen=True)
class Manifest:
    version: str
    files: tuple[BundleFile, ...]

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def encode(self) -> bytes:
        import json

        value = {
            "type": MANIFEST_TYPE,
            "version": self.version,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
        }
        block = json.dumps(value, separators=(",", ":")).encode()
        parse_manifest(block)  # what a device would refuse is never written
        return block


def is_sha256(text: object) -> bool:
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def parse_manifest(block: bytes) -> Manifest:
    """Block 0 of a release feed; ValueError saying what is wrong with it."""
    try:
        value = blockjson.decode(block, MAX_MANIFEST_BYTES)
    except blockjson.BadBlock as error:
        raise ValueError(f"manifest refused: {error}") from None
    except ValueError:
        raise ValueError("manifest is not JSON") from None
    if not isinstance(value, dict) or value.get("type") != MANIFEST_TYPE:
        raise ValueError(f"block 0 is not a {MANIFEST_TYPE} manifest")
    version = value.get("version")
    parse_version(version)
    files = value.get("files")
    if not isinstance(files, list) or not 1 <= len(files) <= MAX_FILES:
        raise ValueError(f"manifest must list 1 to {MAX_FILES} files")
    out = []
    for f in files:
        if not isinstance(f, dict):
            raise ValueError("manifest file entries must be objects")
        name, size, digest = f.get("name"), f.get("size"), f.get("sha256")
        if not isinstance(name, str) or not WHEEL_NAME.fullmatch(name) or name.startswith("."):
            raise ValueError(f"manifest file name {str(name)[:60]!r} is not a wheel's file name")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= MAX_RELEASE_BYTES:
            raise ValueError(f"manifest size of {name} must be 1 to {MAX_RELEASE_BYTES} bytes")
        if not is_sha256(digest):
            raise ValueError(f"manifest sha256 of {name} must be 64 lowercase hex digits")
        out.append(BundleFile(name, size, str(digest)))
    if len({f.name for f in out}) != len(out):
        raise ValueError("manifest names a file twice")
    manifest = Manifest(str(version), tuple(out))
    if manifest.size > MAX_RELEASE_BYTES:
        raise ValueError(f"bundle of {manifest.size} bytes is over the {MAX_RELEASE_BYTES}-byte limit")
    return manifest


@dataclass(frozen=True)
class Bundle:
    """What the host appends to a fresh release feed, and announces."""

    manifest: Manifest
    blocks: tuple[bytes, ...]  # manifest block, then the chunks
    sha256: str  # of the payload (the files concatenated in manifest order)

    @property
    def size(self) -> int:
        return self.manifest.size


def make_bundle(version: str, files: Iterable[tuple[str, bytes]]) -> Bundle:
    """The release feed's blocks for these (file name, content) pairs; ValueError if they would
    make a bundle a device refuses."""
    files = list(files)
    manifest = Manifest(
        version, tuple(BundleFile(name, len(data), hashlib.sha256(data).hexdigest()) for name, data in files)
    )
    header = manifest.encode()
    payload = b"".join(data for _, data in files)
    chunks = tuple(payload[i : i + CHUNK_BYTES] for i in range(0, len(payload), CHUNK_BYTES))
    return Bundle(manifest, (header, *chunks), hashlib.sha256(payload).hexdigest())


def split_files(manifest: Manifest, chunks: Iterable[bytes]) -> Iterator[tuple[int, bytes]]:
    """(file number in the manifest, bytes) pieces of the payload, in order, from its chunks;
    ValueError if a chunk is not CHUNK_BYTES long (the last may be shorter) or the total is
    not the manifest's size."""
    index, left = 0, manifest.files[0].size  # the file being filled, and its bytes still to come
    total = 0
    short_seen = False
    for chunk in chunks:
        if short_seen or not chunk or len(chunk) > CHUNK_BYTES:
            raise ValueError("release chunk of a wrong size")
        short_seen = len(chunk) < CHUNK_BYTES
        total += len(chunk)
        if total > manifest.size:
            raise ValueError("release feed holds more bytes than its manifest says")
        view = memoryview(chunk)
        while view:
            take = min(len(view), left)
            yield index, bytes(view[:take])
            view, left = view[take:], left - take
            if left == 0 and index + 1 < len(manifest.files):
                index += 1
                left = manifest.files[index].size
    if total != manifest.size:
        raise ValueError(f"release feed holds {total} bytes; its manifest says {manifest.size}")
