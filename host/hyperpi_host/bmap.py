"""Block maps (`.bmap`, the bmap-tools format): which ranges of an image hold data, and their hashes.

A disk image is mostly empty space. Its bmap lists the block ranges that matter, each with a
checksum, so a flasher writes only those and checks each while writing. `read_bmap` parses
versions 1.x (sha1) and 2.x (`ChecksumType`, usually sha256) and checks the file's own
checksum; `make_bmap` writes a 2.0 bmap for a (sparse) image file from its holes
(SEEK_DATA/SEEK_HOLE), as `bmaptool create` does, so the image build can ship one.
"""

from __future__ import annotations

import errno
import hashlib
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

# Read files in pieces this big when hashing ranges: big enough for throughput, small for RAM.
HASH_CHUNK = 4 << 20
# A bmap for even a huge image is a few MB of XML; anything much bigger is not a bmap.
MAX_BMAP_BYTES = 64 << 20
BMAP_VERSION = "2.0"
SUPPORTED_MAJOR = 2
DEFAULT_BLOCK_SIZE = 4096


class BmapError(Exception):
    """The bmap file is missing, malformed, or does not match its own checksum (one line)."""


@dataclass(frozen=True)
class MappedRange:
    """Bytes [start, end) of the image hold data; `checksum` is the hex digest of those bytes."""

    start: int
    end: int
    checksum: str | None


@dataclass(frozen=True)
class Bmap:
    image_size: int
    block_size: int
    mapped_blocks: int
    checksum_type: str | None  # hashlib name, e.g. "sha256"; None if ranges carry no checksums
    ranges: tuple[MappedRange, ...]

    @property
    def mapped_bytes(self) -> int:
        return sum(r.end - r.start for r in self.ranges)

    def new_hash(self) -> hashlib._Hash:
        return hashlib.new(self.checksum_type or "sha256")


def _text(root: ET.Element, tag: str, path: Path, required: bool = True) -> str | None:
    element = root.find(tag)
    if element is None or element.text is None:
        if required:
            raise BmapError(f"{path} is not a valid bmap: no <{tag}>")
        return None
    return element.text.strip()


def _int(root: ET.Element, tag: str, path: Path) -> int:
    value = _text(root, tag, path)
    try:
        number = int(value or "")
    except ValueError:
        raise BmapError(f"{path} is not a valid bmap: <{tag}> is not a number") from None
    if number < 0:
        raise BmapError(f"{path} is not a valid bmap: <{tag}> is negative")
    return number


def read_bmap(path: str | Path) -> Bmap:
    """Parse and check a bmap file; raises BmapError saying what is wrong."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_BMAP_BYTES:
            raise BmapError(f"{path} is too big to be a bmap file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise BmapError(f"no such bmap file: {path}") from None
    except OSError as error:
        raise BmapError(f"cannot read {path}: {error.strerror}") from None
    try:
        root = ET.fromstring(data)
    except ET.ParseError as error:
        raise BmapError(f"{path} is not a valid bmap: XML error ({error})") from None
    if root.tag != "bmap":
        raise BmapError(f"{path} is not a bmap file (top element <{root.tag}>)")
    version = root.get("version", "")
    try:
        major = int(version.split(".")[0])
    except ValueError:
        raise BmapError(f"{path} is not a valid bmap: bad version {version!r}") from None
    if major > SUPPORTED_MAJOR:
        raise BmapError(
            f"{path} is bmap format {version}; this hyperpi reads up to "
            f"{SUPPORTED_MAJOR}.x: update hyperpi or make the bmap with an older bmaptool"
        )

    image_size = _int(root, "ImageSize", path)
    block_size = _int(root, "BlockSize", path)
    blocks_count = _int(root, "BlocksCount", path)
    mapped_blocks = _int(root, "MappedBlocksCount", path)
    if block_size == 0 or blocks_count != (image_size + block_size - 1) // block_size:
        raise BmapError(f"{path} is not a valid bmap: BlockSize/BlocksCount do not fit ImageSize")

    # Format 1.x: sha1, attribute "sha1", file checksum in <BmapFileSHA1>.
    # Format 2.x: <ChecksumType>, attribute "chksum", file checksum in <BmapFileChecksum>.
    if major >= 2:
        checksum_type = (_text(root, "ChecksumType", path) or "").lower()
        attribute, file_tag = "chksum", "BmapFileChecksum"
    else:
        checksum_type, attribute, file_tag = "sha1", "sha1", "BmapFileSHA1"
    if checksum_type not in hashlib.algorithms_available:
        raise BmapError(f"{path} uses checksum type {checksum_type!r}, which this system lacks")
    file_checksum = _text(root, file_tag, path, required=False)
    if file_checksum:
        # The file's checksum is computed with its own text replaced by ASCII zeros.
        blanked = data.replace(file_checksum.encode(), b"0" * len(file_checksum), 1)
        if hashlib.new(checksum_type, blanked).hexdigest() != file_checksum:
            raise BmapError(f"{path} is corrupt: its checksum does not match; download it again")

    block_map = root.find("BlockMap")
    if block_map is None:
        raise BmapError(f"{path} is not a valid bmap: no <BlockMap>")
    ranges: list[MappedRange] = []
    counted = 0
    previous_end = 0
    for element in block_map.findall("Range"):
        text = (element.text or "").strip()
        try:
            first_text, _, last_text = text.partition("-")
            first = int(first_text)
            last = int(last_text) if last_text else first
        except ValueError:
            raise BmapError(f"{path} is not a valid bmap: bad range {text!r}") from None
        start, end = first * block_size, min((last + 1) * block_size, image_size)
        if last < first or start < previous_end or start >= image_size:
            raise BmapError(f"{path} is not a valid bmap: range {text!r} is out of order or beyond the image")
        previous_end = end
        counted += last - first + 1
        checksum = element.get(attribute)
        ranges.append(MappedRange(start, end, checksum.strip().lower() if checksum else None))
    if counted != mapped_blocks:
        raise BmapError(
            f"{path} is not a valid bmap: MappedBlocksCount is {mapped_blocks} but the ranges hold {counted}"
        )
    return Bmap(image_size, block_size, mapped_blocks, checksum_type, tuple(ranges))


def find_bmap(image: str | Path) -> Path | None:
    """The bmap beside an image: `x.img.xz` -> `x.img.bmap` or `x.img.xz.bmap` or `x.bmap`."""
    image = Path(image)
    stem = image.name
    candidates = [image.with_name(stem + ".bmap")]
    for suffix in (".xz", ".gz", ".zst", ".bz2"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            candidates.append(image.with_name(stem + ".bmap"))
    if stem.endswith(".img"):
        candidates.append(image.with_name(stem[:-4] + ".bmap"))
    return next((c for c in candidates if c.is_file()), None)


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of a file that hold data, from the filesystem's hole map."""
    extents: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:  # no data after pos: the rest is a hole
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        extents.append((start, min(end, size)))
        pos = end
    return extents


