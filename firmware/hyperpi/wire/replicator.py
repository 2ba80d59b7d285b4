"""The `hypercore/alpha` replicator: many cores over one connection, sans-IO.

One `Replicator` per encrypted connection. It owns the connection's protomux, opens one
channel per shared core (id = discovery key, handshake = capability), and runs Node
hypercore 11's exchange on each (protocol doc 7.3):

- on open: check the remote capability, send `sync` and `range`;
- as a reader: when the remote's `sync` shows a longer log, ask for an `upgrade` (with the
  manifest on first contact), then download every block, many requests in flight;
- as a server: queue each `request` and answer it with the core's proof (`data`) or `noData`
  in `frames_to_send`, at most REPLY_BATCH per call (so one flood of requests cannot hold the
  event loop), refusing a peer with more than MAX_REMOTE_REQUESTS unanswered; answer `want`
  with `range`, echo the remote's length in `sync.remoteLength` so Node keeps upgrading;
- live: after a local append or a verified upgrade, send `sync` + `range` on every channel.

    rep = Replicator(conn.is_initiator, conn.handshake_hash, lookup=cores.get)
    rep.add_core(core)
    for plaintext in incoming: rep.receive(plaintext)      # raises ReplicationError
    rep.core_changed(core)                                 # after local appends/downloads
    for frame in rep.frames_to_send(): send(frame)     # again while rep.replies_pending
    for event in rep.take_events(): ...                    # PeerProgress(core, length)

It performs no I/O: the core is sans-IO too, and `receive` applies verified proofs to it.
A broken or hostile peer makes `receive` raise `ReplicationError` with a one-line reason;
the adapter then closes the connection. Nothing unverified is ever stored. A proof that does
not verify against what we hold (the remote holds another version of the feed: a fork, or
it lies) closes only that core's channel for this connection, reported as a `FeedRefused`
event; the other cores keep replicating.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from hyperpi.hypercore import Core, ProofUnavailable, VerificationError
from hyperpi.hypercore.errors import INVALID_REQUEST, NOT_AVAILABLE, CorruptStore
from hyperpi.hypercore.types import BlockRequest, Proof, ProofRequest, UpgradeRequest

from .errors import DecodeError, WireError
from .messages import (
    PROTOCOL,
    Bitfield,
    Cancel,
    Data,
    Extension,
    Handshake,
    NoData,
    Range,
    Request,
    Sync,
    Unwant,
    Want,
    capability,
    decode_message,
)
from .protomux import (
    Channel,
    ChannelClosed,
    ChannelMessage,
    ChannelOpened,
    ChannelRejected,
    Event,
    OpenRequested,
    Protomux,
)

log = logging.getLogger(__name__)

# Block requests sent per batch frame. The server answers a frame's requests as one frame
# too, so small batches keep both peers busy at once; one batch of MAX_INFLIGHT would make
# them take turns, each idle while the other works through 512 messages.
REQUEST_BATCH = 32
# Block requests in flight per channel. Each costs the server one proof; enough of them hide
# the round trip on a LAN (a 100,000-block feed syncs in a few seconds), few enough that a
# reply burst stays well under a megabyte. (Node's replicator caps a peer at 512 too.)
MAX_INFLIGHT = 512
# Block ranges we remember a peer announcing besides its contiguous prefix. Chat feeds are
# contiguous; a peer announcing thousands of scattered ranges gets the rest ignored.
MAX_REMOTE_RANGES = 1024
# Node announces wants in batches of this many blocks (lib/wants.js, compat mode).
WANT_BATCH = 2_097_152
# Bytes of block values held unverified while the proof of their anchor node is on the way
# (answers that overtook an earlier one). Uncapped, a peer answering out of order could make
# us hold MAX_INFLIGHT frames of up to 16 MiB each; past the cap the answer is dropped and the
# block asked for again. Honest peers answer in order and park little.
MAX_PARKED_BYTES = 4 * 1024 * 1024
# Requests from the remote we hold unanswered per channel. A Node peer keeps at most 512 in
# flight per core (DEFAULT_MAX_INFLIGHT in hypercore's lib/replicator.js) and so does ours
# (MAX_INFLIGHT); a remote past twice that is flooding us and is disconnected.
MAX_REMOTE_REQUESTS = 2 * MAX_INFLIGHT
# Requests answered per `frames_to_send` call. A proof takes ~60 us on a laptop and a few
# times that on a Pi; the adapter lets every other peer run between two batches, so with 50
# busy peers an honest one still waits well under a second for its turn.
REPLY_BATCH = 16


class ReplicationError(WireError):
    """The remote broke the protocol (bad capability, bad proof, ...): close the connection."""


@dataclass(frozen=True)
class PeerProgress:
    """The remote holds blocks [0, length) of `core` (from its `range`/`sync` announcements)."""

    core: Core
    length: int


@dataclass(frozen=True)
class RemoteHead:
    """The remote's `sync`: it holds a signed head of `length` blocks of `core` on `fork`."""

    core: Core
    fork: int
    length: int


