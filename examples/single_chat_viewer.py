"""The tutorial's viewer in Python (the Node original: single-chat-viewer.js beside this file):
opens the feed by key (z-base-32 or hex), replicates it and prints every message, old ones
first, then live ones. Usage: python single_chat_viewer.py KEY STORAGE [--json] [--exit-after N]
[--listen H:P] [--connect H:P] [--initiator|--responder]"""

import json
import sys

from peer_net import parse_args, printable, replicate_over_tcp, run

from hyperpi import Feed


async def main() -> None:
    opts = parse_args(sys.argv[1:])
    key, storage = (opts.rest + ["", "./reader-storage"])[:2]
    feed = Feed(storage, key, value_encoding="json")
    await replicate_over_tcp(feed, opts)
    seen = 0
    async for msg in feed.read(live=True):
        chat = msg if isinstance(msg, dict) else {}
        line = json.dumps(msg) if opts.json or not chat else f"<{chat.get('nick')}> {chat.get('text')}"
        print(printable(line), flush=True)
        seen += 1
        if seen == opts.exit_after:
            return


run(main, "single_chat_viewer")
