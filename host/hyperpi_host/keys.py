"""`hyperpi keys`: the host's feed identities (Ed25519 key pairs), kept under `<home>/keys/`.

Each identity NAME is two files:
- `NAME.json` (public): the signer's public key, whether it is an owner, and the owner's
  control feed key. Feed and discovery keys are derived from the public key when shown.
- `NAME.secret` (mode 0600): the secret key(s) as JSON, in the same format `keys export` writes,
  so an export is a copy of this file and an import only validates and stores it.
An owner identity also has a control feed: a Hypercore with its own key pair, created in the
host's store, to which `hyperpi pair` appends the follow entries its devices apply.
Secrets are never printed or logged; export to a terminal is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from hyperpi import blockjson
from hyperpi.hypercore import Core, HypercoreError, Store
from hyperpi.hypercore.keys import (
    KeyPair,
    core_key,
    discovery_key,
    generate_keypair,
    z32_encode,
)
from hyperpi_host import home
from hyperpi_host.cli import UserError, command_group
from hyperpi_host.storelock import LockedStore

KEYS_DIR = "keys"
STORE_DIR = "store"
# Names become file names and appear in device config: keep them short and shell-safe.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
EXPORT_FORMAT = "hyperpi-identity"
EXPORT_VERSION = 1


@dataclass(frozen=True)
class Identity:
    """The public side of a stored identity; reading it never touches the secret file."""

    name: str
    public_key: bytes
    owner: bool
    control_feed_key: bytes | None  # owners only: the core key of the control feed

    @property
    def feed_key(self) -> bytes:
        """The identity's feed (core) key: the v1 manifest hash, as Node's default."""
        return core_key(self.public_key)

    @property
    def discovery_key(self) -> bytes:
        return discovery_key(self.feed_key)


# --- storage ----------------------------------------------------------------------------


def keys_dir() -> Path:
    return home.home_subdir(KEYS_DIR)


def store_path() -> Path:
    """The folder of the host's Hypercore store (control feeds, chat feeds)."""
    return home.home_subdir(STORE_DIR)


def check_name(name: str) -> str:
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"bad key name {name!r}: use 1-32 letters, digits, '-' or '_', starting with a letter or digit")
    return name


def _public_path(name: str) -> Path:
    return keys_dir() / f"{check_name(name)}.json"


def _secret_path(name: str) -> Path:
    return keys_dir() / f"{check_name(name)}.secret"


def exists(name: str) -> bool:
    return _public_path(name).exists() or _secret_path(name).exists()


def is_stored(name: str) -> bool:
    """True if a person `name` is stored here (creates no folder: for name lookups)."""
    return bool(NAME_PATTERN.fullmatch(name)) and (home.home_path() / KEYS_DIR / f"{name}.json").is_file()


def load_identity(name: str) -> Identity:
    """The named identity's public data; UserError if there is no such key."""
    path = _public_path(name)
    try:
        data = json.loads(path.read_text())
        control = data.get("control_feed_key")
        return Identity(
            name=name,
            public_key=bytes.fromhex(data["public_key"]),
            owner=bool(data.get("owner", False)),
            control_feed_key=bytes.fromhex(control) if control else None,
        )
    except FileNotFoundError:
        raise UserError(
            f"no key named {name!r}; see `hyperpi keys list` or create it with `hyperpi keys new {name}`"
        ) from None
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path} is damaged; restore it from an export or remove the key") from None


def list_identities() -> list[Identity]:
    folder = home.home_path() / KEYS_DIR
    if not folder.is_dir():
        return []
    return [load_identity(p.stem) for p in sorted(folder.glob("*.json")) if NAME_PATTERN.fullmatch(p.stem)]


def load_keypair(name: str) -> KeyPair:
    """The identity's signing key pair (reads the 0600 secret file)."""
    return _load_secrets(name)[0]


def load_control_keypair(name: str) -> KeyPair:
    """The key pair of an owner's control feed; UserError for a non-owner."""
    control = _load_secrets(name)[1]
    if control is None:
        raise UserError(f"{name!r} is not an owner identity; create one with `hyperpi keys new --owner NAME`")
    return control


