"""hyperpi.hypercore.secret_files: the one writer and reader of key files (store, device, host)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from hyperpi.hypercore import StorageError, Store
from hyperpi.hypercore.keys import KeyPair, generate_keypair
from hyperpi.hypercore.secret_files import MAX_SECRET_BYTES, SecretFileError, read_secret, write_atomic
from hyperpi.wire import noise


def test_write_is_0600_whatever_the_umask_and_replaces_in_one_step(tmp_path: Path) -> None:
    path = tmp_path / "key"
    old_umask = os.umask(0)
    try:
        write_atomic(path, b"first")
        write_atomic(path, b"second")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_secret(path) == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_atomic(path, b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes")  # type: ignore[arg-type]
    assert read_secret(path) == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_file_others_may_read_is_refused_in_one_line(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "key"
    write_atomic(path, b"secret")
    path.chmod(mode)
    with pytest.raises(SecretFileError) as refused:
        read_secret(path)
    message = str(refused.value)
    assert "\n" not in message and f"chmod 600 {path}" in message and f"{mode:o}" in message


def test_the_refusal_never_shows_the_content(tmp_path: Path) -> None:
    path = tmp_path / "key"
    write_atomic(path, b"TOPSECRETBYTES")
    path.chmod(0o644)
    with pytest.raises(SecretFileError) as refused:
        read_secret(path)
    assert "TOPSECRETBYTES" not in str(refused.value)


def test_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_secret(tmp_path / "absent")


def test_a_folder_or_an_oversized_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SecretFileError, match="not a regular file"):
        read_secret(tmp_path)
    big = tmp_path / "big"
    write_atomic(big, b"x" * (MAX_SECRET_BYTES + 1))
    with pytest.raises(SecretFileError, match="too large"):
        read_secret(big)
    assert read_secret(big, max_bytes=MAX_SECRET_BYTES + 1) == b"x" * (MAX_SECRET_BYTES + 1)


def test_the_store_writes_its_core_keys_through_it(tmp_path: Path) -> None:
    pair = generate_keypair()
    with Store(tmp_path) as store:
        store.write_secret_key(pair.public_key, pair.secret_key)
        path = store.secret_key_path(pair.public_key)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert store.read_secret_key(pair.public_key) == pair.secret_key
        path.chmod(0o640)
        with pytest.raises(StorageError, match="chmod 600"):
            store.read_secret_key(pair.public_key)


@pytest.mark.parametrize("make", [generate_keypair, noise.keypair], ids=["feed", "noise"])
def test_a_key_pair_repr_never_shows_the_secret(make: Callable[[bytes], KeyPair]) -> None:
    pair = make(bytes(range(32)))
    for text in (repr(pair), str(pair), f"{pair}", repr([pair]), repr({"k": pair})):
        assert pair.secret_key.hex() not in text and pair.secret_key[:32].hex() not in text
        assert str(list(pair.secret_key)) not in text and repr(pair.secret_key) not in text
    assert pair.public_key.hex() in repr(pair)
    assert isinstance(pair, KeyPair)