@dataclass(frozen=True)
class FeedRefused:
    """The remote sent a proof for `core` that does not verify against what we hold; its
    channel is closed on this connection."""

    core: Core
    reason: str


ReplicationEvent = PeerProgress | RemoteHead | FeedRefused


@dataclass(eq=False)
class _Peer:
    """The state of one core's channel with the remote."""

    core: Core
    channel: Channel
    opened: bool = False
    # What the remote told us.
    remote_fork: int = 0
    remote_length: int = 0
    remote_has_manifest: bool = False
    remote_contiguous: int = 0
    remote_ranges: list[tuple[int, int]] = field(default_factory=list)
    # What we told the remote.
    sent_length: int = -1
    sent_has_manifest: bool = False
    sent_remote_length: int = -1
    sent_contiguous: int = 0
    # Requests we made: id -> the ProofRequest.
    inflight: dict[int, ProofRequest] = field(default_factory=dict)
    free_ids: list[int] = field(default_factory=list)
    next_id: int = 1
    upgrading: bool = False
    refused_upgrade: int = -1  # remote length whose upgrade the remote refused (noData)
    sent_want: int = -1  # start of the last `want` we sent
    # Block index -> the tree nodes its proof will deliver (counted in pending_nodes).
    blocks_inflight: dict[int, list[int]] = field(default_factory=dict)
    unavailable: set[int] = field(default_factory=set)  # blocks the remote said it lacks
    # Tree nodes that proofs still in flight will deliver (index -> how many proofs), so the
    # next request can rely on them and ask for ~1 node instead of a whole sibling path.
    pending_nodes: dict[int, int] = field(default_factory=dict)
    # Block proofs that arrived before the proof delivering the node they hang from.
    parked: list[tuple[ProofRequest, Proof]] = field(default_factory=list)
    requests: deque[bytes] = field(default_factory=deque)  # the remote's, encoded, not answered yet
    cursor: int = 0  # blocks below this were held or requested

    def remote_has(self, index: int) -> bool:
        if index < self.remote_contiguous:
            return True
        return any(start <= index < end for start, end in self.remote_ranges)

    def take_id(self) -> int:
        if self.free_ids:
            return self.free_ids.pop()
        self.next_id += 1
        return self.next_id - 1


