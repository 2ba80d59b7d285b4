"""The device's network: its cores replicated with every peer the swarm finds.

`hyperpi.device.main` runs `run(service, config, noise_keypair, stop)` next to the service.
It shares the service's cores (own feed, owner control feed, followed feeds) in one `CoreSet`,
joins each core's discovery key on a `Swarm` (mDNS and the config's static peers), and keeps
both in step when a follow or unfollow from the control feed changes the list. It tells the
service how many peers are connected (the status line) and how much of each feed every peer
holds (the delivery ticks). Cancelled or stopped, it says goodbye on mDNS and closes every
connection; the store is closed by main afterwards (each append is already its own commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Coroutine
from typing import Any

from hyperpi.hypercore import Core, KeyPair
from hyperpi.net.discovery import local_ipv4_addresses
from hyperpi.net.replication import CoreSet, replicate
from hyperpi.net.stream import EncryptedConnection
from hyperpi.net.swarm import Swarm

from .config import DeviceConfig
from .service import DeviceService

log = logging.getLogger("hyperpi.device")

# How often to look at the interfaces for the status line's "no network". Listing addresses
# costs microseconds; 5 s matches discovery's own address check (a Pi often starts before
# DHCP answers), so the status changes about when mDNS starts working.
NETWORK_CHECK_INTERVAL = 5.0
# Wait before trying again when the swarm cannot start (the port is still held by a previous
# run, or no interface is up yet): short enough to come up soon after the cause is gone.
START_RETRY_SECONDS = 5.0


class DeviceNetwork:
    """The service's cores on a swarm; `run` drives it. Public so tests can look inside."""

    def __init__(self, service: DeviceService, config: DeviceConfig, noise_keypair: KeyPair) -> None:
        self.service = service
        self.config = config
        self.keypair = noise_keypair
        self.cores = CoreSet(service.store, service.cores())
        self.swarm: Swarm | None = None
        self._peers: Counter[bytes] = Counter()  # remote Noise key -> live connections to it
        self._tasks: set[asyncio.Task[None]] = set()
        self._status = ""

    # -- cores and topics ---------------------------------------------------------------
    def sync_cores(self) -> None:
        """Make the CoreSet and the swarm's topics match `service.cores()` (after a follow or
        an unfollow). Running sessions open or close a channel for the changed core at once."""
        wanted: dict[bytes, Core] = {core.discovery_key: core for core in self.service.cores()}
        for core in list(self.cores):
            if core.discovery_key not in wanted:
                self.cores.remove(core)
                if self.swarm is not None:
                    self._spawn(self.swarm.leave(core.discovery_key))
        for discovery_key, core in wanted.items():
            if self.cores.get(discovery_key) is None:
                self.cores.add(core)
                if self.swarm is not None:
                    self._spawn(self.swarm.join(discovery_key))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connections --------------------------------------------------------------------
    async def serve(self, conn: EncryptedConnection) -> None:
        """The swarm's handler for one connection: replicate every shared core over it."""
        peer = conn.remote_public_key
        assert peer is not None

        def progress(core: Core, length: int) -> None:
            self.service.on_peer_lengths(peer, {core.key: length})

        self._peers[peer] += 1
        self.update_status()
        try:
            await replicate(conn, self.cores, on_progress=progress, on_remote_head=self.service.on_remote_head)
        finally:
            self._peers[peer] -= 1
            if self._peers[peer] <= 0:
                del self._peers[peer]
            self.update_status()

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    def update_status(self) -> None:
        # A peer connected proves a network, also one on loopback (the simulation's demo).
        up = self.peer_count > 0 or bool(local_ipv4_addresses())
        self.service.set_network(up, self.peer_count)
        status = self.service.app.status()
        if status != self._status:  # the status line's network part, in the journal too
            self._status = status
            log.info("network status: %s", status)

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the swarm with every core's topic; raises what the swarm raised."""
        swarm = Swarm(
            self.keypair,
            self.config.listen_port,
            host=self.config.listen_host,
            name=self.config.name,
            mdns=self.config.mdns,
            peers=self.config.peers,
            on_connection=self.serve,
        )
        for core in self.cores:
            await swarm.join(core.discovery_key)  # before start: in the first mDNS announcement
        try:
            await swarm.start()
        except BaseException:
            await swarm.stop()
            raise
        self.swarm = swarm
        log.info(
            "replicating %d feeds on %s:%d%s%s",
            len(self.cores),
            self.config.listen_host,
            swarm.port,
            ", mDNS" if self.config.mdns else "",
            f", peers {', '.join(f'{h}:{p}' for h, p in self.config.peers)}" if self.config.peers else "",
        )

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.swarm is not None:
            await self.swarm.stop()  # mDNS goodbye, every connection closed
            self.swarm = None


async def run(service: DeviceService, config: DeviceConfig, noise_keypair: KeyPair, stop: asyncio.Event) -> None:
    """Replicate the service's cores until `stop` is set or this task is cancelled."""
    network = DeviceNetwork(service, config, noise_keypair)
    service.on_cores_changed = network.sync_cores
    try:
        while network.swarm is None and not stop.is_set():
            try:
                await network.start()
            except Exception as e:  # noqa: BLE001 - the chat screen keeps working offline
                log.error("network not started (retrying in %.0f s): %s", START_RETRY_SECONDS, e)
                network.update_status()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), START_RETRY_SECONDS)
        while not stop.is_set():
            network.update_status()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), NETWORK_CHECK_INTERVAL)
    finally:
        service.on_cores_changed = None
        # Shielded: main cancels this task on SIGTERM, and the goodbye must still go out.
        await asyncio.shield(network.stop())
        log.info("network stopped")