def make_bmap(image: str | Path, block_size: int = DEFAULT_BLOCK_SIZE, checksum_type: str = "sha256") -> str:
    """The bmap XML (format 2.0) of an uncompressed image file, from its holes."""
    image = Path(image)
    size = image.stat().st_size
    blocks: list[tuple[int, int]] = []  # inclusive block ranges, merged when they touch
    with open(image, "rb", buffering=0) as f:
        for start, end in data_extents(f.fileno(), size):
            first, last = start // block_size, (end - 1) // block_size
            if blocks and first <= blocks[-1][1] + 1:
                blocks[-1] = (blocks[-1][0], max(last, blocks[-1][1]))
            else:
                blocks.append((first, last))
        lines = []
        buffer = bytearray(HASH_CHUNK)
        for first, last in blocks:
            digest = hashlib.new(checksum_type)
            pos, end = first * block_size, min((last + 1) * block_size, size)
            while pos < end:
                n = os.preadv(f.fileno(), [memoryview(buffer)[: min(HASH_CHUNK, end - pos)]], pos)
                digest.update(memoryview(buffer)[:n])
                pos += n
            span = f"{first}-{last}" if last > first else f"{first}"
            lines.append(f'        <Range chksum="{digest.hexdigest()}"> {span} </Range>\n')
    mapped = sum(last - first + 1 for first, last in blocks)
    blocks_count = (size + block_size - 1) // block_size
    percent = 100.0 * mapped / blocks_count if blocks_count else 0.0
    placeholder = "0" * hashlib.new(checksum_type).digest_size * 2
    xml = (
        '<?xml version="1.0" ?>\n'
        "<!-- Block map of a disk image, made by hyperpi: the block ranges that hold data, each\n"
        "     with its checksum. Flashers (hyperpi flash, bmaptool copy) write only these. -->\n"
        f'<bmap version="{BMAP_VERSION}">\n'
        f"    <ImageSize> {size} </ImageSize>\n"
        f"    <BlockSize> {block_size} </BlockSize>\n"
        f"    <BlocksCount> {blocks_count} </BlocksCount>\n"
        f"    <!-- {percent:.1f}% of the blocks are mapped -->\n"
        f"    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n"
        f"    <ChecksumType> {checksum_type} </ChecksumType>\n"
        f"    <BmapFileChecksum> {placeholder} </BmapFileChecksum>\n"
        "    <BlockMap>\n" + "".join(lines) + "    </BlockMap>\n"
        "</bmap>\n"
    )
    file_checksum = hashlib.new(checksum_type, xml.encode()).hexdigest()
    return xml.replace(placeholder, file_checksum, 1)


def write_bmap(image: str | Path, out: str | Path, block_size: int = DEFAULT_BLOCK_SIZE) -> Path:
    """Write `make_bmap(image)` to `out` and return its path."""
    out = Path(out)
    out.write_text(make_bmap(image, block_size))
    return out