class Replicator:
    """Replicates cores over one connection; see the module docstring."""

    def __init__(
        self,
        is_initiator: bool,
        handshake_hash: bytes,
        *,
        lookup: Callable[[bytes], Core | None] = lambda discovery_key: None,
        cores: Iterable[Core] = (),
    ) -> None:
        self.is_initiator = is_initiator
        self.handshake_hash = handshake_hash
        self.lookup = lookup  # discovery key -> a core we are willing to share, or None
        self.mux = Protomux()
        self.mux.pair(PROTOCOL)  # remote opens for any discovery key reach us as OpenRequested
        self._peers: dict[Channel, _Peer] = {}
        self._by_key: dict[bytes, _Peer] = {}
        self._events: list[ReplicationEvent] = []
        self._heads: dict[bytes, RemoteHead] = {}  # the remote's last sync per core, until taken
        self._refused: set[bytes] = set()  # discovery keys whose channel we closed on a bad proof
        # Peers whose announcements and block requests are due. They are made once per
        # burst of received messages, in frames_to_send(), not once per message.
        self._dirty: set[_Peer] = set()
        self._waiting: dict[_Peer, None] = {}  # peers with requests to answer, in arrival order
        for core in cores:
            self.add_core(core)

    # --- the adapter's side ---------------------------------------------------------------

    def add_core(self, core: Core) -> None:
        """Offer a core on this connection (opens its channel)."""
        if core.discovery_key not in self._by_key:
            self._open(core)

    def remove_core(self, core: Core) -> None:
        peer = self._by_key.pop(core.discovery_key, None)
        if peer is not None:
            self._peers.pop(peer.channel, None)
            self.mux.close(peer.channel)

    def receive(self, plaintext: bytes) -> None:
        """Handle one decrypted message. Raises ReplicationError (or another WireError)."""
        self._handle(self.mux.receive(plaintext))

    def receive_many(self, plaintexts: Iterable[bytes]) -> None:
        """Handle a burst of messages. The replies to each one go out as one batch frame (as
        Node corks its replies), which saves a frame and an encryption per reply."""
        for plaintext in plaintexts:
            with self.mux.batch():
                self._handle(self.mux.receive(plaintext))

    def core_changed(self, core: Core) -> None:
        """Tell the remote about a new length or new blocks of `core` (after an append or a
        download) and request what is now requestable."""
        peer = self._by_key.get(core.discovery_key)
        if peer is not None and peer.opened:
            self._dirty.add(peer)

    def frames_to_send(self) -> list[bytes]:
        """What to send now, one secret-stream message each: announcements, our requests and
        answers to up to REPLY_BATCH of the remote's. Call again while `replies_pending`."""
        dirty, self._dirty = self._dirty, set()
        for peer in dirty:
            if peer.opened and not peer.channel.closed:
                self._announce(peer)
                self._request_more(peer)
        budget = REPLY_BATCH
        with self.mux.batch():  # as Node corks its replies: one frame, one encryption
            while budget > 0 and self._waiting:
                for peer in list(self._waiting):  # round robin over the channels
                    if peer.requests and not peer.channel.closed:
                        self._answer(peer, peer.requests.popleft())
                        budget -= 1
                    if not peer.requests or peer.channel.closed:
                        peer.requests.clear()
                        del self._waiting[peer]
                    if budget == 0:
                        break
        return self.mux.frames_to_send()

    @property
    def replies_pending(self) -> bool:
        """Some of the remote's requests are not answered yet (call `frames_to_send` again)."""
        return bool(self._waiting)

    @property
    def sharing(self) -> bool:
        """A channel is open for a core both sides hold the key of (capability checked)."""
        return any(peer.opened for peer in self._peers.values())

    @property
    def held_bytes(self) -> int:
        """Bytes held for the remote: parked answers and frames not taken yet (an estimate)."""
        parked = sum(len(p.block.value) for peer in self._peers.values() for _, p in peer.parked if p.block)
        return parked + self.mux.queued_bytes

    def take_events(self) -> list[ReplicationEvent]:
        events, self._events = self._events, []
        heads, self._heads = list(self._heads.values()), {}  # one per core: a sync flood adds nothing
        return [*events, *heads]

    def remote_length(self, core: Core) -> int:
        """How many blocks of `core` the remote holds contiguously, as far as we know."""
        peer = self._by_key.get(core.discovery_key)
        return peer.remote_contiguous if peer else 0

    # --- channels ------------------------------------------------------------------------

    def _open(self, core: Core) -> _Peer:
        handshake = Handshake(capability(self.handshake_hash, core.key, self.is_initiator))
        channel = self.mux.open(PROTOCOL, core.discovery_key, handshake.encode())
        peer = _Peer(core, channel)
        self._peers[channel] = peer
        self._by_key[core.discovery_key] = peer
        self._handle(self.mux.next_events())  # the remote's open may have arrived first
        return peer

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, ChannelMessage):
                peer = self._peers.get(event.channel)
                if peer is not None and peer.opened:
                    self._on_message(peer, event.type, event.payload)
            elif isinstance(event, ChannelOpened):
                peer = self._peers.get(event.channel)
                if peer is not None:
                    self._on_open(peer, event.handshake)
            elif isinstance(event, OpenRequested):
                core = self.lookup(event.id) if event.id and event.protocol == PROTOCOL else None
                if core is None or core.discovery_key in self._by_key or event.id in self._refused:
                    self.mux.reject(event)
                else:
                    self._open(core)
            elif isinstance(event, (ChannelClosed, ChannelRejected)):
                peer = self._peers.pop(event.channel, None)
                if peer is not None:
                    self._by_key.pop(peer.core.discovery_key, None)

    def _on_open(self, peer: _Peer, payload: bytes) -> None:
        remote = Handshake.decode(payload)
        expected = capability(self.handshake_hash, peer.core.key, not self.is_initiator)
        if remote.capability != expected:
            # As Node: a peer that cannot prove it knows the key is not talked to at all.
            raise ReplicationError(f"remote sent a wrong capability for core {peer.core.key.hex()[:16]}...")
        peer.opened = True
        with self.mux.batch():
            self._send_sync(peer)
            self._send_range(peer)

    # --- messages ------------------------------------------------------------------------

    def _on_message(self, peer: _Peer, type: int, payload: bytes) -> None:
        if type == Request.TYPE:
            # Parked undecoded, one bytes object each, and decoded when answered: a peer that asks
            # and never reads then costs ~50 bytes a request, not four objects that leave the
            # heap fragmented long after it left (tests/bench/bench_hostile.py, non-readers).
            self._on_request(peer, bytes(payload))
            return
        message = decode_message(type, payload)
        if isinstance(message, Sync):
            self._on_sync(peer, message)
        elif isinstance(message, Data):
            self._on_data(peer, message)
        elif isinstance(message, NoData):
            self._on_no_data(peer, message)
        elif isinstance(message, Want):
            if peer.core.contiguous_length:
                peer.sent_contiguous = 0  # answer with our range even if we sent it before
                self._send_range(peer)
        elif isinstance(message, Range):
            self._on_range(peer, message.start, message.length, message.drop)
        elif isinstance(message, Bitfield):
            self._on_bitfield(peer, message)
        # Cancel: we answer every request at once, so there is nothing to cancel.
        # Unwant, Extension: we announce everything and run no extensions.
        # (None: a message type newer than ours, ignored as Node does. `type` is shadowed here.)
        elif message is not None and not isinstance(message, (Cancel, Unwant, Extension)):
            raise AssertionError(f"unhandled message {message!r}")

    def _on_sync(self, peer: _Peer, sync: Sync) -> None:
        peer.remote_fork = sync.fork
        peer.remote_length = sync.length
        peer.remote_has_manifest = sync.has_manifest
        core = peer.core
        self._heads[core.discovery_key] = RemoteHead(core, sync.fork, sync.length)
        # Echo their length back (Node upgrades only once its length was acknowledged).
        if peer.sent_remote_length != self._acked_length(peer):
            self._send_sync(peer)
        if sync.length > core.length and (core.length == 0 or sync.fork == core.fork):
            self._request_upgrade(peer)
        elif core.length == 0 and core.manifest is None and sync.has_manifest:
            self._request_manifest(peer)

    def _on_request(self, peer: _Peer, payload: bytes) -> None:
        if len(peer.requests) >= MAX_REMOTE_REQUESTS:
            raise ReplicationError(
                f"remote sent over {MAX_REMOTE_REQUESTS} requests at once for core {peer.core.key.hex()[:16]}..."
            )
        peer.requests.append(payload)
        self._waiting[peer] = None

    def _answer(self, peer: _Peer, payload: bytes) -> None:
        try:
            message = Request.decode(payload)
        except DecodeError as error:
            self._refuse(peer, f"remote sent a malformed request ({error})")
            return
        req = message.proof_request
        try:
            proof = peer.core.proof(req)
        except CorruptStore:  # damage found while reading (a block is dropped and fetched again)
            self._send(peer, NoData(message.id, NOT_AVAILABLE))
            return
        except ProofUnavailable as error:
            if req.manifest and peer.core.has_manifest:
                # As Node: a missing block still gets the manifest that was asked for.
                self._send(peer, Data(message.id, Proof(req.fork, manifest=peer.core.manifest)))
            else:
                self._send(peer, NoData(message.id, error.reason))
            return
        except (ValueError, KeyError, IndexError, OverflowError):
            self._send(peer, NoData(message.id, INVALID_REQUEST))
            return
        self._send(peer, Data(message.id, proof))

    def _on_data(self, peer: _Peer, message: Data) -> None:
        req = peer.inflight.pop(message.request_id, None)
        if req is None:
            return  # not something we asked for (late or cancelled): Node drops it
        peer.free_ids.append(message.request_id)
        if req.upgrade is not None or (req.manifest and req.block is None):
            peer.upgrading = False
        if not _answers(req, message.proof):
            self._forget_block(peer, req)  # an answer to another question: drop it, ask again later
            if req.block is not None:
                peer.cursor = min(peer.cursor, req.block.index)  # (the cursor had passed it)
        elif req.block is not None and not peer.core.has_node(_anchor(req.block)):
            # Its anchor is still on the way: keep it for then, up to MAX_PARKED_BYTES.
            held = sum(len(p.block.value) for _, p in peer.parked if p.block is not None)
            if message.proof.block is not None and held + len(message.proof.block.value) <= MAX_PARKED_BYTES:
                peer.parked.append((req, message.proof))
            else:
                self._forget_block(peer, req)
                peer.cursor = min(peer.cursor, req.block.index)
        else:
            self._apply(peer, req, message.proof)
            self._apply_parked(peer)
        if not peer.inflight and peer.parked:
            # Every answer is in and some anchors never came: ask for those blocks again.
            for parked_req, _ in peer.parked:
                self._forget_block(peer, parked_req)
            peer.parked.clear()
            peer.cursor = peer.core.contiguous_length
        self._dirty.add(peer)  # announce our new length (Node waits for it) and ask for more

    def _apply(self, peer: _Peer, req: ProofRequest, proof: Proof) -> None:
        core = peer.core
        self._forget_block(peer, req)
        try:
            core.verify_and_apply(proof)
        except VerificationError as error:
            self._refuse(peer, f"remote sent an invalid proof for core {core.key.hex()[:16]}...: {error}")

    def _refuse(self, peer: _Peer, reason: str) -> None:
        """Stop replicating this core with the remote (it holds another version of it, or lies
        about it); the connection goes on for the other cores."""
        if peer.channel.closed:
            return
        self._refused.add(peer.core.discovery_key)
        self._events.append(FeedRefused(peer.core, reason))
        peer.parked.clear()
        peer.requests.clear()
        self.remove_core(peer.core)

    def _apply_parked(self, peer: _Peer) -> None:
        progress = True
        while progress and peer.parked and not peer.channel.closed:
            progress = False
            for item in list(peer.parked):
                if peer.channel.closed:
                    return  # a parked proof did not verify: the channel is closed, nothing left
                req, proof = item
                assert req.block is not None
                if peer.core.has_node(_anchor(req.block)):
                    peer.parked.remove(item)
                    self._apply(peer, req, proof)
                    progress = True

    def _forget_block(self, peer: _Peer, req: ProofRequest) -> None:
        """The block request is over (applied, refused or dropped): release its bookkeeping."""
        if req.block is None:
            return
        pending = peer.pending_nodes
        for index in peer.blocks_inflight.pop(req.block.index, ()):
            left = pending[index] - 1
            if left:
                pending[index] = left
            else:
                del pending[index]

    def _on_no_data(self, peer: _Peer, message: NoData) -> None:
        req = peer.inflight.get(message.request)
        if req is None:
            return
        self._settle(peer, message.request, req)
        if req.upgrade is not None:
            peer.refused_upgrade = peer.remote_length
        if req.block is not None:
            self._forget_block(peer, req)
            peer.unavailable.add(req.block.index)
        self._dirty.add(peer)

    def _on_range(self, peer: _Peer, start: int, length: int, drop: bool) -> None:
        end = start + length
        if drop:
            if start < peer.remote_contiguous:
                peer.remote_contiguous = start
            peer.remote_ranges = [(s, min(e, start)) for s, e in peer.remote_ranges if s < start]
        elif start <= peer.remote_contiguous:
            if end > peer.remote_contiguous:
                peer.remote_contiguous = end
                self._merge_ranges(peer)
                self._events.append(PeerProgress(peer.core, end))
        elif len(peer.remote_ranges) < MAX_REMOTE_RANGES:
            peer.remote_ranges.append((start, end))
        peer.unavailable.clear()  # new announcements: blocks refused earlier may be there now
        self._dirty.add(peer)

    def _on_bitfield(self, peer: _Peer, message: Bitfield) -> None:
        # Turn set bits into ranges (a contiguous core's bitfield is one run of ones).
        run_start = None
        index = message.start
        for word in message.bitfield:
            for bit in range(32):
                if word >> bit & 1:
                    if run_start is None:
                        run_start = index
                elif run_start is not None:
                    self._on_range(peer, run_start, index - run_start, False)
                    run_start = None
                index += 1
        if run_start is not None:
            self._on_range(peer, run_start, index - run_start, False)

    @staticmethod
    def _merge_ranges(peer: _Peer) -> None:
        # Fold scattered ranges that the grown prefix now reaches.
        grew = True
        while grew:
            grew = False
            for start, end in list(peer.remote_ranges):
                if start <= peer.remote_contiguous:
                    peer.remote_ranges.remove((start, end))
                    if end > peer.remote_contiguous:
                        peer.remote_contiguous = end
                        grew = True

    # --- requests we make ----------------------------------------------------------------

    def _request(self, peer: _Peer, req: ProofRequest, priority: int = 0) -> None:
        request_id = peer.take_id()
        peer.inflight[request_id] = req
        self._send(peer, Request(request_id, req, priority))

    def _settle(self, peer: _Peer, request_id: int, req: ProofRequest) -> None:
        del peer.inflight[request_id]
        peer.free_ids.append(request_id)
        if req.upgrade is not None or (req.manifest and req.block is None):
            peer.upgrading = False

    def _request_upgrade(self, peer: _Peer) -> None:
        core = peer.core
        if peer.upgrading or peer.refused_upgrade == peer.remote_length:
            return  # in flight, or refused for this length: wait for the remote's next sync
        peer.upgrading = True
        fork = peer.remote_fork if core.length == 0 else core.fork  # a fresh reader adopts the writer's fork
        upgrade = UpgradeRequest(core.length, peer.remote_length - core.length)
        self._request(peer, ProofRequest(fork, upgrade=upgrade, manifest=core.manifest is None))

    def _request_manifest(self, peer: _Peer) -> None:
        if not peer.upgrading:
            peer.upgrading = True
            self._request(peer, ProofRequest(peer.remote_fork, manifest=True))

    def _request_more(self, peer: _Peer) -> None:
        """Keep up to MAX_INFLIGHT block requests going for the blocks we lack."""
        core = peer.core
        if peer.remote_fork != core.fork:
            return
        if peer.remote_length > core.length:
            self._request_upgrade(peer)
        if not peer.blocks_inflight and peer.cursor > core.contiguous_length:
            peer.cursor = core.contiguous_length  # a block behind it was dropped (damaged): ask again
        peer.cursor = max(peer.cursor, core.contiguous_length)
        batched = 0
        inflight, pending, unavailable = peer.blocks_inflight, peer.pending_nodes, peer.unavailable
        length, fork = core.length, core.fork
        with self.mux.batch():
            while len(inflight) < MAX_INFLIGHT and peer.cursor < length:
                index = peer.cursor
                if index >= peer.remote_contiguous and not peer.remote_has(index):
                    break  # wait for the remote to announce it
                peer.cursor += 1
                if index in inflight or index in unavailable or core.has(index):
                    continue
                block = BlockRequest(index, core.missing_nodes(index, also_held=pending))
                delivered = inflight[index] = _delivered_nodes(block)
                for node in delivered:
                    pending[node] = pending.get(node, 0) + 1
                self._request(peer, ProofRequest(fork, block))
                batched += 1
                if batched % REQUEST_BATCH == 0:  # close this batch frame, start the next
                    self.mux.uncork()
                    self.mux.cork()
        if peer.unavailable and not peer.blocks_inflight and peer.cursor >= core.length:
            # Retry refused blocks from the start once everything else is done.
            peer.cursor = core.contiguous_length
        if peer.cursor < core.length and not peer.remote_has(peer.cursor) and not peer.blocks_inflight:
            start = peer.cursor - peer.cursor % WANT_BATCH
            if peer.sent_want != start:  # once per batch: the answer is a `range`, not a retry
                peer.sent_want = start
                self._send(peer, Want(start, WANT_BATCH))

    # --- announcements -------------------------------------------------------------------

    def _acked_length(self, peer: _Peer) -> int:
        return peer.remote_length if peer.remote_fork == peer.core.fork else 0

    def _send_sync(self, peer: _Peer) -> None:
        core = peer.core
        remote_length = self._acked_length(peer)
        same_fork = peer.remote_fork == core.fork
        can_upgrade = same_fork and (peer.remote_length == 0 or peer.remote_length < core.length)
        peer.sent_length, peer.sent_remote_length = core.length, remote_length
        peer.sent_has_manifest = core.has_manifest
        sync = Sync(
            core.fork,
            core.length,
            remote_length,
            can_upgrade=can_upgrade,
            uploading=True,
            downloading=True,  # Node closes a channel where neither side downloads
            has_manifest=core.has_manifest,
        )
        self._send(peer, sync)

    def _send_range(self, peer: _Peer) -> None:
        contiguous = peer.core.contiguous_length
        if contiguous > peer.sent_contiguous:
            peer.sent_contiguous = contiguous
            self._send(peer, Range(0, contiguous))

    def _announce(self, peer: _Peer) -> None:
        with self.mux.batch():
            if (peer.sent_length, peer.sent_has_manifest) != (peer.core.length, peer.core.has_manifest):
                self._send_sync(peer)
            self._send_range(peer)

    def _send(self, peer: _Peer, message: object) -> None:
        self.mux.send(peer.channel, message.TYPE, message.encode())  # type: ignore[attr-defined]


