"""`hyperpi release`: publish a new hyperpi version to an owner's devices over the LAN, and see
how each device is doing with it.

`release publish` writes the bundle (the hyperpi wheel, and any extra wheels the devices lack)
into a fresh *release feed*, a Hypercore whose secret key stays in the host's store (0600, like
every core's), in the format of hyperpi/device/bundle.py; then appends a `release` entry naming
that feed to the owner's control feed (hyperpi/device/control.py), so the owner's signature on
the control feed vouches for the release feed's key, length and sha256; then serves both on the
LAN until every device meant has downloaded the release (or `--no-wait`).

`release status` joins the LAN for a few seconds and reads each device's latest status block
from its own feed (hyperpi/device/update.py): the version it runs and how its update goes.
"""

from __future__ import annotations

import argparse
import email.message
import email.parser
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hyperpi.device.bundle import MAX_RELEASE_BYTES, make_bundle, parse_version
from hyperpi.device.control import ControlEntry, Release, parse_entry
from hyperpi.device.update import latest_status, newer
from hyperpi.hypercore import Core, HypercoreError, Store, generate_keypair, z32_encode
from hyperpi.net.stream import EncryptedConnection

from . import keys, netrun
from .cli import UserError, command_group, timeout_within
from .devices import Device, list_devices, load_device

DEFAULT_WAIT = 600.0  # s `publish` serves the release: a Pi on Wi-Fi fetches a few MiB in seconds
DEFAULT_STATUS_WAIT = 5.0  # s `status` listens: devices on the LAN connect within a few seconds
MAX_WAIT = 3600.0
EXIT_NOT_DELIVERED = 3  # as `hyperpi pair`: published, some devices not reached yet
TICK = 0.5
REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
PROJECT_FILES = ("pyproject.toml", "README.md", "firmware", "host")  # what `pip wheel` of a checkout reads


# --- the bundle ------------------------------------------------------------------------------


def copy_checkout(root: Path, source: Path) -> None:
    """Copy what `pip wheel` of a checkout reads (PROJECT_FILES) into a new folder `source`:
    setuptools writes build/ beside the sources, which must not happen in the checkout."""
    source.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PROJECT_FILES:
        path = root / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)


def checkout_root() -> Path | None:
    """The source checkout this command runs from, if it runs from one."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "firmware" / "hyperpi").is_dir() else None


def build_wheel(folder: Path) -> Path:
    """`pip wheel --no-deps` of this checkout, built in a copy (setuptools writes build/ into the
    source folder, which belongs to the image build); the wheel lands in `folder`."""
    root = checkout_root()
    if root is None:
        raise UserError("not running from a hyperpi checkout: give the wheel to publish (BUNDLE)")
    source = folder / "source"
    copy_checkout(root, source)
    print(f"building the wheel of {root} ...", file=sys.stderr, flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(folder), str(source)],
        capture_output=True,
        text=True,
    )
    wheels = sorted(folder.glob("hyperpi-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise UserError(f"pip wheel failed: {lines[-1] if lines else 'no wheel made'}", 1)
    return wheels[0]


def wheel_metadata(path: Path) -> tuple[str, str]:
    """(distribution name, version) from a wheel's METADATA; UserError if it is not a wheel."""
    meta = _metadata(path)
    return str(meta.get("Name", "")), str(meta.get("Version", ""))


def _metadata(path: Path) -> email.message.Message:
    if not path.name:
        raise UserError("a wheel's path is empty")
    try:
        with zipfile.ZipFile(path) as wheel:
            names = [n for n in wheel.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(names) != 1:
                raise ValueError
            text = wheel.read(names[0]).decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile):
        raise UserError(f"{path} is not a wheel (.whl)") from None
    return email.parser.Parser().parsestr(text, headersonly=True)


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def device_requirements(wheel: Path) -> set[str]:
    """The distributions hyperpi[device] of this wheel needs on every device: its requirements
    with no marker or only `extra == "device"` (ones for a platform, such as lgpio on aarch64,
    cannot be judged from here and are left out)."""
    needed = set()
    for requirement in _metadata(wheel).get_all("Requires-Dist") or []:
        match = REQUIREMENT.match(str(requirement))
        if match is None:
            continue
        marker = str(requirement).partition(";")[2]
        extras = re.findall(r"""extra\s*==\s*["']([^"']+)["']""", marker)
        rest = re.sub(r"""\(?\s*extra\s*==\s*["'][^"']+["']\s*\)?""", "", marker).strip()
        if rest or (extras and extras != ["device"]):
            continue
        needed.add(normalize(match.group(1)))
    return needed


