"""`HOST:PORT` text, as the device config, `hyperpi provision --peer`, and `--peer`/`--listen`
of the host commands take it: one parser, one kind of error message."""

from __future__ import annotations

Address = tuple[str, int]

DEFAULT_PORT = 49737  # the device's fixed replication port: fixed so a static peer list stays valid
MAX_HOST_CHARS = 253  # the longest DNS name; an IP address is shorter


def parse_address(text: str, *, any_port: bool = False) -> Address:
    """`HOST:PORT` (or `[IPv6]:PORT`) as a (host, port) pair. With `any_port`, port 0 (any free
    port, for listening) is allowed. ValueError, one line, says what is wrong."""
    example = f"for example 192.168.1.23:{DEFAULT_PORT}"
    shown = repr(text[: MAX_HOST_CHARS + 8])
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]") if host.startswith("[") else host
    if not sep:
        raise ValueError(f"{shown} is not HOST:PORT: no port ({example})")
    if not host:
        raise ValueError(f"{shown} is not HOST:PORT: no host ({example})")
    if len(host) > MAX_HOST_CHARS or not host.isprintable() or any(c.isspace() for c in host):
        raise ValueError(f"{shown} is not HOST:PORT: the host is not a name or address ({example})")
    lowest = 0 if any_port else 1
    # isascii: str.isdigit also accepts digits int() refuses (superscripts) and other scripts' digits.
    digits = port_text.isascii() and port_text.isdigit() and len(port_text) <= 5
    if not digits or not lowest <= int(port_text) <= 65535:
        raise ValueError(f"{shown} is not HOST:PORT: the port must be a number from {lowest} to 65535 ({example})")
    return host, int(port_text)
