"""Helpers for the wire tests: turn vectors.json's JSON (Node's field names) into our types and
our messages back into that JSON, so tests compare whole values."""

from __future__ import annotations

from typing import Any

from hyperpi.hypercore.types import (
    BlockProof,
    BlockRequest,
    HashProof,
    HashRequest,
    Proof,
    ProofRequest,
    SeekProof,
    SeekRequest,
    TreeNode,
    UpgradeProof,
    UpgradeRequest,
)
from hyperpi.wire import messages as m


def _nodes(js: list[dict]) -> list[TreeNode]:
    return [TreeNode(n["index"], n["size"], bytes.fromhex(n["hash"])) for n in js]


def _nodes_json(nodes: list[TreeNode]) -> list[dict]:
    return [{"index": n.index, "size": n.size, "hash": n.hash.hex()} for n in nodes]


def proof_request(js: dict) -> ProofRequest:
    b, h, s, u = js["block"], js["hash"], js["seek"], js["upgrade"]
    return ProofRequest(
        fork=js["fork"],
        block=BlockRequest(b["index"], b["nodes"]) if b else None,
        hash=HashRequest(h["index"], h["nodes"]) if h else None,
        seek=SeekRequest(s["bytes"], s["padding"]) if s else None,
        upgrade=UpgradeRequest(u["start"], u["length"]) if u else None,
        manifest=js["manifest"],
    )


def manifest_bytes(js: dict) -> bytes:
    """The 3.4 encoding of a simple v1 manifest given as Node's JSON (no prologue etc.)."""
    assert js["version"] == 1 and not js["prologue"] and not js["linked"] and not js["userData"]
    out = bytearray([1, 1 if js["allowPatch"] else 0, 0, js["quorum"], len(js["signers"])])
    for s in js["signers"]:
        out += b"\x00" + bytes.fromhex(s["namespace"]) + bytes.fromhex(s["publicKey"])
    return bytes(out)


def proof(js: dict) -> Proof:
    b, h, s, u = js["block"], js["hash"], js["seek"], js["upgrade"]
    manifest = js["manifest"]
    return Proof(
        fork=js["fork"],
        block=BlockProof(b["index"], bytes.fromhex(b.get("value_hex", b.get("value"))), _nodes(b["nodes"]))
        if b
        else None,
        hash=HashProof(h["index"], _nodes(h["nodes"])) if h else None,
        seek=SeekProof(s["bytes"], _nodes(s["nodes"])) if s else None,
        upgrade=UpgradeProof(
            u["start"],
            u["length"],
            _nodes(u["nodes"]),
            _nodes(u["additionalNodes"]),
            bytes.fromhex(u["signature"]) if u["signature"] else b"",
        )
        if u
        else None,
        manifest=manifest_bytes(manifest) if isinstance(manifest, dict) else manifest,
    )


def from_json(type_name: str, js: dict) -> Any:
    """A wire_messages vector value -> our message object."""
    if type_name == "handshake":
        return m.Handshake(bytes.fromhex(js["capability"]), js["seeks"])
    if type_name == "sync":
        return m.Sync(
            js["fork"],
            js["length"],
            js["remoteLength"],
            js["canUpgrade"],
            js["uploading"],
            js["downloading"],
            js["hasManifest"],
            js["allowPush"],
        )
    if type_name == "request":
        return m.Request(js["id"], proof_request(js), js["priority"])
    if type_name == "cancel":
        return m.Cancel(js["request"])
    if type_name == "data":
        return m.Data(js["request"], proof(js))
    if type_name == "noData":
        return m.NoData(js["request"], js["reason"])
    if type_name == "want":
        return m.Want(js["start"], js["length"], js["any"])
    if type_name == "unwant":
        return m.Unwant(js["start"], js["length"], js["any"])
    if type_name == "bitfield":
        words = js["bitfield"]
        return m.Bitfield(js["start"], [words[str(i)] for i in range(len(words))])
    if type_name == "range":
        return m.Range(js["start"], js["length"], js["drop"])
    if type_name == "extension":
        return m.Extension(js["name"], bytes.fromhex(js["message"]))
    raise ValueError(type_name)
