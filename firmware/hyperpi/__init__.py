"""hyperpi: a LAN chat appliance for the Raspberry Pi on the Hypercore 11 protocol.

The library's front door is `hyperpi.Feed` (firmware/hyperpi/feed.py); `hyperpi.hypercore`,
`hyperpi.wire` and `hyperpi.net` are the layers underneath it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ConnectionClosed", "DecodeError", "Feed", "NotAvailable"]

if TYPE_CHECKING:
    from .feed import ConnectionClosed, DecodeError, Feed, NotAvailable


def __getattr__(name: str) -> Any:
    # Imported on first use: `import hyperpi.blockjson` (the device, the host CLI) does not
    # load the network stack.
    if name in __all__:
        from . import feed

        return getattr(feed, name)
    raise AttributeError(f"module 'hyperpi' has no attribute {name!r}")
