"""`hyperpi flash IMAGE TARGET`: the command around imagewrite.flash_image (the engine).

It adds the policy: the target must pass `blockdev.inspect_target` (a whole removable disk, not
the system's, not mounted, big enough), the user confirms, the disk is unmounted only with
consent, it is opened O_EXCL and checked to be the same device that was inspected; then the
engine writes and verifies (see imagewrite.py for the order of work that keeps an interrupted
card invalid).
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hyperpi_host import blockdev
from hyperpi_host.bmap import BmapError, find_bmap, read_bmap
from hyperpi_host.cli import UserError, confirm
from hyperpi_host.imagefile import ImageError, open_image
from hyperpi_host.imagewrite import FlashError, FlashInterrupted, flash_image
from hyperpi_host.progress import human_bytes

# Reads what the kernel says about disks and mounts (blockdev.SystemView.read_live, or a test's view).
ViewReader = Callable[[], blockdev.SystemView]


def open_target(path: str, *, is_block: bool) -> tuple[int, bool]:
    """Open the target read-write (O_EXCL on a disk: fails if anything has it mounted or open),
    with O_DIRECT if the kernel and filesystem allow. Returns (fd, direct)."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_EXCL if is_block else os.O_CREAT)
    for extra in (os.O_DIRECT, 0):
        try:
            # 0600: a provisioned image holds the device's secret keys.
            return os.open(path, flags | extra, 0o600), bool(extra)
        except OSError as error:
            if error.errno == errno.EINVAL and extra:
                continue  # e.g. tmpfs has no O_DIRECT: fall back to cached I/O + fadvise
            if error.errno == errno.EBUSY:
                raise UserError(
                    f"{path} is in use (mounted, or open in another program); close it and try again"
                ) from None
            if error.errno in (errno.EACCES, errno.EPERM):
                raise UserError(f"cannot open {path}: permission denied (run with sudo)") from None
            raise UserError(f"cannot open {path}: {error.strerror}") from None
    raise AssertionError("unreachable")


def _same_device(fd: int, checked: str, path: str) -> None:
    """The device we opened is the one we checked (no card swap or symlink change meanwhile)."""
    rdev = os.fstat(fd).st_rdev
    link = Path("/sys/dev/block") / f"{os.major(rdev)}:{os.minor(rdev)}"
    if not link.exists() or link.resolve().name != checked:
        os.close(fd)
        raise UserError(f"{path} changed while it was being checked (card swapped?); run the command again")


def _confirm(question: str, assume_yes: bool) -> None:
    if not assume_yes:
        confirm(question, "--yes")


def _unmount(mounts: list[tuple[str, str]]) -> None:
    for device, mountpoint in reversed(mounts):  # nested mounts: the deepest was mounted last
        done = subprocess.run(["umount", mountpoint], capture_output=True, text=True)
        if done.returncode != 0:
            raise UserError(
                f"could not unmount {device} from {mountpoint}: "
                f"{done.stderr.strip() or 'umount failed'}; close the programs using it"
            )
        print(f"unmounted {device} from {mountpoint}", file=sys.stderr)


def _check_disk(path: str, image_size: int | None, assume_yes: bool, read_view: ViewReader) -> blockdev.Target:
    try:
        name = blockdev.device_name(path)
        if not os.access(path, os.R_OK | os.W_OK):
            raise UserError(f"cannot write {path}: permission denied (run with sudo)")
        for attempt in range(2):
            view = read_view()  # read again after unmounting: the mounts must really be gone
            try:
                return blockdev.inspect_target(name, view, image_size)
            except blockdev.TargetMounted as mounted:
                if attempt:
                    raise
                print(f"hyperpi: {mounted}", file=sys.stderr)
                _confirm("Unmount them?", assume_yes)
                _unmount(mounted.mounts)
    except blockdev.TargetRefused as refused:
        raise UserError(f"refusing to flash: {refused}") from None
    raise AssertionError("unreachable")


def _print_disks(read_view: ViewReader) -> int:
    try:
        disks = blockdev.list_disks(read_view())
    except blockdev.TargetRefused as refused:
        raise UserError(str(refused)) from None
    usable = [t for t, _, _ in disks if t]
    for target in usable:
        print(target.describe())
        for part in target.partitions:
            print(f"    {part.path} {human_bytes(part.size)} {part.fstype or ''} {part.label or ''}".rstrip())
    for target, _, reason in disks:
        if target is None and reason and reason.endswith(blockdev.UNMOUNT_HINT):
            print(f"usable once unmounted: {reason}")
        elif target is None:
            print(f"not usable: {reason}")
    if not usable:
        print("no removable disk found: insert the SD card (in a USB reader or the card slot)")
    return 0


