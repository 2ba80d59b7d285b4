"""`hyperpi devices`: list the hyperpi peers announcing themselves on the LAN with mDNS.

Browses `_hypercore._tcp.local.` for a few seconds (publishing nothing) and prints one line
per peer: instance name, address:port, and how many topics (discovery keys) it serves.
"""

from __future__ import annotations

import argparse
import asyncio

from hyperpi.net.discovery import Discovery, Peer

DEFAULT_TIMEOUT = 2.0  # s; mDNS answers arrive within ~120 ms, resolving takes one more round
MAX_TIMEOUT = 60.0  # s; a longer wait finds nothing more, peers answer the first query


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "devices",
        help="list hyperpi peers seen on the LAN (mDNS)",
        description="Browse the LAN with mDNS for hyperpi peers and list them: instance name, "
        "address:port, number of topics. Networks that block multicast show nothing here; "
        "use --peer HOST:PORT with chat commands there.",
    )
    parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="S",
        help=f"seconds to listen (default {DEFAULT_TIMEOUT:g})",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from hyperpi_host.cli import UserError

    if not 0 < args.timeout <= MAX_TIMEOUT:
        raise UserError(f"--timeout must be between 0 and {MAX_TIMEOUT:g} seconds, got {args.timeout:g}")
    peers = asyncio.run(browse(args.timeout))
    if not peers:
        print(f"no hyperpi devices seen on the LAN in {args.timeout:g} s")
        return 0
    width = max(len(peer.name) for peer in peers)
    for peer in peers:
        addresses = ", ".join(f"{host}:{port}" for host, port in peer.endpoints()) or f"?:{peer.port}"
        print(f"{peer.name:<{width}}  {addresses}  {len(peer.topics)}")
    return 0


async def browse(seconds: float) -> list[Peer]:
    """Every peer resolved within `seconds` of listening."""
    discovery = Discovery(port=None)
    await discovery.start()
    try:
        await asyncio.sleep(seconds)
        return discovery.peers()
    finally:
        await discovery.stop()
