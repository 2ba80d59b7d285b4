"""Find the partitions of a disk image by reading its MBR (no loop devices, no root).

The hyperpi image has an MBR ("dos") partition table, as the Raspberry Pi's boot ROM needs:
partition 1 is the FAT32 boot partition, partition 2 the ext4 root. Tools that work on a
partition inside an image file take its byte offset (mtools `image@@offset`, e2fsprogs
`image?offset=N`), which is all this module computes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

SECTOR = 512  # MBR sector addresses are in 512-byte units, whatever the medium's block size
MBR_SIGNATURE = b"\x55\xaa"
ENTRY_OFFSET = 446
ENTRY_COUNT = 4  # primary partitions; the hyperpi image uses no extended partitions
GPT_PROTECTIVE = 0xEE

FAT_TYPES = {0x0B, 0x0C, 0x0E}  # FAT32 (CHS), FAT32 (LBA), FAT16 (LBA)
LINUX_TYPE = 0x83


class PartitionError(Exception):
    """The file is not an MBR-partitioned image of the expected shape (one line)."""


@dataclass(frozen=True)
class Partition:
    number: int  # 1-based, as in /dev/mmcblk0p1
    type_id: int
    bootable: bool
    start: int  # bytes from the start of the image
    size: int  # bytes

    @property
    def end(self) -> int:
        return self.start + self.size


def read_partitions(image: Path) -> list[Partition]:
    """The primary partitions of an MBR image, in table order, empty slots left out."""
    try:
        with open(image, "rb") as f:
            mbr = f.read(SECTOR)
            f.seek(0, 2)
            image_size = f.tell()
    except OSError as error:
        raise PartitionError(f"cannot read {image}: {error.strerror}") from None
    if len(mbr) < SECTOR or mbr[510:512] != MBR_SIGNATURE:
        raise PartitionError(f"{image} has no MBR partition table (is it a hyperpi .img?)")
    parts = []
    for i in range(ENTRY_COUNT):
        entry = mbr[ENTRY_OFFSET + 16 * i : ENTRY_OFFSET + 16 * (i + 1)]
        status, type_id = entry[0], entry[4]
        lba, sectors = struct.unpack_from("<II", entry, 8)
        if type_id == 0 or sectors == 0:
            continue
        if type_id == GPT_PROTECTIVE:
            raise PartitionError(f"{image} has a GPT partition table; hyperpi images use MBR")
        part = Partition(i + 1, type_id, status == 0x80, lba * SECTOR, sectors * SECTOR)
        if part.end > image_size:
            raise PartitionError(f"{image}: partition {part.number} ends past the end of the file (truncated image?)")
        parts.append(part)
    return parts


def boot_and_root(image: Path) -> tuple[Partition, Partition]:
    """The FAT boot partition and the Linux root partition of a hyperpi image."""
    parts = read_partitions(image)
    boot = next((p for p in parts if p.type_id in FAT_TYPES), None)
    root = next((p for p in parts if p.type_id == LINUX_TYPE), None)
    if boot is None or root is None:
        raise PartitionError(f"{image} lacks a FAT boot partition and a Linux root partition (not a hyperpi image?)")
    return boot, root
