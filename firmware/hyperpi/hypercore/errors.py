"""Errors of the hypercore package: one line each, fit to show a user without a traceback."""

from __future__ import annotations

# noData reasons (lib/messages.js): what a serving peer answers when it cannot build a proof.
NOT_AVAILABLE = 1  # block not held here, or the request names another fork
INVALID_REQUEST = 2  # the request can never be answered (upgrade beyond our length, ...)


class HypercoreError(Exception):
    """Base of every error this package raises on purpose."""


class VerificationError(HypercoreError):
    """A received proof, signature, block or manifest does not check out; nothing was stored."""


class ProofUnavailable(HypercoreError):
    """We cannot answer a request; `reason` is the noData reason to send."""

    def __init__(self, reason: int, message: str = "") -> None:
        self.reason = reason
        super().__init__(message or ("not available" if reason == NOT_AVAILABLE else "invalid request"))


class StorageError(HypercoreError):
    """The store cannot be used as asked (bad path, unsafe key file, ...)."""


class DiskFull(StorageError):
    """The disk holding the store is full: the store is fine, nothing could be written."""


class CorruptStore(StorageError):
    """The database or a key file is damaged, truncated, or belongs to another core."""


class NotWritable(HypercoreError):
    """Append on a core whose secret key this store does not hold."""
