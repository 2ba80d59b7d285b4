"""LAN discovery: find hyperpi peers by topic (discovery key) with mDNS / DNS-SD.

Each peer publishes one DNS-SD instance of type `_hypercore._tcp.local.`. Its SRV record
carries the replication port, its A records the peer's IPv4 addresses, and its TXT record
the topics it serves: keys `t0`, `t1`, ... each holding one raw 32-byte discovery key.
Only discovery keys are published (a discovery key is a hash of a feed key, so a listener
on the LAN learns which feeds a peer serves only if it already knows them). Joining or
leaving a topic rewrites the TXT record in place (`async_update_service`); shutdown sends
goodbye packets.

Browsing turns every other instance into a `Peer`; `candidates(topic)` lists the
(host, port) pairs to dial for a topic and `on_candidate(topic, host, port)` fires when a
new one appears. mDNS is only a hint: records stay cached long after a peer lost power,
so liveness is the business of the TCP connections made by the swarm, not of this module.

    discovery = Discovery(port=49737, name=instance_name("kitchen", noise_public_key),
                          on_candidate=lambda topic, host, port: ...)
    await discovery.start()
    await discovery.announce({discovery_key})
    discovery.candidates(discovery_key)   # [("10.0.0.7", 49737), ...]
    await discovery.stop()

`Discovery(port=None)` only browses and publishes nothing (used by `hyperpi devices`).
Only IPv4 is used: every Pi network has it, and IPv6 link-local addresses would need
scope ids carried through the swarm's dialling for no gain on a LAN.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import ifaddr

if TYPE_CHECKING:
    from zeroconf import InterfaceChoice, ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf
# zeroconf itself is imported by the methods that use it: ~3 MB of RSS a device with mDNS off
# (static peers only) does not need to carry (the device service's budget is 40 MB).

log = logging.getLogger(__name__)

SERVICE_TYPE = "_hypercore._tcp.local."
TOPIC_SIZE = 32  # a Hypercore discovery key is a 32-byte BLAKE2b hash
# Topics per TXT record. Each entry is 1 length byte + "tNN=" + 32 bytes (<= 37 bytes);
# RFC 6763 section 6.2 asks TXT records to stay under 1300 bytes so the whole answer
# fits one Ethernet frame: 32 topics is 1,184 bytes. A device follows a handful of feeds.
MAX_TOPICS = 32
# How long to wait for a newly seen instance's SRV/TXT/A records. Answers arrive within
# ~120 ms on a LAN (RFC 6762 response delay); 3 s covers lost packets and busy Pis.
RESOLVE_TIMEOUT_MS = 3000
# How often to look for changed IPv4 addresses. A Pi's service often starts before DHCP has
# given wlan0 an address; within this many seconds of getting one, mDNS runs on it and our
# record carries it. Listing addresses (getifaddrs) costs microseconds.
ADDRESS_CHECK_INTERVAL = 5.0
# Device-name part of an instance name. DNS labels are at most 63 bytes; the rest is
# the "-" + 8-hex-digit key hash that keeps two devices called "kitchen" apart.
MAX_DEVICE_NAME = 40

CandidateCallback = Callable[[bytes, str, int], None]


class DiscoveryError(Exception):
    """A topic set that cannot be published (wrong size, too many)."""


@dataclass(frozen=True)
class Peer:
    """Another hyperpi instance seen on the LAN."""

    name: str  # instance name without the service type, e.g. "kitchen-1a2b3c4d"
    addresses: tuple[str, ...]  # IPv4 addresses, as text
    port: int
    topics: frozenset[bytes]

    def endpoints(self) -> list[tuple[str, int]]:
        return [(address, self.port) for address in self.addresses]


def instance_name(device: str, static_public_key: bytes) -> str:
    """A stable instance name: the device name plus a short hash of the Noise static key.

    The same device keeps its name across restarts (so caches on other peers are updated
    in place, not duplicated), and two devices with the same name still differ.
    """
    cleaned = re.sub(r"[^A-Za-z0-9-]+", "-", device).strip("-")[:MAX_DEVICE_NAME] or "hyperpi"
    digest = hashlib.blake2b(static_public_key, digest_size=4).hexdigest()
    return f"{cleaned}-{digest}"


def encode_topics(topics: Iterable[bytes]) -> dict[bytes, bytes]:
    """TXT properties `t0..tN` for a set of discovery keys (sorted, so the record is stable)."""
    ordered = sorted(set(topics))
    for topic in ordered:
        if len(topic) != TOPIC_SIZE:
            raise DiscoveryError(f"a topic is a {TOPIC_SIZE}-byte discovery key, got {len(topic)} bytes")
    if len(ordered) > MAX_TOPICS:
        raise DiscoveryError(f"at most {MAX_TOPICS} topics fit one mDNS record, got {len(ordered)}")
    return {f"t{index}".encode(): topic for index, topic in enumerate(ordered)}


def decode_topics(properties: Mapping[bytes, bytes | None]) -> frozenset[bytes]:
    """The discovery keys in a peer's TXT properties; anything malformed is ignored."""
    topics = set()
    for key, value in properties.items():
        if re.fullmatch(rb"t[0-9]{1,3}", key) and value is not None and len(value) == TOPIC_SIZE:
            topics.add(value)
    return frozenset(topics)