def lacking(wheel: Path, extra: list[Path], status: dict | None) -> list[str]:
    """What a device that reported `status` lacks of what this release needs; [] if it reported
    no packages (an older version) or lacks nothing."""
    packages = status.get("packages") if isinstance(status, dict) else None
    if not isinstance(packages, list):
        return []
    present = {normalize(str(p).split("==", 1)[0]) for p in packages}
    present |= {normalize(wheel_metadata(p)[0]) for p in extra}
    return sorted(device_requirements(wheel) - present - {"hyperpi"})


def read_bundle(main: Path, extra: list[Path]) -> tuple[str, list[tuple[str, bytes]]]:
    """The version and (file name, content) of the hyperpi wheel and the extra wheels."""
    name, version = wheel_metadata(main)
    if name.lower() != "hyperpi":
        raise UserError(f"{main} is a wheel of {name or 'nothing'}, not of hyperpi")
    try:
        parse_version(version)
    except ValueError as error:
        raise UserError(f"{main}: {error}") from None
    files = []
    for path in [main, *extra]:
        if path is not main:
            wheel_metadata(path)
        if path.stat().st_size > MAX_RELEASE_BYTES:
            raise UserError(f"{path} is over the {MAX_RELEASE_BYTES // 2**20} MiB limit of a release")
        files.append((path.name, path.read_bytes()))
    if len({n for n, _ in files}) != len(files):
        raise UserError("the same wheel is given twice")
    return version, files


# --- owners, devices, announcements -----------------------------------------------------------


def pick_owner(name: str | None) -> str:
    if name is not None:
        identity = keys.load_identity(keys.check_name(name))
        if identity.control_feed_key is None:
            raise UserError(f"{name!r} is not an owner identity (see `hyperpi keys list`)")
        return name
    owners = [i.name for i in keys.list_identities() if i.control_feed_key is not None]
    if len(owners) != 1:
        which = ", ".join(owners) if owners else "none yet: `hyperpi keys new --owner NAME`"
        raise UserError(f"give --owner NAME (owners here: {which})")
    return owners[0]


def owner_devices(owner: str) -> list[Device]:
    control = keys.load_identity(owner).control_feed_key
    return [d for d in list_devices() if d.control_key == control]


def pick_devices(owner: str, names: list[str]) -> list[Device]:
    if not names:
        return owner_devices(owner)
    control = keys.load_identity(owner).control_feed_key
    devices = []
    for name in names:
        device = load_device(name)
        if device.control_key != control:
            raise UserError(f"{name} does not follow {owner}'s control feed; it cannot be updated by {owner}")
        devices.append(device)
    return devices


def releases_in(control: Core) -> list[tuple[int, ControlEntry, Release]]:
    """Every release entry of the control feed, in order."""
    out = []
    for index in range(control.contiguous_length):
        try:
            entry = parse_entry(control.get(index))
        except ValueError:
            continue
        if entry.release is not None:
            out.append((index, entry, entry.release))
    return out


def release_entry(release: Release, devices: list[Device] | None) -> bytes:
    value: dict[str, object] = {
        "type": "release",
        "version": release.version,
        "key": z32_encode(release.key),
        "length": release.length,
        "size": release.size,
        "sha256": release.sha256,
    }
    if devices:
        value["devices"] = [z32_encode(d.feed_key) for d in devices]
    if release.downgrade:
        value["downgrade"] = True
    block = json.dumps(value, separators=(",", ":")).encode()
    try:
        parse_entry(block)  # what a device would refuse is refused here, before it is signed
    except ValueError as error:
        raise UserError(f"the devices would not accept this release: {error}") from None
    return block


# --- device reports ------------------------------------------------------------------------------


def latest_status_here(device: Device) -> dict | None:
    """The device's latest status in this computer's copy of its feed (fetched by `release status`)."""
    with keys.open_store() as store:
        try:
            return latest_status(Core.open(store, device.feed_key))
        except HypercoreError:
            return None


