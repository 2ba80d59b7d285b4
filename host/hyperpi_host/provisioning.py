"""Writing one device's identity and settings into a copy of the hyperpi SD card image (the engine
of `hyperpi provision`, which checks the arguments, asks, and reports; provision.py).

No root and no mounts: partitions are found in the MBR (`partitions`), the FAT boot partition
is written with mtools (`fatfs`) and the ext4 root with debugfs (`ext4fs`).

- Settings, nothing secret, go to the FAT partition as `/hyperpi/device.toml`, where the owner can
  read and edit them from any computer (the image links /etc/hyperpi/device.toml there).
- Secrets go into the ext4 root only, as 0600 files: the feed's and the Noise static key's secret
  keys (owned by the service user), Wi-Fi credentials (owned by root: wpa_supplicant reads them,
  the service never does; the passphrase is stored as its derived PSK, not as typed).
- The host keeps the device's public identity in `<hyperpi home>/devices/<name>.json`, for pairing.

The output is written to `OUT.partial` and renamed only when complete and verified. Errors are
ProvisionError, whose message names the user's files (never the temporary copy).
"""

from __future__ import annotations

import base64
import hashlib
import json
import mmap
import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from hyperpi.device.config import ConfigError, parse_config
from hyperpi.hypercore.keys import KeyPair, core_key, discovery_key, generate_keypair, z32_encode
from hyperpi.net.address import DEFAULT_PORT
from hyperpi_host import bmap, ext4fs, fatfs, home
from hyperpi_host.imagefile import ImageError, open_image
from hyperpi_host.partitions import Partition, PartitionError, boot_and_root

# --- what the image (image/hooks/customize.sh) provides -------------------------------------
SERVICE_UID = 900  # the `hyperpi` user and group; fixed in the image so no /etc/passwd lookup
SERVICE_GID = 900
STATE_DIR = "/var/lib/hyperpi"
FEED_SECRET = f"{STATE_DIR}/feed.secret"  # 64 bytes, libsodium Ed25519 secret key (seed || public)
NOISE_SECRET = f"{STATE_DIR}/noise.secret"  # 64 bytes, the Noise static key pair's secret key
DEVICE_TOML = "/hyperpi/device.toml"  # on the FAT partition (mounted at /boot/firmware)
WPA_CONF = "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf"
HOSTNAME = "/etc/hostname"
ROOT_SSH_DIR = "/root/.ssh"
AUTHORIZED_KEYS = f"{ROOT_SSH_DIR}/authorized_keys"
SSH_WANTS_LINK = "/etc/systemd/system/multi-user.target.wants/ssh.service"
SSH_UNIT = "/lib/systemd/system/ssh.service"
SECRET_MODE = 0o600
DEVICES_DIR = "devices"  # <home>/devices/NAME.json, read by devices.py

# The name becomes the host name too, so: a DNS label (letters, digits, hyphen), at most 32
# characters as the device config allows (DNS would allow 63).
NAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,30}[A-Za-z0-9])?")
COPY_CHUNK = 1 << 20  # sparse copy: all-zero chunks of this size become holes


class ProvisionError(Exception):
    """The image could not be provisioned, or the settings would be refused by the device."""


@dataclass(frozen=True)
class Wifi:
    ssid: str
    psk_hex: str  # the 256-bit PSK wpa_supplicant uses, derived from the passphrase
    country: str


def wifi_psk(passphrase: str, ssid: str) -> str:
    """The PSK of a passphrase, as wpa_passphrase derives it (IEEE 802.11i: PBKDF2-HMAC-SHA1 over
    the SSID, 4096 rounds, 256 bits); 64 hex digits are already a PSK."""
    if len(passphrase) == 64 and all(c in "0123456789abcdefABCDEF" for c in passphrase):
        return passphrase.lower()
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


@dataclass
class Settings:
    """One device's checked settings: everything provisioning writes, before keys exist."""

    name: str
    board: str
    presets: list[str] = field(default_factory=list)
    follows: list[tuple[str, bytes]] = field(default_factory=list)
    owner: bytes | None = None
    listen_port: int = DEFAULT_PORT
    peers: list[str] = field(default_factory=list)
    wifi: Wifi | None = None
    ssh_keys: str | None = None  # authorized_keys text


@dataclass(frozen=True)
class Identity:
    feed: KeyPair
    noise: KeyPair

    @property
    def feed_key(self) -> bytes:
        return core_key(self.feed.public_key)


