"""`hyperpi provision`: write one device's identity into a copy of the hyperpi SD card image.

The command: it checks every argument (names, keys, Wi-Fi, SSH keys, the device's own config
check), refuses or asks before replacing a device, then has the engine (provisioning.py) write
the image and record the device, and turns the engine's errors into one-line UserErrors.

Everything is checked before anything is written; a bad argument is refused with one line and no
output file.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
import time
from pathlib import Path

from hyperpi.device.boards import BOARDS
from hyperpi.hypercore import HypercoreError
from hyperpi.hypercore.keys import z32_encode
from hyperpi.net.address import DEFAULT_PORT, parse_address
from hyperpi_host import pairing
from hyperpi_host.cli import UserError, confirm
from hyperpi_host.partitions import PartitionError  # noqa: F401 - tests/image/test_provision.py names it here
from hyperpi_host.provisioning import (
    NAME_RE,
    Identity,
    ProvisionError,
    Settings,
    Wifi,
    bmap_path,
    device_toml,
    new_identity,
    record_device,
    wifi_psk,
    write_image,
)

# --- limits and formats -------------------------------------------------------------------
MAX_SSID_BYTES = 32  # IEEE 802.11
PSK_PASSPHRASE_CHARS = (8, 63)  # IEEE 802.11i: 8..63 printable ASCII, or 64 hex digits
MAX_SSH_KEY_FILE = 64 * 1024  # a few public keys; a bigger file is the wrong file
SSH_KEY_TYPES = {
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
}

# ISO 3166-1 alpha-2 (249 codes, from Debian's iso-codes 4.15): the Wi-Fi regulatory domain.
COUNTRY_CODES = frozenset(
    """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS
BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE
EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM
HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC
LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ NA
NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO
TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW
""".split()
)


# --- checking the arguments ----------------------------------------------------------------


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UserError(f"bad device name {name!r}: use 1-32 letters, digits or '-' (it becomes the host name)")
    return name


def check_board(board: str) -> str:
    if board not in BOARDS:
        raise UserError(f"unknown board {board!r}; boards: {', '.join(BOARDS)}")
    return board


def check_wifi(ssid: str | None, passphrase: str | None, country: str | None) -> Wifi | None:
    if ssid is None and passphrase is None and country is None:
        return None
    if ssid is None:
        raise UserError("--wifi-psk and --wifi-country need --wifi-ssid too")
    raw_ssid = ssid.encode()
    if not 1 <= len(raw_ssid) <= MAX_SSID_BYTES:
        raise UserError(f"--wifi-ssid must be 1 to {MAX_SSID_BYTES} bytes, got {len(raw_ssid)}")
    if passphrase is None:
        raise UserError("--wifi-ssid needs --wifi-psk (open networks are not supported)")
    if country is None:
        raise UserError("--wifi-ssid needs --wifi-country CC (the regulatory domain, e.g. DE or US)")
    cc = country.upper()
    if cc not in COUNTRY_CODES:
        raise UserError(f"--wifi-country {country!r} is not an ISO 3166-1 alpha-2 code (e.g. DE, GB, US)")
    lo, hi = PSK_PASSPHRASE_CHARS
    is_hex_psk = len(passphrase) == 64 and all(c in "0123456789abcdefABCDEF" for c in passphrase)
    if not is_hex_psk and not (lo <= len(passphrase) <= hi and all(" " <= c <= "~" for c in passphrase)):
        raise UserError(f"--wifi-psk must be {lo} to {hi} printable ASCII characters, or 64 hex digits")
    return Wifi(ssid, wifi_psk(passphrase, ssid), cc)


def resolve_follow(spec: str, said: list) -> tuple[str, bytes]:
    """`NAME=KEY` (KEY: a person's or device's name, or a key), or just a person's or device's
    name, which is then also the name shown for the feed."""
    from hyperpi_host import resolve

    name, sep, key_text = spec.partition("=")
    name = name.strip()
    # `said` collects what each was taken for, to say once every argument is checked.
    if not sep:
        found = resolve.feed(name, f"--follow {name}")
        if found.name is None:
            raise UserError(f"--follow {spec[:60]!r}: a key needs a name to show: NAME=KEY")
        said.append((f"--follow {name}", found))
        return found.name, found.key
    if not name or not key_text.strip():
        raise UserError(f"--follow {spec!r}: expected NAME=KEY or a person's or device's name")
    if len(name) > 32 or not name.isprintable():
        raise UserError(f"--follow {spec!r}: the name must be printable and at most 32 characters")
    found = resolve.feed(key_text, f"--follow {name}")
    said.append((f"--follow {name}", found))
    return name, found.key


def check_preset(text: str) -> str:
    if not text.strip() or len(text) > 140 or not text.isprintable():
        raise UserError(f"--preset {text[:40]!r}: must be printable text of 1 to 140 characters")
    return text.strip()


def check_peer(text: str) -> str:
    """A static peer for the device config, checked as the device will read it."""
    try:
        parse_address(text)
    except ValueError as error:
        raise UserError(f"--peer {error}") from None
    return text


def read_ssh_keys(path: Path) -> str:
    """The public keys of an authorized_keys-style file, checked line by line."""
    try:
        data = path.read_bytes()[: MAX_SSH_KEY_FILE + 1]
    except OSError as error:
        raise UserError(f"cannot read --ssh-key {path}: {error.strerror}") from None
    if len(data) > MAX_SSH_KEY_FILE:
        raise UserError(f"--ssh-key {path} is too large to be a public key file")
    text = data.decode("utf-8", errors="replace")
    if "PRIVATE KEY" in text:
        raise UserError(f"--ssh-key {path} is a private key; give the .pub file")
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2 or fields[0] not in SSH_KEY_TYPES:
            raise UserError(
                f"--ssh-key {path}:{number}: not an OpenSSH public key (expected e.g. 'ssh-ed25519 AAAA...')"
            )
        try:
            blob = base64.b64decode(fields[1], validate=True)
        except binascii.Error:
            raise UserError(f"--ssh-key {path}:{number}: the key is not valid base64") from None
        # The blob starts with its own type as an SSH string: a cheap check for a damaged key.
        if blob[4 : 4 + int.from_bytes(blob[:4], "big")] != fields[0].encode():
            raise UserError(f"--ssh-key {path}:{number}: the key data does not match its type {fields[0]}")
        lines.append(line)
    if not lines:
        raise UserError(f"--ssh-key {path} holds no public key")
    return "\n".join(lines) + "\n"


def _resolve_owner(text: str, said: list) -> bytes:
    from hyperpi_host import resolve

    found = resolve.owner_control_feed(text, "--owner")
    said.append(("--owner", found))
    return found.key


def settings_from_args(args: argparse.Namespace, said: list | None = None) -> Settings:
    """The checked settings; `said` receives (option, resolve.Resolved) for each key resolved."""
    said = [] if said is None else said
    settings = Settings(
        name=check_name(args.device),
        board=check_board(args.board),
        presets=[check_preset(p) for p in args.preset],
        follows=[resolve_follow(f, said) for f in args.follow],
        owner=_resolve_owner(args.owner, said) if args.owner else None,
        listen_port=args.listen_port,
        peers=[check_peer(p) for p in args.peer],
        wifi=check_wifi(args.wifi_ssid, args.wifi_psk, args.wifi_country),
        ssh_keys=read_ssh_keys(Path(args.ssh_key)) if args.ssh_key else None,
    )
    if not 0 < settings.listen_port < 65536:
        raise UserError(f"--listen-port {settings.listen_port}: must be 1-65535")
    names = [n for n, _ in settings.follows]
    if len(set(names)) != len(names):
        raise UserError("--follow: each name may appear once")
    try:
        device_toml(settings)  # the service's own config check, before anything is written
    except ProvisionError as error:
        raise UserError(str(error)) from None
    return settings


# --- writing the image -------------------------------------------------------------------------


def provision(
    source: Path, out: Path, settings: Settings, *, force: bool = False, identity: Identity | None = None
) -> tuple[Identity, Path]:
    """Write a provisioned copy of `source` to `out`; returns the identity and its host record."""
    if not source.is_file():
        raise UserError(f"no such image: {source}")
    if out.exists() and not force:
        raise UserError(f"{out} exists; choose another -o or add --force to replace it")
    if out.exists() and out.resolve() == source.resolve():
        raise UserError("-o must not be the input image: provisioning writes a copy")
    if not out.parent.is_dir():
        raise UserError(f"folder {out.parent} does not exist")
    identity = identity or new_identity()
    try:
        write_image(source, out, settings, identity)
    except ProvisionError as error:
        raise UserError(str(error)) from None
    return identity, record_device(settings, identity, out)


# --- the command ------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "provision",
        help="write one device's identity and settings into a copy of the SD card image",
        description="Copy IMAGE (.img or .img.xz) to OUT with this device's settings on the FAT "
        "boot partition and its new secret keys (and Wi-Fi credentials) as 0600 files in the ext4 "
        "root. Needs no root and mounts nothing. Flash OUT with `hyperpi flash`.",
    )
    parser.add_argument("image", metavar="IMAGE", help="hyperpi-<version>-arm64.img or .img.xz")
    parser.add_argument("-o", "--output", required=True, metavar="OUT", help="the provisioned image to write")
    parser.add_argument("--device", required=True, metavar="NAME", help="device name (also its host name)")
    parser.add_argument(
        "--board", default="headless", metavar="B", help=f"board profile: {', '.join(BOARDS)} (default headless)"
    )
    parser.add_argument(
        "--wifi-ssid", metavar="S", help="the Wi-Fi network's name (with --wifi-psk and --wifi-country)"
    )
    parser.add_argument("--wifi-psk", metavar="P", help="passphrase (8-63 characters) or 64 hex digits")
    parser.add_argument("--wifi-country", metavar="CC", help="ISO 3166-1 alpha-2 country code, e.g. DE")
    parser.add_argument(
        "--follow", action="append", default=[], metavar="NAME=KEY", help="a feed to follow from the start (repeatable)"
    )
    parser.add_argument(
        "--preset",
        action="append",
        default=[],
        metavar="TEXT",
        help="a canned message (repeatable; replaces the defaults)",
    )
    parser.add_argument("--owner", metavar="OWNER", help="the owner's control feed: an owner key name or a key")
    parser.add_argument("--ssh-key", metavar="FILE", help="turn SSH on, for root, with these public keys")
    parser.add_argument(
        "--listen-port",
        type=int,
        default=DEFAULT_PORT,
        metavar="PORT",
        help=f"replication port (default {DEFAULT_PORT})",
    )
    parser.add_argument("--peer", action="append", default=[], metavar="HOST:PORT", help="a static peer (repeatable)")
    parser.add_argument(
        "--force",
        action="store_true",
        help=(
            "replace OUT if it exists, and provision a device name used before "
            "(new keys: the old card is no longer paired)"
        ),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hyperpi_host import devices, keys

    said: list = []
    settings = settings_from_args(args, said)
    if keys.is_stored(settings.name):
        raise UserError(
            f"{settings.name!r} is a person's key (`hyperpi keys list`); people and devices share "
            f"one set of names: pick another device name, or `hyperpi keys rm {settings.name}` if "
            "that key was only meant for this device (provisioning makes the device's own keys)"
        )
    old = devices.load_device(settings.name) if devices.is_recorded(settings.name) else None
    if old is not None and not args.force:
        when = time.strftime("%Y-%m-%d", time.localtime(old.provisioned_at))
        consequences = (
            f"a device {settings.name} was provisioned here on {when} (feed key "
            f"{z32_encode(old.feed_key)}); provisioning it again makes new keys, so the old card keeps "
            "its old identity and this computer can no longer pair it (flash the new image onto it "
            "instead). Devices following the old one are moved to the new one."
        )
        if not sys.stdin.isatty():  # a script gets the refusal, never a question it cannot answer
            raise UserError(f"{consequences} Add --force to do it")
        confirm(f"{consequences} Provision {settings.name} again?", "--force")
    from hyperpi_host import resolve

    for what, found in said:
        resolve.say(what, found)
    identity, record = provision(Path(args.image), Path(args.output), settings, force=args.force)
    bmap_name = bmap_path(Path(args.output)).name
    print(f"provisioned {settings.name} ({settings.board}) -> {args.output} (mode 0600, with {bmap_name})")
    print(f"feed key:  {z32_encode(identity.feed_key)}")
    print(f"noise key: {z32_encode(identity.noise.public_key)}")
    print(f"recorded:  {record}")
    if old is not None and old.feed_key != identity.feed_key:
        print(
            f"replaced:  the old {settings.name} ({z32_encode(old.feed_key)}); its card is no longer paired from here"
        )
        _move_followers(old.feed_key, identity.feed_key, settings.name)
    return 0


def _move_followers(old_key: bytes, new_key: bytes, name: str) -> None:
    """Devices of an owner on this computer that follow the old feed key follow the new one
    instead: an unfollow and a follow entry on the owner's control feed, delivered as pairing is."""
    from hyperpi_host import devices, keys

    owners = {i.control_feed_key: i.name for i in keys.list_identities() if i.control_feed_key is not None}
    followers = [d for d in devices.list_devices() if d.control_key in owners and d.name != name]
    if not followers:
        return
    moved = []
    with keys.open_store() as store:
        for device in followers:
            control = keys.open_control_feed(store, owners[device.control_key])
            current = pairing.follows(control, device).get(old_key)
            if current is None:
                continue
            try:
                control.append(
                    [pairing.unfollow_entry(device, old_key), pairing.follow_entry(device, new_key, current.name)]
                )
            except HypercoreError as error:
                raise UserError(f"cannot write the control feed of {owners[device.control_key]}: {error}") from None
            except pairing.PairingError as error:
                raise UserError(str(error)) from None
            moved.append(device.name)
    if moved:
        print(f"moved:     {', '.join(moved)} will follow the new {name}; deliver with: hyperpi pair sync")