def create_identity(name: str, owner: bool = False) -> Identity:
    """Make and store a new identity (and an owner's control feed)."""
    if exists(name):
        raise UserError(f"a key named {name!r} already exists; pick another name or `hyperpi keys rm {name}`")
    _refuse_device_name(name)
    keypair = generate_keypair()
    control = generate_keypair() if owner else None
    return _store_identity(name, keypair, control)


def _refuse_device_name(name: str) -> None:
    """People and devices share one name space: every command takes either name for a key."""
    from hyperpi_host.devices import is_recorded

    if is_recorded(name):
        raise UserError(
            f"{name!r} is a device provisioned from here (`hyperpi devices {name}` shows its key); "
            "a person needs another name"
        )


def _store_identity(name: str, keypair: KeyPair, control: KeyPair | None) -> Identity:
    control_key = None
    if control is not None:
        control_key = _create_control_feed(control)
    # Secret first: a public file without its secret would look like a usable key.
    home.write_secret(_secret_path(name), _encode_secrets(name, keypair, control))
    public = {
        "public_key": keypair.public_key.hex(),
        "feed_key": z32_encode(core_key(keypair.public_key)),  # for people reading the file
        "owner": control is not None,
        "control_feed_key": control_key.hex() if control_key else None,
    }
    home.write_atomic(_public_path(name), (json.dumps(public, indent=2) + "\n").encode(), 0o600)
    return load_identity(name)


def _create_control_feed(control: KeyPair) -> bytes:
    """Create the owner's control feed in the host store (or find it there); returns its key."""
    with open_store() as store:
        return _control_core(store, control).key


def open_store() -> Store:
    """The host's Hypercore store (control feeds, followed feeds); the caller closes it."""
    try:
        return LockedStore(store_path())
    except HypercoreError as error:
        raise UserError(f"{error}; move {store_path()} aside to start a fresh store") from None


def open_control_feed(store: Store, name: str) -> Core:
    """The owner `name`'s control feed in `store`, writable (created empty if missing)."""
    identity = load_identity(name)
    core = _control_core(store, load_control_keypair(name))
    if core.key != identity.control_feed_key:
        raise UserError(f"the control feed of {name!r} does not match {_public_path(name)}; restore it from an export")
    return core


def _control_core(store: Store, control: KeyPair) -> Core:
    try:
        # Creating with the same key pair again opens the existing core.
        return Core.create(store, control)
    except HypercoreError as error:
        raise UserError(f"cannot open the control feed: {error}") from None


def _encode_secrets(name: str, keypair: KeyPair, control: KeyPair | None) -> bytes:
    data = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "name": name,
        "secret_key": keypair.secret_key.hex(),
        "control_secret_key": control.secret_key.hex() if control else None,
    }
    return (json.dumps(data, indent=2) + "\n").encode()


def _decode_secrets(raw: bytes, where: str) -> tuple[KeyPair, KeyPair | None]:
    """Parse and check an identity secret (file or export); the key pairs are rebuilt from seeds."""
    try:
        data = blockjson.decode(raw, home.MAX_SECRET_BYTES)  # an export may come from anyone: bounded
        if data.get("format") != EXPORT_FORMAT or data.get("version") != EXPORT_VERSION:
            raise ValueError
        keypair = _keypair_from_hex(data["secret_key"])
        control_hex = data.get("control_secret_key")
        control = _keypair_from_hex(control_hex) if control_hex else None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise UserError(f"{where} is not a hyperpi key export (or it is damaged)") from None
    return keypair, control


def _keypair_from_hex(text: str) -> KeyPair:
    secret = bytes.fromhex(text)
    if len(secret) != 64:
        raise ValueError("secret key length")
    keypair = generate_keypair(seed=secret[:32])
    if keypair.secret_key != secret:  # libsodium's secret ends with the public key
        raise ValueError("secret key does not match its public key")
    return keypair