def describe(status: dict | None) -> tuple[str, str]:
    """(running version, update state) for the status table."""
    if status is None:
        return "?", "no report yet"
    version = str(status.get("version", "?"))[:32]
    update = status.get("update")
    if not isinstance(update, dict):
        return version, "-"
    target, state = str(update.get("version", "?"))[:32], str(update.get("state", "?"))[:20]
    if state == "downloading":
        return version, f"downloading {target}: {update.get('progress', 0)}%"
    if state in ("failed", "rolled back"):
        return version, f"{state} {target}: {str(update.get('reason', ''))[:120]}"
    return version, f"{state} {target}"


@dataclass
class Watch:
    device: Device
    feed: Core  # the device's own feed, for its status
    held: int = 0  # blocks of the release feed it holds


def serve(
    store: Store,
    cores: list[Core],
    watches: list[Watch],
    release: Core | None,
    options: netrun.NetworkOptions,
    timeout: float,
    done: Callable[[], bool],
) -> bool:
    """Join the LAN with `cores` until `done()` or `timeout`; True if interrupted. Each watched
    device's hold on `release` is tracked from what its connection says it holds."""

    def on_progress(conn: EncryptedConnection, core: Core, length: int) -> None:
        for w in watches:
            if release is not None and core is release and w.device.noise_key in (None, conn.remote_public_key):
                w.held = max(w.held, length)

    return netrun.serve_until(
        options, store, cores, done, timeout, on_progress=on_progress, wake_on=[w.feed for w in watches]
    )


def _watches(store: Store, devices: list[Device]) -> list[Watch]:
    watches = []
    for device in devices:
        try:
            watches.append(Watch(device, Core.open(store, device.feed_key)))
        except HypercoreError as error:
            raise UserError(f"cannot open {device.name}'s feed in the store: {error}") from None
    return watches


# --- the commands --------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = command_group(
        subparsers,
        "release",
        help="publish a new hyperpi version to your devices over the LAN, and see how they take it",
        description="Updates over the LAN through the owner's feeds (README.md, 'Updates over the LAN').",
    )

    publish = sub.add_parser(
        "publish",
        help="announce a release to the owner's devices and serve it until they have it",
        description="Write BUNDLE (default: a wheel of this checkout) and any --wheel files into a new "
        "release feed, announce it on the owner's control feed, and serve it on the LAN until every "
        "device meant has downloaded it. Devices install it beside the running version, switch, and "
        "roll back by themselves if it does not start.",
    )
    publish.add_argument("bundle", metavar="BUNDLE", nargs="?", type=Path, help="the hyperpi wheel to publish")
    publish.add_argument(
        "--wheel",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="another wheel to ship, e.g. a dependency the devices lack (repeatable)",
    )
    publish.add_argument("--owner", metavar="NAME", help="the owner identity (default: the only one here)")
    publish.add_argument(
        "--device",
        action="append",
        default=[],
        metavar="NAME",
        help="only this device (repeatable; default: every device of the owner)",
    )
    publish.add_argument(
        "--allow-downgrade", action="store_true", help="let devices running a newer version install this one"
    )
    publish.add_argument("--no-wait", action="store_true", help="announce only; devices fetch it when a host serves it")
    publish.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_WAIT,
        metavar="S",
        help=f"seconds to serve the release (default {DEFAULT_WAIT:g})",
    )
    netrun.add_network_arguments(publish, default_listen="any free port")
    publish.set_defaults(func=cmd_publish)

    status = sub.add_parser(
        "status",
        help="each device's running version and update state, as the devices report it",
        description="Listen on the LAN for a few seconds (serving the latest release meanwhile) and show "
        "what each of the owner's devices last reported: its version and its update's state.",
    )
    status.add_argument("--owner", metavar="NAME", help="the owner identity (default: the only one here)")
    status.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_STATUS_WAIT,
        metavar="S",
        help=f"seconds to listen (default {DEFAULT_STATUS_WAIT:g}; 0: only what this computer holds)",
    )
    netrun.add_network_arguments(status, default_listen="any free port")
    status.set_defaults(func=cmd_status)


