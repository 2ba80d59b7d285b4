"""Hypercore 11's wire protocol, sans-IO: bytes in, events and bytes out; no sockets here.

Layers, bottom up (each module's docstring shows its use):
- `encoding`: compact-encoding codecs (encode/decode pairs over a `State`).
- `noise`: the Noise_XX_Ed25519_ChaChaPoly_BLAKE2b handshake.
- `secret_stream`: uint24 framing + Noise + libsodium secretstream (`SecretStream`).
- `protomux`: channels over one secret-stream (`Protomux`).
- `messages`: the `hypercore/alpha` channel handshake, message types and capability.
- `errors`: `WireError` and its subclasses, the only exceptions bad input can raise.

The asyncio adapter for one TCP connection is `hyperpi.net.stream`.
"""
