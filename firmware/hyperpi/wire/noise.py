"""Noise_XX_Ed25519_ChaChaPoly_BLAKE2b: the handshake of Holepunch's secret-stream, sans-IO.

This is the Noise XX pattern as `noise-handshake` + `noise-curve-ed` run it (protocol doc 5.2):
HASHLEN 64 (BLAKE2b-512), HKDF over HMAC-BLAKE2b, ChaCha20-Poly1305 IETF with the nonce
`0000 || u64le(n)`, and Diffie-Hellman on Edwards-25519 (`crypto_scalarmult_ed25519_noclamp`
with the clamped SHA-512 of the Ed25519 seed), so static keys are ordinary Ed25519 key pairs.
Payloads are always sent empty and ignored on receipt, as secret-stream does.

    noise = NoiseXX(is_initiator=True, static_keypair=kp)
    msg1 = noise.send(); noise.recv(msg2); msg3 = noise.send()   # initiator
    noise.complete, noise.tx, noise.rx, noise.handshake_hash, noise.remote_public_key
"""

from __future__ import annotations

import hashlib
import hmac

import nacl.bindings as sodium
import nacl.exceptions

from hyperpi.hypercore.keys import KeyPair, generate_keypair

from .errors import HandshakeError

PROTOCOL_NAME = b"Noise_XX_Ed25519_ChaChaPoly_BLAKE2b"
HASHLEN = 64
KEYLEN = 32
TAGLEN = 16
# Noise's own cap on one handshake message (noise-handshake `cipher.js` throws above it).
MAX_NOISE_MESSAGE = 65535


# A Noise static key is an Ed25519 key pair like a feed's: one type for both, KeyPair of
# hypercore/keys.py (its repr hides the secret half).
keypair = generate_keypair


def dh_scalar(secret_key: bytes) -> bytes:
    """The clamped Curve scalar noise-curve-ed derives from an Ed25519 secret key's seed."""
    s = bytearray(hashlib.sha512(secret_key[:32]).digest()[:32])
    s[0] &= 248
    s[31] &= 127
    s[31] |= 64
    return bytes(s)


def dh(public_key: bytes, secret_key: bytes) -> bytes:
    """Ed25519 Diffie-Hellman; raises HandshakeError for points libsodium refuses."""
    if len(public_key) != 32:
        raise HandshakeError("noise: remote key is not 32 bytes")
    try:
        return sodium.crypto_scalarmult_ed25519_noclamp(dh_scalar(secret_key), public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError) as e:
        raise HandshakeError(f"noise: invalid remote public key ({e})") from None


def _hash(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASHLEN).digest()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.blake2b).digest()


