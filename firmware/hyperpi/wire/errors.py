"""Errors of the wire layers: every protocol violation raises a `WireError` subclass.

The message is one line that says what was wrong, so the adapter can log it as the reason
for the disconnect. Nothing else escapes the sans-IO layers on bad input: a fuzzer that
feeds random bytes must only ever see these exceptions.
"""

from __future__ import annotations


class WireError(Exception):
    """The remote peer broke the protocol; the connection must be closed."""


class DecodeError(WireError):
    """A message was truncated, oversized or otherwise not decodable."""


class HandshakeError(WireError):
    """The Noise handshake or the secret-stream header exchange failed."""


class FrameError(WireError):
    """A secret-stream frame was too large, too small or failed authentication."""


class MuxError(WireError):
    """A protomux control message broke the channel rules (bad open, reject, batch...)."""
