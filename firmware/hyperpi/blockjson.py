"""JSON in feed blocks, decoded within limits: every json decode of feed content goes through here.

A block comes from the network, so it is data and must never steer control flow. Python's json
module recurses once per nesting level: 1,000 `[` (2 KB) raise RecursionError, which is not the
ValueError every caller handles, and it escaped them all (the device timeline, the control feed,
`hyperpi chat view`). `decode` checks the size and the nesting depth first, so the parser only
ever sees blocks within both limits.
"""

from __future__ import annotations

import json
import re

MAX_JSON_BYTES = 64 * 1024  # the default size limit; callers that show less pass a smaller one
MAX_JSON_DEPTH = 32  # chat messages nest 1 level, control entries 2: deeper is not ours to parse

# Brackets inside strings do not nest. Strings end where the parser ends them; past a point
# where the parser fails (a bad escape, an unclosed string) the count may be off, unparsed.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[][{}]")


class BadBlock(ValueError):
    """A block over the size or nesting limit: refused before the parser sees it."""


def decode(block: bytes, max_bytes: int = MAX_JSON_BYTES) -> object:
    """The JSON value of `block`. BadBlock if it is over a limit; any other ValueError
    (UnicodeDecodeError, json.JSONDecodeError) if it is not UTF-8 JSON."""
    if len(block) > max_bytes:
        raise BadBlock(f"{len(block)} bytes is over the {max_bytes}-byte limit")
    text = block.decode("utf-8")
    depth = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise BadBlock(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return json.loads(text)
