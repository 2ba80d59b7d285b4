"""image/slim.py's inputs and logic, on small made-up module trees (the real run is in the image
build; the boot test loads every kept module on the emulated Pi)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "image"))

import slim


def test_every_kept_module_line_has_a_reason_and_parses() -> None:
    entries = slim.read_list()
    patterns = [pattern for pattern, _ in entries]
    assert "@devicetree" in patterns
    assert len(patterns) == len(set(patterns)), "a module pattern is listed twice"
    initramfs = {pattern for pattern, flag in entries if flag}
    # What mounting the root from an SD card needs (and the virt test machine's disk), nothing else.
    assert initramfs == {
        "drivers/mmc/host/bcm2835",
        "drivers/mmc/host/sdhci-iproc",
        "drivers/regulator/fixed",
        "drivers/regulator/gpio-regulator",
        "fs/ext4/ext4",
        "drivers/block/virtio_blk",
    }


def test_a_line_without_a_reason_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listing = tmp_path / "kernel-modules.txt"
    listing.write_text("fs/ext4/ext4  initramfs\n")
    monkeypatch.setattr(slim, "MODULE_LIST", listing)
    with pytest.raises(SystemExit, match="kernel-modules.txt:1: want"):
        slim.read_list()


def test_closure_follows_dependencies_and_softdeps(tmp_path: Path) -> None:
    (tmp_path / "modules.dep").write_text(
        "kernel/fs/ext4/ext4.ko.xz: kernel/fs/jbd2/jbd2.ko.xz kernel/fs/mbcache.ko.xz\n"
        "kernel/fs/jbd2/jbd2.ko.xz:\n"
        "kernel/fs/mbcache.ko.xz:\n"
        "kernel/crypto/crc32c_generic.ko.xz:\n"
        "kernel/drivers/media/unrelated.ko.xz:\n"
    )
    # ext4 names its checksum by an alias, which modules.alias resolves (missing it, nothing mounts).
    (tmp_path / "modules.softdep").write_text("softdep ext4 pre: crypto-crc32c\n")
    (tmp_path / "modules.alias").write_text("alias crypto-crc32c crc32c_generic\nalias crc32c crc32c_generic\n")
    assert slim.closure(tmp_path, {"ext4"}) == {
        "kernel/fs/ext4/ext4.ko.xz",
        "kernel/fs/jbd2/jbd2.ko.xz",
        "kernel/fs/mbcache.ko.xz",
        "kernel/crypto/crc32c_generic.ko.xz",
    }


def test_devicetree_aliases_match_compatibles(tmp_path: Path) -> None:
    (tmp_path / "modules.alias").write_text(
        "alias of:N*T*Cbrcm,bcm2835-sdhost bcm2835\n"
        "alias of:N*T*Cbrcm,bcm2835-sdhostC* bcm2835\n"
        "alias of:N*T*Callwinner,sun4i-a10-mmc sunxi_mmc\n"
        "alias of:N*T*Cbrcm,bcm2835-spi spi_bcm2835\n"
        "alias usb:v0424pEC00d*dc*dsc*dp*ic*isc*ip*in* smsc95xx\n"
    )
    found = slim.devicetree_modules(tmp_path, {"brcm,bcm2835-sdhost", "brcm,bcm2835-spi", "simple-bus"})
    assert found == {"bcm2835", "spi_bcm2835"}