def cmd_publish(args: argparse.Namespace) -> int:
    timeout = 0.0 if args.no_wait else timeout_within(args.timeout, MAX_WAIT)
    options = netrun.NetworkOptions.from_args(args, default_port=0)
    owner = pick_owner(args.owner)
    devices = pick_devices(owner, args.device)
    if not devices:
        raise UserError(f"no device provisioned from here follows {owner}'s control feed")
    for path in args.wheel:  # a mistake in them is said before a wheel is built
        wheel_metadata(path)
    with tempfile.TemporaryDirectory(prefix="hyperpi-release-") as tmp:
        main = args.bundle if args.bundle is not None else build_wheel(Path(tmp))
        version, files = read_bundle(main, args.wheel)
        missing = {d.name: lacking(main, args.wheel, latest_status_here(d)) for d in devices}
    for name, packages in missing.items():
        if packages:
            print(
                f"hyperpi: warning: {name} reported no {', '.join(packages)}, which hyperpi {version} needs; "
                "its install will fail unless their wheels come with --wheel FILE",
                file=sys.stderr,
            )
    try:
        bundle = make_bundle(version, files)
    except ValueError as error:
        raise UserError(f"cannot make the bundle: {error}") from None
    with keys.open_store() as store:
        control = keys.open_control_feed(store, owner)
        earlier = releases_in(control)
        if earlier and not args.allow_downgrade:
            last = earlier[-1][2].version
            if newer(version, last) <= 0:
                raise UserError(
                    f"{version} is not newer than {last}, the last release announced; "
                    "pass --allow-downgrade to make devices install it anyway"
                )
        try:
            feed = Core.create(store, generate_keypair())  # its secret key: in the store's keys/, 0600
            feed.append(list(bundle.blocks))
        except HypercoreError as error:
            raise UserError(f"cannot write the release feed: {error}", 1) from None
        release = Release(
            version, feed.key, feed.length, bundle.size, bundle.sha256, downgrade=bool(args.allow_downgrade)
        )
        block = release_entry(release, devices if args.device else None)
        try:
            index = control.append([block]) - 1
        except HypercoreError as error:
            raise UserError(f"cannot write the control feed: {error}", 1) from None
        names = ", ".join(d.name for d in devices)
        print(
            f"release {version} ({bundle.size} bytes in {len(files)} file{'s' if len(files) != 1 else ''}, "
            f"{feed.length} blocks, feed {z32_encode(feed.key)}): entry #{index} of {owner}'s control feed, for {names}"
        )
        if timeout <= 0:
            print("not waiting (--no-wait): `hyperpi release status` serves it and shows who has it")
            return 0
        netrun.setup_logging(options.verbose)
        watches = _watches(store, devices)
        interrupted = serve(
            store,
            [control, feed, *(w.feed for w in watches)],
            watches,
            feed,
            options,
            timeout,
            lambda: all(w.held >= feed.length for w in watches),
        )
        late = [w.device.name for w in watches if w.held < feed.length]
        for w in watches:
            if w.held >= feed.length:
                print(f"{w.device.name} has downloaded {version}")
    if not late:
        print("`hyperpi release status` shows when each device runs it")
        return 0
    print(
        f"hyperpi: {', '.join(late)} did not download {version} "
        f"{'before the interruption' if interrupted else f'within {timeout:g} s'}; the announcement stays, "
        "and `hyperpi release status` (or `publish` again) serves it while they are reachable",
        file=sys.stderr,
    )
    return 130 if interrupted else EXIT_NOT_DELIVERED


def cmd_status(args: argparse.Namespace) -> int:
    timeout = timeout_within(args.timeout, MAX_WAIT)
    options = netrun.NetworkOptions.from_args(args, default_port=0)
    owner = pick_owner(args.owner)
    devices = owner_devices(owner)
    if not devices:
        print(f"no device provisioned from here follows {owner}'s control feed")
        return 0
    with keys.open_store() as store:
        control = keys.open_control_feed(store, owner)
        earlier = releases_in(control)
        feed = Core.open(store, earlier[-1][2].key) if earlier else None
        watches = _watches(store, devices)
        if timeout > 0:
            netrun.setup_logging(options.verbose)
            cores = [control, *([feed] if feed is not None else []), *(w.feed for w in watches)]
            serve(store, cores, watches, feed, options, timeout, lambda: False)
        rows = [(w.device.name, *describe(latest_status(w.feed))) for w in watches]
    if earlier:
        print(f"latest release: {earlier[-1][2].version} (entry #{earlier[-1][0]} of {owner}'s control feed)")
    width = max(len("DEVICE"), *(len(r[0]) for r in rows))
    print(f"{'DEVICE':<{width}}  {'RUNNING':<10}  UPDATE")
    for name, version, state in rows:
        print(f"{name:<{width}}  {version:<10}  {state}")
    return 0
