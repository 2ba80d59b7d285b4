"""The tutorial's writer in Python (the Node original: single-chat.js beside this file): holds
the feed's secret key and appends each stdin line as a JSON chat message.
Usage: python single_chat.py STORAGE [--nick N] [--listen H:P] [--connect H:P] [--initiator|--responder]
Prints the feed key (z-base-32) first, then "appended N" per message; keeps serving after end of input."""

import asyncio
import sys
import time

from peer_net import parse_args, replicate_over_tcp, run, stdin_lines

from hyperpi import Feed


async def main() -> None:
    opts = parse_args(sys.argv[1:])
    feed = Feed(opts.rest[0] if opts.rest else "./writer-storage", value_encoding="json")
    print(feed.id, flush=True)
    await replicate_over_tcp(feed, opts)
    async for text in stdin_lines():
        length = feed.append({"type": "chat", "text": text, "time": int(time.time() * 1000), "nick": opts.nick})
        print(f"appended {length}", flush=True)
    await asyncio.Event().wait()  # serve the feed until interrupted


run(main, "single_chat")