def ipv4_interfaces() -> list[tuple[str, str]]:
    """(interface, address) for each IPv4 address of this machine, loopback excluded."""
    return [
        (adapter.nice_name, str(ip.ip))
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if ip.is_IPv4 and not str(ip.ip).startswith("127.")
    ]


IFF_UP, IFF_MULTICAST = 0x1, 0x1000  # <linux/if.h>


def multicast_interfaces(sys_class_net: Path = Path("/sys/class/net")) -> list[tuple[str, str]]:
    """The `ipv4_interfaces` mDNS can use: up and multicast-capable (Linux's interface flags; where
    they cannot be read, an interface counts as capable)."""
    usable = []
    for name, address in ipv4_interfaces():
        try:
            flags = int((sys_class_net / name / "flags").read_text(), 16)
        except (OSError, ValueError):
            flags = IFF_UP | IFF_MULTICAST
        if flags & IFF_UP and flags & IFF_MULTICAST:
            usable.append((name, address))
    return usable


def local_ipv4_addresses() -> list[str]:
    """This machine's IPv4 addresses, loopback excluded (what other peers can dial)."""
    return sorted({address for _, address in ipv4_interfaces()})


class Discovery:
    """Publishes our topics and browses everyone else's, on python-zeroconf's asyncio API.

    `port` is the TCP port peers should dial (None: browse only, publish nothing).
    `name` is our instance name (see `instance_name`). `interfaces` restricts mDNS to
    some interface addresses (default None: all). `on_candidate(topic, host, port)` is called
    in the event loop each time a peer starts offering a topic, or moves address/port.
    """

    def __init__(
        self,
        port: int | None,
        name: str | None = None,
        *,
        interfaces: InterfaceChoice | list[str] | None = None,
        on_candidate: CandidateCallback | None = None,
    ) -> None:
        if port is not None and name is None:
            raise ValueError("a published Discovery needs an instance name")
        self.port = port
        self.name = name
        self.on_candidate = on_candidate
        self._interfaces = interfaces
        self._topics: frozenset[bytes] = frozenset()
        self._peers: dict[str, Peer] = {}  # keyed by full service name, lower case
        self._generation: dict[str, int] = {}  # newest resolve per name wins
        self._tasks: set[asyncio.Task[None]] = set()
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._lock = asyncio.Lock()  # serialises register / update / unregister
        self._watcher: asyncio.Task[None] | None = None
        # Our mDNS host name, fixed at creation so a renamed instance keeps the same host.
        self._server = f"hyperpi-{hashlib.blake2b((name or '').encode(), digest_size=6).hexdigest()}.local."

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start browsing, then register our instance (returns once it is announced)."""
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        interfaces = InterfaceChoice.All if self._interfaces is None else self._interfaces
        every_interface = interfaces is InterfaceChoice.All
        self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        # Browse first: existing peers answer our query while we are still probing our name.
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE, handlers=[self._on_service_state_change])
        if self.port is not None:
            async with self._lock:
                self._info = self._service_info()
                # allow_name_change: if another process holds our name we still come up
                # (as "name (2)"); stable names make that rare.
                await (await self._zc.async_register_service(self._info, allow_name_change=True))
                self.name = self._info.name[: -len(SERVICE_TYPE) - 1]
        if every_interface:
            self._watcher = asyncio.get_running_loop().create_task(self._watch_addresses())

    async def stop(self) -> None:
        """Send goodbyes for our instance and stop browsing. Safe to call twice."""
        zc, self._zc = self._zc, None
        if zc is None:
            return
        for task in [*self._tasks, *([self._watcher] if self._watcher else [])]:
            task.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        async with self._lock:
            await zc.async_close()  # unregisters everything: goodbye packets, TTL 0
            self._info = None

    async def announce(self, topics: Iterable[bytes]) -> None:
        """Publish exactly these topics (replacing the previous set), updating in place."""
        encoded = encode_topics(topics)  # validates before anything changes
        self._topics = frozenset(encoded.values())
        if self._zc is None or self.port is None:
            return  # published by start()
        async with self._lock:
            if self._info is None or self._zc is None:
                return
            self._info = self._service_info(self._info.name)
            await (await self._zc.async_update_service(self._info))

    async def _watch_addresses(self) -> None:
        """Follow address changes: bind mDNS to new interfaces, republish our A records."""
        published = local_ipv4_addresses()
        while self._zc is not None:
            await asyncio.sleep(ADDRESS_CHECK_INTERVAL)
            current = local_ipv4_addresses()
            if current == published or self._zc is None:
                continue
            log.info("IPv4 addresses changed from %s to %s", published, current)
            published = current
            try:
                await self._zc.async_update_interfaces()
                async with self._lock:
                    if self._info is not None and self._zc is not None:
                        self._info = self._service_info(self._info.name)
                        await (await self._zc.async_update_service(self._info))
            except Exception:  # an interface vanishing mid-update; the next check retries
                log.exception("could not follow the address change")
                published = []

    # -- what we have seen -----------------------------------------------------------

    @property
    def topics(self) -> frozenset[bytes]:
        return self._topics

    def peers(self) -> list[Peer]:
        """Every other instance seen and resolved, sorted by name."""
        return sorted(self._peers.values(), key=lambda peer: peer.name)

    def candidates(self, topic: bytes) -> list[tuple[str, int]]:
        """(host, port) pairs of the peers that announce `topic`."""
        return [endpoint for peer in self.peers() if topic in peer.topics for endpoint in peer.endpoints()]

    # -- internals -------------------------------------------------------------------

    def _service_info(self, full_name: str | None = None) -> AsyncServiceInfo:
        from zeroconf.asyncio import AsyncServiceInfo

        assert self.name is not None and self.port is not None
        full_name = full_name or f"{self.name}.{SERVICE_TYPE}"
        if isinstance(self._interfaces, list):
            addresses = sorted(self._interfaces)
        else:
            addresses = local_ipv4_addresses()
        return AsyncServiceInfo(
            SERVICE_TYPE,
            full_name,
            port=self.port,
            properties=encode_topics(self._topics),
            server=self._server,
            parsed_addresses=addresses,
        )

    def _is_own(self, name: str) -> bool:
        return self._info is not None and name.lower() == self._info.name.lower()

    def _on_service_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        from zeroconf import ServiceStateChange

        if self._is_own(name):
            return
        key = name.lower()
        generation = self._generation.get(key, 0) + 1
        self._generation[key] = generation
        if state_change is ServiceStateChange.Removed:
            self._peers.pop(key, None)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(name, key, generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str, key: str, generation: int) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo

        if self._zc is None:
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        found = await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS)
        if not found or self._generation.get(key) != generation or info.port is None:
            if not found:
                log.debug("could not resolve %s", name)
            return
        peer = Peer(
            name=name[: -len(SERVICE_TYPE) - 1],
            addresses=tuple(sorted(info.parsed_addresses(IPVersion.V4Only))),
            port=info.port,
            topics=decode_topics(info.properties),
        )
        old = self._peers.get(key)
        self._peers[key] = peer
        if self.on_candidate is None:
            return
        for topic in sorted(peer.topics):
            for host, port in peer.endpoints():
                if old is None or topic not in old.topics or (host, port) not in old.endpoints():
                    try:
                        self.on_candidate(topic, host, port)
                    except Exception:  # a buggy callback must not stop discovery
                        log.exception("on_candidate callback failed")