def _load_secrets(name: str) -> tuple[KeyPair, KeyPair | None]:
    identity = load_identity(name)
    path = _secret_path(name)
    keypair, control = _decode_secrets(home.read_secret(path), str(path))
    if keypair.public_key != identity.public_key:
        raise UserError(f"{path} does not belong to {_public_path(name)}; restore the key from an export")
    return keypair, control


# --- commands -----------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = command_group(
        subparsers,
        "keys",
        help="create, list, show, export, import and remove feed keys",
        description=(
            "Feed identities kept on this computer (under $HYPERPI_HOME, default "
            "~/.config/hyperpi). A key's feed key is what others follow; its secret never leaves "
            "the 0600 file except through `keys export`."
        ),
    )

    new = sub.add_parser(
        "new",
        help="create a person's identity (a device gets its own keys from `hyperpi provision`)",
        description="Create the identity of a person named NAME: a feed key others follow and "
        "`hyperpi chat write --as NAME` writes to. Devices are not made here: `hyperpi provision` "
        "makes each device's keys and records it under its own name.",
    )
    new.add_argument("name", metavar="NAME", help="1-32 letters, digits, '-' or '_'; not a device's name")
    new.add_argument(
        "--owner",
        action="store_true",
        help="make an owner identity, with the control feed that pairs its devices",
    )
    new.set_defaults(func=cmd_new)

    lst = sub.add_parser("list", help="list keys", description="List keys: name, feed key, owner.")
    lst.set_defaults(func=cmd_list)

    show = sub.add_parser("show", help="show a key's feed key, discovery key and QR code")
    show.add_argument("name", metavar="NAME", help="a person's name from `hyperpi keys list`")
    show.add_argument("--qr", action="store_true", help="print the pairing QR code in the terminal")
    show.add_argument("--png", type=Path, metavar="FILE", help="save the pairing QR code as a PNG")
    show.add_argument(
        "--style",
        choices=("auto", "ansi", "dark", "light"),
        default="auto",
        help="QR rendering, as for `hyperpi qr` (default: ansi on a terminal, else dark)",
    )
    show.set_defaults(func=cmd_show)

    export = sub.add_parser(
        "export",
        help="write a key's secret to a file (mode 0600), to move it to another computer",
    )
    export.add_argument("name", metavar="NAME", help="the person whose secret to export")
    export.add_argument("file", nargs="?", type=Path, metavar="FILE", help="default: stdout, if not a terminal")
    export.set_defaults(func=cmd_export)

    imp = sub.add_parser("import", help="store a key from a `keys export` file under NAME")
    imp.add_argument("name", metavar="NAME", help="the name to store it under (not yet used here)")
    imp.add_argument("file", metavar="FILE", help="the export file, or - for stdin")
    imp.set_defaults(func=cmd_import)

    rm = sub.add_parser("rm", help="delete a key (its secret is gone for good)")
    rm.add_argument("name", metavar="NAME", help="the person to delete")
    rm.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    rm.set_defaults(func=cmd_rm)