def hkdf(chaining_key: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """Noise HKDF with two outputs (the info string is empty)."""
    prk = _hmac(chaining_key, ikm)
    o1 = _hmac(prk, b"\x01")
    o2 = _hmac(prk, o1 + b"\x02")
    return o1, o2


def _nonce(n: int) -> bytes:
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


class NoiseXX:
    """One side of a Noise XX handshake: call `send()` and `recv()` in pattern order.

    `ephemeral_keypair` is for replaying recorded transcripts only; leave it None otherwise.
    """

    # The three XX messages: who sends each, and its tokens.
    _PATTERN = (("e",), ("e", "ee", "s", "es"), ("s", "se"))

    def __init__(
        self,
        is_initiator: bool,
        static_keypair: KeyPair,
        ephemeral_keypair: KeyPair | None = None,
    ) -> None:
        self.is_initiator = is_initiator
        self.s = static_keypair
        self.e = ephemeral_keypair
        self.re: bytes | None = None
        self.rs: bytes | None = None
        self.step = 0
        self.h = PROTOCOL_NAME.ljust(HASHLEN, b"\x00")  # <= HASHLEN, so used as is
        self.ck = self.h
        self.k: bytes | None = None
        self.n = 0
        self._mix_hash(b"")  # the empty prologue
        self.complete = False
        self.tx = b""
        self.rx = b""
        self.handshake_hash = b""

    @property
    def remote_public_key(self) -> bytes | None:
        return self.rs

    def my_turn(self) -> bool:
        """True when the next handshake message is ours to send."""
        return not self.complete and (self.step % 2 == 0) == self.is_initiator

    # --- symmetric state ---

    def _mix_hash(self, data: bytes) -> None:
        self.h = _hash(self.h + data)

    def _mix_key(self, remote: bytes, local: KeyPair) -> None:
        self.ck, temp_k = hkdf(self.ck, dh(remote, local.secret_key))
        self.k = temp_k[:KEYLEN]
        self.n = 0

    def _encrypt_and_hash(self, plaintext: bytes) -> bytes:
        if self.k is None:
            c = plaintext
        else:
            c = sodium.crypto_aead_chacha20poly1305_ietf_encrypt(plaintext, self.h, _nonce(self.n), self.k)
            self.n += 1
        self._mix_hash(c)
        return c

    def _decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        if self.k is None:
            p = ciphertext
        else:
            try:
                p = sodium.crypto_aead_chacha20poly1305_ietf_decrypt(ciphertext, self.h, _nonce(self.n), self.k)
            except (nacl.exceptions.CryptoError, ValueError, TypeError):
                raise HandshakeError("noise: handshake message failed authentication") from None
            self.n += 1
        self._mix_hash(ciphertext)
        return p

    def _dh_token(self, token: str) -> None:
        # ee: both ephemerals; es: initiator's ephemeral with responder's static; se: reverse.
        assert self.re is not None
        local: KeyPair | None
        remote: bytes | None
        if token == "ee":
            local, remote = self.e, self.re
        elif token == "es":
            local, remote = (self.e, self.rs) if self.is_initiator else (self.s, self.re)
        else:  # "se"
            local, remote = (self.s, self.re) if self.is_initiator else (self.e, self.rs)
        assert local is not None and remote is not None
        self._mix_key(remote, local)

    # --- messages ---

    def send(self) -> bytes:
        """The next handshake message (empty payload)."""
        if not self.my_turn():
            raise HandshakeError("noise: not our turn to send")
        out = bytearray()
        for token in self._PATTERN[self.step]:
            if token == "e":
                if self.e is None:
                    self.e = keypair()
                self._mix_hash(self.e.public_key)
                out += self.e.public_key
            elif token == "s":
                out += self._encrypt_and_hash(self.s.public_key)
            else:
                self._dh_token(token)
        out += self._encrypt_and_hash(b"")
        self._advance()
        return bytes(out)

    def recv(self, message: bytes) -> bytes:
        """Process the peer's next handshake message; returns its (ignored) payload."""
        if self.complete or self.my_turn():
            raise HandshakeError("noise: unexpected handshake message")
        if len(message) > MAX_NOISE_MESSAGE:
            raise HandshakeError(f"noise: handshake message of {len(message)} bytes is too long")
        pos = 0
        for token in self._PATTERN[self.step]:
            if token == "e":
                self.re = message[pos : pos + 32]
                pos += 32
                if len(self.re) != 32:
                    raise HandshakeError("noise: handshake message too short")
                self._mix_hash(self.re)
            elif token == "s":
                size = 32 + TAGLEN if self.k is not None else 32
                chunk = message[pos : pos + size]
                pos += size
                if len(chunk) != size:
                    raise HandshakeError("noise: handshake message too short")
                self.rs = self._decrypt_and_hash(chunk)
            else:
                self._dh_token(token)
        if self.k is not None and len(message) - pos < TAGLEN:
            raise HandshakeError("noise: handshake message too short")
        payload = self._decrypt_and_hash(message[pos:])
        self._advance()
        return payload

    def _advance(self) -> None:
        self.step += 1
        if self.step == len(self._PATTERN):
            o1, o2 = hkdf(self.ck, b"")
            k1, k2 = o1[:KEYLEN], o2[:KEYLEN]
            self.tx, self.rx = (k1, k2) if self.is_initiator else (k2, k1)
            self.handshake_hash = self.h
            self.complete = True