def run(args: argparse.Namespace, read_view: ViewReader = blockdev.SystemView.read_live) -> int:
    """The command. `read_view` is how the safety checks see the system; the command line
    always reads it live, tests pass a recorded or adjusted view (the only substitution)."""
    if args.list:
        return _print_disks(read_view)
    if not args.image or not args.target:
        raise UserError(
            "give an IMAGE and a TARGET, e.g. `hyperpi flash hyperpi.img.xz /dev/sdb` "
            "(find the TARGET with `hyperpi flash --list`)"
        )
    try:
        bmap_path = None if args.no_bmap else (Path(args.bmap) if args.bmap else find_bmap(args.image))
        bmap = read_bmap(bmap_path) if bmap_path else None
        source = open_image(args.image)
    except (BmapError, ImageError) as error:
        raise UserError(str(error)) from None
    with source:
        image_size = bmap.image_size if bmap else source.size
        if bmap_path and bmap:
            print(
                f"using {bmap_path}: {human_bytes(bmap.mapped_bytes)} of {human_bytes(bmap.image_size)} hold data",
                file=sys.stderr,
            )
        target_path = args.target
        if args.to_file:
            if os.path.exists(target_path):
                mode = os.stat(target_path).st_mode
                if not stat.S_ISREG(mode):
                    raise UserError(
                        f"{target_path} exists and is not a regular file; --to-file writes image files only"
                    )
                for own in (args.image, bmap_path):
                    if own and os.path.exists(own) and os.path.samefile(own, target_path):
                        raise UserError(f"{target_path} is the image or its bmap itself; choose another target file")
                _confirm(f"{target_path} exists and will be overwritten.", args.yes)
            fd, direct = open_target(target_path, is_block=False)
            target_size, is_block = None, False
        else:
            disk = _check_disk(target_path, image_size, args.yes, read_view)
            print(f"target {disk.describe()}", file=sys.stderr)
            for part in disk.partitions:
                print(
                    f"    {part.path} {human_bytes(part.size)} {part.fstype or ''} {part.label or ''}".rstrip(),
                    file=sys.stderr,
                )
            _confirm(f"All data on {disk.path} will be erased.", args.yes)
            fd, direct = open_target(target_path, is_block=True)
            _same_device(fd, disk.name, target_path)
            target_size, is_block = disk.size, True
        try:
            result = flash_image(
                source,
                fd,
                label=target_path,
                bmap=bmap,
                verify=not args.no_verify,
                is_block=is_block,
                zero_skip=not is_block,
                direct=direct,
                target_size=target_size,
            )
        except FlashInterrupted as stopped:
            print(f"hyperpi: {stopped}", file=sys.stderr)
            return 130
        except (FlashError, ImageError) as error:
            raise UserError(str(error), 1) from None
        finally:
            os.close(fd)
    rate = result.written / max(result.write_seconds, 1e-9)
    print(
        f"wrote {human_bytes(result.written)} in {result.write_seconds:.1f} s ({human_bytes(rate)}/s)", file=sys.stderr
    )
    if args.no_verify:
        print("not verified (--no-verify)", file=sys.stderr)
    else:
        print(
            f"verified {human_bytes(result.verified)} read back from {target_path} in {result.verify_seconds:.1f} s",
            file=sys.stderr,
        )
    print(f"done: {target_path} is ready" + ("; you can remove the card" if is_block else ""), file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flash",
        help="write an image to an SD card (checked, fast, verified)",
        description="Write IMAGE (.img, .img.xz, .img.gz, .img.zst) to the SD card TARGET,\n"
        "then read it back to verify. TARGET must be a whole removable disk that\n"
        "does not hold the running system; you are asked to confirm unless --yes.\n"
        "A .bmap beside the image makes it write only the blocks that hold data.\n"
        "Ctrl-C is safe: the card is left clearly invalid, never half-good.",
        epilog="examples:  hyperpi flash --list\n"
        "           sudo hyperpi flash kitchen.img.xz /dev/sdb\n"
        "           hyperpi flash kitchen.img.xz copy.img --to-file",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("image", nargs="?", metavar="IMAGE", help="the image file (raw or compressed)")
    parser.add_argument(
        "target", nargs="?", metavar="TARGET", help="the whole disk to overwrite, e.g. /dev/sdb or /dev/mmcblk0"
    )
    parser.add_argument("--list", action="store_true", help="list the disks that could be flashed")
    parser.add_argument("--bmap", metavar="FILE", help="the image's block map (default: IMAGE's .bmap beside it)")
    parser.add_argument("--no-bmap", action="store_true", help="ignore any .bmap and write the whole image")
    parser.add_argument(
        "--yes", "-y", action="store_true", help="do not ask: confirm erasing TARGET (and unmounting its partitions)"
    )
    parser.add_argument("--no-verify", action="store_true", help="skip reading the card back")
    parser.add_argument(
        "--to-file", action="store_true", help="TARGET is a regular file to create or overwrite (for copies and tests)"
    )
    parser.set_defaults(func=run)
