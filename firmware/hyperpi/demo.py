"""`make demo`: a writer core appends chat messages, a reader in another store follows it
by key through proofs, exactly as replication will carry them over the wire.

(The device simulation replaces this demo later.)
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from hyperpi.hypercore import Core, Store, z32_encode
from hyperpi.hypercore.types import BlockRequest, ProofRequest, UpgradeRequest


def chat(text: str, nick: str) -> bytes:
    return json.dumps({"type": "chat", "text": text, "time": int(time.time() * 1000), "nick": nick}).encode()


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="hyperpi-demo-") as tmp:
        with Store(Path(tmp) / "kitchen") as writer_store, Store(Path(tmp) / "laptop") as reader_store:
            feed = Core.create(writer_store)
            feed.append([chat("hello from the kitchen", "kitchen"), chat("tea is ready", "kitchen")])
            feed.append([chat("anyone there?", "kitchen")])
            print(f"feed key:      {z32_encode(feed.key)}")
            print(f"discovery key: {feed.discovery_key.hex()}")
            print(f"writer:        length {feed.length}, {feed.byte_length} bytes, signed")

            follower = Core.open(reader_store, feed.key)  # knows only the key
            follower.subscribe(lambda e: print(f"reader event:  {e.kind} (length {e.length}, block {e.index})"))
            # 1. the signed head (and the manifest, which proves the key), 2. one block.
            follower.verify_and_apply(
                feed.proof(ProofRequest(fork=feed.fork, upgrade=UpgradeRequest(0, feed.length), manifest=True))
            )
            last = follower.length - 1
            follower.verify_and_apply(
                feed.proof(ProofRequest(fork=follower.fork, block=BlockRequest(last, follower.missing_nodes(last))))
            )
            message = json.loads(follower.get(last))
            print(f"replicated:    block {last} from {message['nick']}: {message['text']!r}")


if __name__ == "__main__":
    main()
