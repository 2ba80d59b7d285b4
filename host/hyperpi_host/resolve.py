"""What a user types where a key is expected, turned into a key: one resolver for every command.

People are the identities of `hyperpi keys` (the owner among them); devices are the records
`hyperpi provision` keeps. Either's name stands for its feed key, as does the key itself in
z-base-32, hex or a `HYPERPI:` QR payload. Once a command has checked all its arguments it says
each resolution on stderr (`say`: what the text was taken for, and the key), so a typo that
happens to be a valid key is seen at once; a key that belongs to a known person or device is
named too. (Said after the checks, so a refused command prints only its one error line.)
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from hyperpi.hypercore.keys import parse_key, z32_encode

from . import devices, keys
from .cli import UserError

PERSON = "person"
DEVICE = "device"
OWNER = "owner"  # a person's control feed, for `provision --owner`


@dataclass(frozen=True)
class Resolved:
    key: bytes
    kind: str | None  # PERSON, DEVICE, or None: a key no one here is known by
    name: str | None

    def describe(self) -> str:
        feed = "control feed" if self.kind == OWNER else "feed key"
        if self.name is None:
            nobody = "owner" if self.kind == OWNER else "person or device"
            return f"{feed} {z32_encode(self.key)} (of no {nobody} known here)"
        return f"{self.kind} {self.name}, {feed} {z32_encode(self.key)}"


def say(what: str, found: Resolved) -> None:
    """Tell the user what their text was taken for (stderr: stdout stays the command's output)."""
    print(f"{what}: {found.describe()}", file=sys.stderr)


def _known_as(text: str) -> str | None:
    """PERSON or DEVICE if `text` names one; UserError if it names both."""
    person = keys.is_stored(text)
    device = devices.is_recorded(text)
    if person and device:
        raise UserError(
            f"{text!r} is both a person (`hyperpi keys list`) and a device (`hyperpi devices`); "
            f"give the key instead, or remove the person with `hyperpi keys rm {text}`"
        )
    return PERSON if person else DEVICE if device else None


def _owner_of_key(key: bytes) -> Resolved:
    for identity in keys.list_identities():
        if identity.feed_key == key:
            return Resolved(key, PERSON, identity.name)
    for device in devices.list_devices():
        if device.feed_key == key:
            return Resolved(key, DEVICE, device.name)
    return Resolved(key, None, None)


def feed(text: str, what: str = "key") -> Resolved:
    """The feed key `text` stands for: a person's or device's name, or key text; UserError
    (naming `what`) if it is neither."""
    text = text.strip()
    kind = _known_as(text)
    if kind == PERSON:
        found = Resolved(keys.load_identity(text).feed_key, PERSON, text)
    elif kind == DEVICE:
        found = Resolved(devices.load_device(text).feed_key, DEVICE, text)
    else:
        key = _key_text(text, what, "no person or device", "`hyperpi keys list` and `hyperpi devices --no-mdns`")
        found = _owner_of_key(key)
    return found


def _key_text(text: str, what: str, nobody: str, where_to_look: str) -> bytes:
    """`text` as a key; a UserError that says whether it looked like a name nobody has, or a bad key."""
    try:
        return parse_key(text)
    except ValueError as error:
        if keys.NAME_PATTERN.fullmatch(text):
            raise UserError(
                f"{what}: {nobody} is named {text!r} (see {where_to_look}), and it is not a key either"
            ) from None
        raise UserError(f"{what}: bad key {text[:60]!r}: {error}") from None


def owner_control_feed(text: str, what: str = "--owner") -> Resolved:
    """The control feed key an owner name stands for, or a control feed key given as text."""
    text = text.strip()
    kind = _known_as(text)
    if kind == DEVICE:
        raise UserError(f"{what}: {text!r} is a device; give an owner (`hyperpi keys new --owner NAME`)")
    if kind == PERSON:
        identity = keys.load_identity(text)
        if identity.control_feed_key is None:
            raise UserError(f"{what}: {text!r} is not an owner; create one with `hyperpi keys new --owner NAME`")
        return Resolved(identity.control_feed_key, OWNER, text)
    key = _key_text(text, what, "no owner", "`hyperpi keys list`")
    for identity in keys.list_identities():
        if identity.feed_key == key:
            raise UserError(f"{what}: that is the chat feed of {identity.name}; give the name {identity.name} instead")
        if identity.control_feed_key == key:
            return Resolved(key, OWNER, identity.name)
    return Resolved(key, OWNER, None)