def new_identity() -> Identity:
    return Identity(feed=generate_keypair(), noise=generate_keypair())


# --- what goes into the image ----------------------------------------------------------------


def _toml_str(text: str) -> str:
    # A JSON string is a valid TOML basic string for printable text (checked before).
    return json.dumps(text, ensure_ascii=False)


def device_toml(settings: Settings) -> bytes:
    """The settings file in the format of hyperpi.device.config, checked by its own parser."""
    lines = [
        "# hyperpi device settings, written by `hyperpi provision`. Nothing secret is kept here:",
        "# keys live in /var/lib/hyperpi on the root partition. Edit and reboot to change.",
        f"name = {_toml_str(settings.name)}",
        f"board = {_toml_str(settings.board)}",
        f"listen_port = {settings.listen_port}",
    ]
    if settings.presets:
        lines.append("presets = [" + ", ".join(_toml_str(p) for p in settings.presets) + "]")
    if settings.owner is not None:
        lines.append(f"owner = {_toml_str(z32_encode(settings.owner))}")
    if settings.peers:
        lines.append("peers = [" + ", ".join(_toml_str(p) for p in settings.peers) + "]")
    for name, key in settings.follows:
        lines += ["", "[[follow]]", f"name = {_toml_str(name)}", f"key = {_toml_str(z32_encode(key))}"]
    text = "\n".join(lines) + "\n"
    data = tomllib.loads(text)
    try:
        parse_config(data, Path(DEVICE_TOML))
    except ConfigError as error:
        raise ProvisionError(f"the device would reject these settings: {error}") from None
    return text.encode()


def wpa_conf(wifi: Wifi) -> bytes:
    # ssid as hex: any bytes, no quoting rules. psk as 64 hex digits: the passphrase itself never
    # reaches the card.
    return (
        "# Written by `hyperpi provision`; 0600 root.\n"
        f"country={wifi.country}\n"
        "update_config=0\n"
        "network={\n"
        f"    ssid={wifi.ssid.encode().hex()}\n"
        f"    psk={wifi.psk_hex}\n"
        "    scan_ssid=1\n"
        "}\n"
    ).encode()


def secrets_of(identity: Identity, wifi: Wifi | None) -> list[bytes]:
    """Byte strings that must never appear on the FAT partition (raw and as text)."""
    raw = [
        identity.feed.secret_key,
        identity.feed.secret_key[:32],
        identity.noise.secret_key,
        identity.noise.secret_key[:32],
    ]
    found = raw + [r.hex().encode() for r in raw] + [base64.b64encode(r) for r in raw]
    if wifi is not None:
        found += [wifi.psk_hex.encode(), bytes.fromhex(wifi.psk_hex)]
    return found


# --- the image ---------------------------------------------------------------------------------


def copy_image(source: Path, target: Path) -> None:
    """Copy an image in any format `hyperpi flash` reads (raw, xz, gzip, zstd, bzip2) to a new
    0600 file (it will hold the device's keys), keeping runs of zeros as holes (a sparse file)."""
    try:
        image = open_image(source)
    except ImageError as error:
        raise ProvisionError(str(error)) from None
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
        with image, os.fdopen(fd, "wb") as dst:
            os.fchmod(dst.fileno(), SECRET_MODE)  # whatever the umask
            zero = bytes(COPY_CHUNK)
            buffer = memoryview(bytearray(COPY_CHUNK))
            size = 0
            while n := image.readinto(buffer):
                if buffer[:n] == zero[:n]:
                    dst.seek(n, os.SEEK_CUR)
                else:
                    dst.write(buffer[:n])
                size += n
            dst.truncate(size)
    except ImageError as error:
        raise ProvisionError(f"{source}: {error}") from None
    except OSError as error:
        raise ProvisionError(f"cannot copy {source} to {target}: {error.strerror or error}") from None


def check_image(image: Path) -> tuple[Partition, Partition]:
    """The boot and root partitions of a hyperpi image; ProvisionError if it is not one."""
    try:
        boot, root = boot_and_root(image)
        state = ext4fs.stat(image, root, STATE_DIR)
    except (PartitionError, ext4fs.Ext4Error) as error:
        raise ProvisionError(str(error)) from None
    if state is None or state.file_type != "directory" or state.uid != SERVICE_UID:
        raise ProvisionError(f"{image} is not a hyperpi image (no {STATE_DIR} owned by the service user)")
    return boot, root