def _anchor(block: BlockRequest) -> int:
    """The stored node a block proof with `block.nodes` levels is checked against."""
    index = 2 * block.index
    if block.nodes:
        # The ancestor d = `nodes` levels up: clear the low d + 1 bits, then set the low d.
        d = block.nodes
        index = (index >> (d + 1) << (d + 1)) | ((1 << d) - 1)
    return index


def _delivered_nodes(block: BlockRequest) -> list[int]:
    """The nodes a reader stores from the proof for `block`: the leaf, the path's nodes below
    the anchor, and their siblings."""
    index = 2 * block.index
    nodes = [index]
    for _ in range(block.nodes):
        t = (index + 1) & ~index  # flat_tree.sibling and parent, inlined
        nodes.append(index ^ (t << 1))
        index = (index | t) & ~(t << 1)
        nodes.append(index)
    return nodes[:-1] if block.nodes else nodes


def _answers(req: ProofRequest, proof: Proof) -> bool:
    """Does `proof` carry exactly the parts `req` asked for? (Node's _matchingRequest)"""
    if (req.block is None) != (proof.block is None) or (req.upgrade is None) != (proof.upgrade is None):
        return False
    if req.block is not None and proof.block is not None and proof.block.index != req.block.index:
        return False
    if req.upgrade is not None and proof.upgrade is not None:
        if (proof.upgrade.start, proof.upgrade.length) != (req.upgrade.start, req.upgrade.length):
            return False
    return proof.hash is None and proof.seek is None


__all__ = [
    "MAX_INFLIGHT",
    "MAX_PARKED_BYTES",
    "MAX_REMOTE_REQUESTS",
    "REPLY_BATCH",
    "FeedRefused",
    "PeerProgress",
    "RemoteHead",
    "ReplicationError",
    "ReplicationEvent",
    "Replicator",
]
