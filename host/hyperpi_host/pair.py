"""`hyperpi pair`: tell a provisioned device which feeds to follow, through its owner's control feed.

A device provisioned with `--owner` follows that owner's control feed (README.md, "Pairing
devices"). `pair add` and `pair rm` append a signed `follow` / `unfollow` entry for one device
(built and checked by the pairing engine, pairing.py) to that feed, then join the LAN swarm on
the feed's discovery key and wait until the device holds the entry. The device is recognised by
the Noise key recorded at provisioning (`<home>/devices/NAME.json`), so another peer replicating
the feed does not count as delivery.

Nothing is lost when the device is away: the entry stays in the control feed, and `pair sync`
(or any later `pair add`/`rm` while the device is reachable) delivers it. `pair list` shows what
is still pending from what pairing.py recorded, without touching the network. This module is the
command: arguments, owners, the wait on the LAN with its status line, and one-line errors.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TextIO

from hyperpi.hypercore import Core, Store, z32_encode
from hyperpi.net.stream import EncryptedConnection
from hyperpi.net.swarm import Swarm

from . import keys, netrun, resolve
from .cli import UserError, command_group, timeout_within
from .devices import Device, list_devices, load_device
from .pairing import (
    PairingError,
    append,
    entries_for,
    follow_entry,
    follows,
    held_length,
    needed_length,
    record_held,
    unfollow_entry,
)

DEFAULT_TIMEOUT = 30.0  # s; a device on the LAN connects within a few seconds (mDNS + dial)
# An hour: longer than anyone waits at a terminal; `pair sync` in a loop suits longer waits.
MAX_TIMEOUT = 3600.0
EXIT_NOT_DELIVERED = 3  # distinct from 1 and 2 (user error): the entry is kept, delivery pending


# --- devices and their owners -----------------------------------------------------------------


def owner_of(device: Device, owner_name: str | None = None) -> str:
    """The name of the local owner identity whose control feed `device` follows."""
    if device.control_key is None:
        raise UserError(
            f"{device.name} was provisioned without --owner, so it follows no control feed; "
            f"provision it again with --owner NAME (an owner from `hyperpi keys new --owner NAME`)"
        )
    if owner_name is not None:
        identity = keys.load_identity(keys.check_name(owner_name))
        if identity.control_feed_key != device.control_key:
            raise UserError(f"{owner_name!r} is not the owner of {device.name}; leave out --owner to use the right one")
        return owner_name
    for identity in keys.list_identities():
        if identity.control_feed_key == device.control_key:
            return identity.name
    raise UserError(
        f"the owner of {device.name} (control feed {z32_encode(device.control_key)}) is not a key on this "
        "computer; import it with `hyperpi keys import` from the computer that provisioned the device"
    )


@contextlib.contextmanager
def _pairing_errors() -> Iterator[None]:
    """The pairing engine's errors as the command line's one-line errors."""
    try:
        yield
    except PairingError as error:
        raise UserError(str(error)) from None


# --- delivery: join the swarm until the devices hold their entries -------------------------------


@dataclass
class Delivery:
    """One device waiting for its control feed to reach `needed` blocks."""

    device: Device
    control: Core
    needed: int
    held: int = 0
    connected: bool = False

    @property
    def done(self) -> bool:
        return self.held >= self.needed


@dataclass
class _WaitLine:
    """One status line on stderr: redrawn in place on a terminal, one line per change otherwise."""

    stream: TextIO = field(default_factory=lambda: sys.stderr)
    _last: str = ""

    def show(self, status: str, seconds_left: float) -> None:
        if self.stream.isatty():
            self.stream.write(f"\r{status}, {seconds_left:.0f} s left\x1b[K")
            self.stream.flush()
        elif status != self._last:
            self.stream.write(f"{status} (up to {seconds_left:.0f} s)\n")
            self.stream.flush()
        self._last = status

    def end(self) -> None:
        if self.stream.isatty() and self._last:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _status(deliveries: list[Delivery]) -> str:
    waiting = [d for d in deliveries if not d.done]
    parts = []
    for d in waiting:
        state = "connected, sending" if d.connected else "looking for it on the LAN"
        parts.append(f"{d.device.name}: {state}")
    return "waiting for " + "; ".join(parts)


def deliver(deliveries: list[Delivery], store: Store, options: netrun.NetworkOptions, timeout: float) -> bool:
    """Join the swarm on the control feeds until every delivery is done or `timeout` passes.
    Updates each Delivery's `held` and `pairing.json`; other devices of the same owners that
    show up are recorded too. True if Ctrl-C (or SIGTERM) cut the wait short."""
    controls = {d.control.key: d.control for d in deliveries}
    bystanders = [
        device
        for device in list_devices()
        if device.control_key in controls and all(device.feed_key != d.device.feed_key for d in deliveries)
    ]
    everyone = [*(d.device for d in deliveries), *bystanders]

    def on_progress(conn: EncryptedConnection, core: Core, length: int) -> None:
        for device in everyone:
            if device.control_key == core.key and device.noise_key in (None, conn.remote_public_key):
                record_held(device, length)
        for d in deliveries:
            if d.control.key == core.key and d.device.noise_key in (None, conn.remote_public_key):
                d.held = max(d.held, length)

    line = _WaitLine()

    def on_tick(swarm: Swarm, seconds_left: float) -> None:
        remote_keys = set(swarm.connections)
        for d in deliveries:
            d.connected = bool(remote_keys) if d.device.noise_key is None else d.device.noise_key in remote_keys
        line.show(_status(deliveries), seconds_left)

    try:
        return netrun.serve_until(
            options,
            store,
            controls.values(),
            lambda: all(d.done for d in deliveries),
            timeout,
            on_progress=on_progress,
            on_tick=on_tick,
        )
    finally:
        line.end()


# --- the commands ------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = command_group(
        subparsers,
        "pair",
        help="make a device follow (or stop following) a feed, through its owner's control feed",
        description=(
            "Pair a device provisioned from this computer (`hyperpi provision --owner`) with other "
            "people's feeds. Each change is a signed entry on the owner's control feed; the command "
            "then waits on the LAN until the device has it. A device that is away gets it later, "
            "from `hyperpi pair sync` or any pair command run while it is reachable."
        ),
    )

    add = sub.add_parser(
        "add",
        help="make DEVICE follow the feed KEY, shown as NAME",
        description="Append a follow entry for DEVICE to its owner's control feed and wait until the device has it.",
    )
    _device_argument(add)
    add.add_argument(
        "key",
        metavar="KEY",
        help="the feed to follow: a person's or device's name, or a key (z-base-32, hex, HYPERPI: QR payload)",
    )
    add.add_argument(
        "--name", help="the name the device shows for this feed's messages (default: the person's or device's name)"
    )
    _wait_arguments(add)
    add.set_defaults(func=cmd_add)

    rm = sub.add_parser(
        "rm",
        help="make DEVICE stop following the feed KEY",
        description="Append an unfollow entry for DEVICE to its owner's control feed and wait until the device has it.",
    )
    _device_argument(rm)
    rm.add_argument("key", metavar="KEY", help="a person's or device's name, or a key (z-base-32, hex, HYPERPI:)")
    _wait_arguments(rm)
    rm.set_defaults(func=cmd_rm)

    lst = sub.add_parser(
        "list",
        help="list the feeds DEVICE follows through pairing, and what it has not received yet",
        description="The follows in effect on DEVICE once it has every control feed entry (offline: "
        "reads this computer's copy of the control feed).",
    )
    _device_argument(lst)
    lst.set_defaults(func=cmd_list)

    sync = sub.add_parser(
        "sync",
        help="deliver pending entries to DEVICE (or to every device with pending entries)",
        description="Join the LAN and wait until DEVICE (default: every device provisioned from here "
        "that has pending entries) holds all of its control feed entries.",
    )
    sync.add_argument(
        "device", metavar="DEVICE", nargs="?", help="one device (default: every one with pending entries)"
    )
    _wait_arguments(sync)
    sync.set_defaults(func=cmd_sync)


def _device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("device", metavar="DEVICE", help="a device name given to `hyperpi provision --device`")


def _wait_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--owner", metavar="OWNER", help="the owner identity (default: the one DEVICE was provisioned with)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for the device (default {DEFAULT_TIMEOUT:g}; 0: only record the entry)",
    )
    netrun.add_network_arguments(parser, default_listen="any free port")


def cmd_add(args: argparse.Namespace) -> int:
    device = load_device(args.device)
    found = resolve.feed(args.key, "KEY")
    key = found.key
    if key == device.feed_key:
        raise UserError(f"that is {device.name}'s own feed; give the key of the feed it should follow")
    if args.name is None:
        if found.name is None:
            raise UserError("give --name NAME: the name the device shows for this feed's messages")
        args.name = found.name
    timeout = timeout_within(args.timeout, MAX_TIMEOUT)
    options = netrun.NetworkOptions.from_args(args, default_port=0)
    owner = owner_of(device, args.owner)
    with _pairing_errors():
        follow_entry(device, key, args.name)  # refused now if the device would refuse it
    resolve.say("KEY", found)
    with keys.open_store() as store:
        control = keys.open_control_feed(store, owner)
        current = follows(control, device).get(key)
        if current is not None and current.name == args.name.strip():
            print(f"{device.name} already follows {current.name} ({z32_encode(key)})")
        else:
            if current is not None:
                print(
                    f"{device.name} already follows this feed as {current.name}; it will show it as {args.name.strip()}"
                )
            with _pairing_errors():
                index = append(control, follow_entry(device, key, args.name))
            print(
                f"{device.name} will follow {args.name.strip()} ({z32_encode(key)}): "
                f"entry #{index} of {owner}'s control feed"
            )
        return _deliver_to([device], store, {owner}, options, timeout)


def cmd_rm(args: argparse.Namespace) -> int:
    device = load_device(args.device)
    found = resolve.feed(args.key, "KEY")
    key = found.key
    timeout = timeout_within(args.timeout, MAX_TIMEOUT)
    options = netrun.NetworkOptions.from_args(args, default_port=0)
    owner = owner_of(device, args.owner)
    resolve.say("KEY", found)
    with keys.open_store() as store:
        control = keys.open_control_feed(store, owner)
        current = follows(control, device).get(key)
        if current is None:
            # It may come from the device's settings (provision --follow): the device drops it too.
            print(
                f"note: {device.name} does not follow {z32_encode(key)} through pairing; "
                "sending the unfollow anyway, for a follow from its settings",
                file=sys.stderr,
            )
        with _pairing_errors():
            index = append(control, unfollow_entry(device, key))
        who = current.name if current else z32_encode(key)
        print(f"{device.name} will stop following {who}: entry #{index} of {owner}'s control feed")
        return _deliver_to([device], store, {owner}, options, timeout)


def cmd_list(args: argparse.Namespace) -> int:
    device = load_device(args.device)
    owner = owner_of(device)
    with keys.open_store() as store:
        control = keys.open_control_feed(store, owner)
        in_effect = follows(control, device)
        held = held_length(device)
        needed = needed_length(control, device)
        pending = sum(1 for index, _ in entries_for(control, device) if index >= held)
    if not in_effect:
        print(f"{device.name} follows no feeds; add one with: hyperpi pair add {device.name} NAME_OR_KEY")
    else:
        width = max(len("NAME"), *(len(f.name) for f in in_effect.values()))
        print(f"{'NAME':<{width}}  {'FEED KEY':<52}  ON DEVICE")
        for f in sorted(in_effect.values(), key=lambda f: f.index):
            state = "yes (provisioned)" if f.index < 0 else "yes" if f.index < held else "pending"
            print(f"{f.name:<{width}}  {z32_encode(f.key)}  {state}")
    if needed > held:
        print(
            f"{pending} entr{'y' if pending == 1 else 'ies'} not yet on {device.name}; "
            f"deliver with: hyperpi pair sync {device.name}",
            file=sys.stderr,
        )
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    timeout = timeout_within(args.timeout, MAX_TIMEOUT)
    options = netrun.NetworkOptions.from_args(args, default_port=0)
    if args.owner is not None and keys.load_identity(keys.check_name(args.owner)).control_feed_key is None:
        raise UserError(f"--owner {args.owner!r} is not an owner identity (see `hyperpi keys list`)")
    if args.device is not None:
        devices = [load_device(args.device)]
        owners = {owner_of(devices[0], args.owner)}
    else:
        devices, owners = [], set()
        local = {i.control_feed_key: i.name for i in keys.list_identities() if i.control_feed_key}
        for device in list_devices():
            owner = local.get(device.control_key)
            if owner is not None and (args.owner is None or owner == args.owner):
                devices.append(device)
                owners.add(owner)
        if not devices:
            print("no devices provisioned from here follow an owner key on this computer")
            return 0
    with keys.open_store() as store:
        return _deliver_to(devices, store, owners, options, timeout)


def _deliver_to(
    devices: list[Device], store: Store, owners: set[str], options: netrun.NetworkOptions, timeout: float
) -> int:
    """Wait until each device holds its entries; 0 when all do, EXIT_NOT_DELIVERED otherwise."""
    controls = {}
    for owner in sorted(owners):
        core = keys.open_control_feed(store, owner)
        controls[core.key] = core
    deliveries = []
    for device in devices:
        control = controls[device.control_key]
        d = Delivery(device, control, needed_length(control, device), held_length(device))
        if d.done:
            print(f"{device.name} already has every entry")
        else:
            deliveries.append(d)
    if not deliveries:
        return 0
    interrupted = False
    if timeout > 0:
        netrun.setup_logging(options.verbose)
        interrupted = deliver(deliveries, store, options, timeout)
    late = [d.device.name for d in deliveries if not d.done]
    for d in deliveries:
        if d.done:
            print(f"delivered: {d.device.name} has every entry meant for it")
    if not late:
        return 0
    names = ", ".join(late)
    if interrupted:
        waited = "did not get its entries before the interruption"
    elif timeout > 0:
        waited = f"did not get its entries within {timeout:g} s"
    else:
        waited = "was not contacted (--timeout 0)"
    print(
        f"hyperpi: {names} {waited}; they are kept and will be delivered by "
        f"`hyperpi pair sync` or the next pair command while {'it is' if len(late) == 1 else 'they are'} reachable",
        file=sys.stderr,
    )
    return 130 if interrupted else EXIT_NOT_DELIVERED