def write_identity(image: Path, settings: Settings, identity: Identity) -> None:
    """Write settings and secrets into an image file in place (FatError, Ext4Error, ProvisionError)."""
    boot, root = check_image(image)
    fatfs.write_file(image, boot, DEVICE_TOML, device_toml(settings))
    write = ext4fs.write_file
    write(image, root, FEED_SECRET, identity.feed.secret_key, SECRET_MODE, SERVICE_UID, SERVICE_GID)
    write(image, root, NOISE_SECRET, identity.noise.secret_key, SECRET_MODE, SERVICE_UID, SERVICE_GID)
    write(image, root, HOSTNAME, f"{settings.name.lower()}\n".encode(), 0o644, 0, 0)
    if settings.wifi is not None:
        write(image, root, WPA_CONF, wpa_conf(settings.wifi), SECRET_MODE, 0, 0)
    if settings.ssh_keys is not None:
        ext4fs.make_dir(image, root, ROOT_SSH_DIR, 0o700, 0, 0)
        write(image, root, AUTHORIZED_KEYS, settings.ssh_keys.encode(), SECRET_MODE, 0, 0)
        ext4fs.symlink(image, root, SSH_WANTS_LINK, SSH_UNIT)
    assert_no_secret_on_fat(image, boot, secrets_of(identity, settings.wifi))


def assert_no_secret_on_fat(image: Path, boot: Partition, secrets: list[bytes]) -> None:
    """Scan every byte of the FAT partition (free space too) for the secrets."""
    with open(image, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        leaked = any(m.find(secret, boot.start, boot.end) != -1 for secret in secrets)
    if leaked:
        raise ProvisionError("internal error: a secret reached the FAT partition; the image was not written")


def bmap_path(image: Path) -> Path:
    """Where the image's bmap goes: `kitchen.img` -> `kitchen.img.bmap`, found by `hyperpi flash`."""
    return image.with_name(image.name + ".bmap")


def write_image(source: Path, out: Path, settings: Settings, identity: Identity) -> None:
    """Write a provisioned copy of `source` to `out` (replacing it), with its bmap beside it.
    Nothing appears at `out` unless all of it was written and checked."""
    partial = out.with_name(out.name + ".partial")
    partial_bmap = out.with_name(out.name + ".bmap.partial")
    for stale in (partial, partial_bmap):
        stale.unlink(missing_ok=True)
    try:
        copy_image(source, partial)
        try:
            write_identity(partial, settings, identity)
        except ProvisionError as error:  # name the user's file, not our temporary copy
            raise ProvisionError(str(error).replace(str(partial), str(source))) from None
        # The bmap lets `hyperpi flash` write only the mapped blocks. It is 0600 like the image:
        # its checksum of the block holding the Wi-Fi PSK would allow guessing the passphrase.
        home.write_secret(partial_bmap, bmap.make_bmap(partial).encode())
        os.replace(partial, out)
        os.replace(partial_bmap, bmap_path(out))
    except (fatfs.FatError, ext4fs.Ext4Error) as error:
        raise ProvisionError(f"cannot provision {source}: {error}") from None
    except OSError as error:
        raise ProvisionError(f"cannot write {out}: {error.strerror or error}") from None
    finally:
        partial.unlink(missing_ok=True)
        partial_bmap.unlink(missing_ok=True)


def record_device(settings: Settings, identity: Identity, image: Path) -> Path:
    """The device's public identity on the host, for pairing later (read by devices.py)."""
    feed_key = identity.feed_key
    record = {
        "name": settings.name,
        "board": settings.board,
        "feed_key": z32_encode(feed_key),
        "feed_key_hex": feed_key.hex(),
        "feed_public_key_hex": identity.feed.public_key.hex(),
        "discovery_key_hex": discovery_key(feed_key).hex(),
        "noise_public_key_hex": identity.noise.public_key.hex(),
        "listen_port": settings.listen_port,
        "owner_hex": settings.owner.hex() if settings.owner else None,
        "follows": [{"name": name, "key_hex": key.hex()} for name, key in settings.follows],
        "image": str(image.resolve()),
        "provisioned_at": int(time.time()),
    }
    path = home.home_subdir(DEVICES_DIR) / f"{settings.name}.json"
    home.write_atomic(path, (json.dumps(record, indent=2) + "\n").encode(), 0o644)
    return path