def cmd_new(args: argparse.Namespace) -> int:
    identity = create_identity(check_name(args.name), owner=args.owner)
    kind = "owner identity" if identity.owner else "key"
    print(f"created {kind} {identity.name}")
    _print_identity(identity)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    identities = list_identities()
    if not identities:
        print("no keys yet; create one with: hyperpi keys new NAME")
        return 0
    width = max(len("NAME"), *(len(i.name) for i in identities))
    print(f"{'NAME':<{width}}  {'FEED KEY':<52}  OWNER")
    for identity in identities:
        owner = "yes" if identity.owner else "no"
        print(f"{identity.name:<{width}}  {z32_encode(identity.feed_key)}  {owner}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    identity = load_identity(check_name(args.name))
    _print_identity(identity)
    if args.qr or args.png is not None:
        from hyperpi_host import qr

        if args.qr:
            style = qr.auto_style() if args.style == "auto" else args.style
            sys.stdout.write(qr.render_terminal(qr.make_qr(identity.feed_key), style))
        if args.png is not None:
            qr.write_png(qr.make_qr(identity.feed_key), args.png)
            print(f"saved {args.png}")
    return 0


def _print_identity(identity: Identity) -> None:
    print(f"name:           {identity.name}")
    print(f"feed key:       {z32_encode(identity.feed_key)}")
    print(f"discovery key:  {z32_encode(identity.discovery_key)}")
    print(f"signer key:     {z32_encode(identity.public_key)}")
    print(f"owner:          {'yes' if identity.owner else 'no'}")
    if identity.control_feed_key is not None:
        print(f"control feed:   {z32_encode(identity.control_feed_key)}")


def cmd_export(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    keypair, control = _load_secrets(name)
    data = _encode_secrets(name, keypair, control)
    if args.file is None or str(args.file) == "-":
        if sys.stdout.isatty():
            raise UserError("refusing to print a secret key to the terminal; give a FILE or redirect stdout")
        _make_stdout_private()
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return 0
    if args.file.exists():
        raise UserError(f"{args.file} already exists; choose a new file name")
    home.write_secret(args.file, data)
    print(f"exported {name} to {args.file} (mode 0600; it holds the secret key: keep it private)", file=sys.stderr)
    if control is not None:
        print(
            "note: the export holds the control feed's key, not its entries; "
            "keep using one computer to pair this owner's devices",
            file=sys.stderr,
        )
    return 0


def _make_stdout_private() -> None:
    """A redirect (`> ana.key`) makes a file with the shell's umask, often 0644: a file we write
    a secret into is made 0600 first, or refused if we may not change its mode. Pipes and
    other kinds of stdout are left alone (their reader decides where the secret goes)."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # not backed by a file descriptor (an in-memory stream)
        return
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or not info.st_mode & 0o077:
        return
    try:
        os.fchmod(fd, home.SECRET_MODE)
    except OSError as error:
        raise UserError(
            f"stdout is a file other users can read, and its mode cannot be changed ({error.strerror}); "
            "give a FILE instead"
        ) from None
    print(
        f"note: made the file stdout goes to private (mode 0600, was {stat.S_IMODE(info.st_mode):o})", file=sys.stderr
    )


def cmd_import(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    if exists(name):
        raise UserError(f"a key named {name!r} already exists; import under another name")
    if args.file == "-":
        raw = sys.stdin.buffer.read(home.MAX_SECRET_BYTES + 1)
        where = "stdin"
    else:
        raw = home.read_secret(Path(args.file))
        where = args.file
    keypair, control = _decode_secrets(raw, where)
    for other in list_identities():
        if other.public_key == keypair.public_key:
            raise UserError(f"this key is already stored as {other.name!r}")
    identity = _store_identity(name, keypair, control)
    print(f"imported {name}")
    _print_identity(identity)
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    name = check_name(args.name)
    identity = load_identity(name)
    if not args.yes:
        if not sys.stdin.isatty():
            raise UserError(f"removing a key cannot be undone; run `hyperpi keys rm {name} --yes` to confirm")
        what = "owner identity (its devices can no longer be paired from here)" if identity.owner else "key"
        try:
            answer = input(f"delete {what} {name} ({z32_encode(identity.feed_key)})? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("kept")
            return 1
    # The control feed's secret, and the chat feed's once `chat write --as` used it, are key
    # files in the host store too. Their signed entries stay there: an import of an export of
    # NAME writes the secrets again.
    with open_store() as store:
        for key in (identity.feed_key, identity.control_feed_key):
            try:
                if key is not None:
                    store.delete_secret_key(key)
            except OSError as error:
                raise UserError(f"cannot remove a secret key from the host store: {error.strerror}") from None
    # Public file first: without it the key no longer lists, even if unlinking the secret fails.
    _public_path(name).unlink(missing_ok=True)
    _secret_path(name).unlink(missing_ok=True)
    print(f"removed {name}")
    return 0
