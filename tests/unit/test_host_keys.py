"""`hyperpi keys` and the host home directory: files, modes, refusals, export/import."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hyperpi.hypercore.keys import core_key, discovery_key, generate_keypair, z32_encode
from hyperpi_host import cli, home, keys
from tests.conftest import run_cli as run


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- home -------------------------------------------------------------------------------


def test_home_from_env_then_xdg_then_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYPERPI_HOME", str(tmp_path / "explicit"))
    assert home.hyperpi_home() == tmp_path / "explicit"
    monkeypatch.delenv("HYPERPI_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert home.hyperpi_home() == tmp_path / "xdg" / "hyperpi"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert home.hyperpi_home() == tmp_path / "user" / ".config" / "hyperpi"
    for created in (tmp_path / "explicit", tmp_path / "xdg" / "hyperpi", tmp_path / "user" / ".config" / "hyperpi"):
        assert mode(created) == 0o700


def test_write_secret_is_0600_and_atomic(hyperpi_home: Path) -> None:
    path = home.home_subdir("keys") / "s.secret"
    home.write_secret(path, b"first")
    home.write_secret(path, b"second")
    assert path.read_bytes() == b"second"
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["s.secret"]  # no temporary files left
    assert home.read_secret(path) == b"second"


@pytest.mark.parametrize("loose_mode", [0o644, 0o640, 0o604])
def test_read_secret_refuses_loose_permissions(hyperpi_home: Path, loose_mode: int) -> None:
    path = hyperpi_home / "s.secret"
    home.write_secret(path, b"x")
    path.chmod(loose_mode)
    with pytest.raises(home.HomeError, match=f"chmod 600 {path}"):
        home.read_secret(path)


# --- keys -------------------------------------------------------------------------------


def test_new_list_show(hyperpi_home: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "keys", "new", "kitchen")
    assert code == 0 and "created key kitchen" in out
    keydir = hyperpi_home / "keys"
    assert mode(hyperpi_home) == 0o700 and mode(keydir) == 0o700
    assert mode(keydir / "kitchen.secret") == 0o600

    keypair = keys.load_keypair("kitchen")
    feed = z32_encode(core_key(keypair.public_key))
    code, out, _ = run(capsys, "keys", "list")
    assert code == 0
    assert out.splitlines()[1].split() == ["kitchen", feed, "no"]

    code, out, _ = run(capsys, "keys", "show", "kitchen")
    assert code == 0
    assert f"feed key:       {feed}" in out
    assert f"discovery key:  {z32_encode(discovery_key(core_key(keypair.public_key)))}" in out
    # The secret is never shown, in any encoding.
    for text in (keypair.secret_key.hex(), keypair.secret_key[:32].hex(), z32_encode(keypair.secret_key[:32])):
        assert text not in out


def test_list_empty_says_how_to_start(hyperpi_home: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = run(capsys, "keys", "list")
    assert code == 0 and "hyperpi keys new NAME" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["keys", "show", "nobody"], "no key named 'nobody'"),
        (["keys", "rm", "nobody", "--yes"], "no key named 'nobody'"),
        (["keys", "new", "../evil"], "bad key name"),
        (["keys", "new", "a b"], "bad key name"),
        (["keys", "export", "nobody", "out.json"], "no key named 'nobody'"),
    ],
)
def test_user_mistakes_are_one_line_exit_2(
    hyperpi_home: Path, capsys: pytest.CaptureFixture, argv: list[str], message: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and err.count("\n") == 1 and err.startswith("hyperpi: ")


def test_duplicate_name_is_refused_and_key_kept(hyperpi_home: Path, capsys: pytest.CaptureFixture) -> None:
    run(capsys, "keys", "new", "kitchen")
    before = keys.load_keypair("kitchen")
    code, _, err = run(capsys, "keys", "new", "kitchen")
    assert code == 2 and "already exists" in err
    assert keys.load_keypair("kitchen") == before


def test_world_readable_secret_is_refused(hyperpi_home: Path, capsys: pytest.CaptureFixture) -> None:
    run(capsys, "keys", "new", "kitchen")
    secret = hyperpi_home / "keys" / "kitchen.secret"
    secret.chmod(0o644)
    code, _, err = run(capsys, "keys", "export", "kitchen", str(hyperpi_home / "out.json"))
    assert code == 2
    assert f"chmod 600 {secret}" in err
    assert not (hyperpi_home / "out.json").exists()
    secret.chmod(0o600)  # the fix the message names works
    assert run(capsys, "keys", "export", "kitchen", str(hyperpi_home / "out.json"))[0] == 0


def test_export_import_round_trip_matches_node_vector(
    hyperpi_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture, vectors: dict
) -> None:
    # Store a vector seed's key pair, export it, remove it, import it under a new name:
    # the feed key must be the one Node computes for that seed.
    vec = vectors["keys"][1]
    keypair = generate_keypair(bytes.fromhex(vec["seed"]))
    keys._store_identity("vec", keypair, None)
    exported = tmp_path / "vec.hyperpi-key"
    assert run(capsys, "keys", "export", "vec", str(exported))[0] == 0
    assert mode(exported) == 0o600
    assert run(capsys, "keys", "rm", "vec", "--yes")[0] == 0
    assert not keys.exists("vec")

    code, out, _ = run(capsys, "keys", "import", "again", str(exported))
    assert code == 0
    identity = keys.load_identity("again")
    assert identity.feed_key.hex() == vec["default_core_key"]
    assert identity.discovery_key.hex() == vec["default_discovery_key"]
    assert keys.load_keypair("again").secret_key.hex() == vec["ed25519_secret_key_libsodium"]
    assert z32_encode(identity.feed_key) in out

    # The same key twice would be two names for one feed: refused.
    code, _, err = run(capsys, "keys", "import", "third", str(exported))
    assert code == 2 and "already stored as 'again'" in err


def test_export_to_stdout_but_never_to_a_terminal(
    hyperpi_home: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(capsys, "keys", "new", "kitchen")
    code, out, _ = run(capsys, "keys", "export", "kitchen")
    assert code == 0
    assert json.loads(out)["secret_key"] == keys.load_keypair("kitchen").secret_key.hex()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, err = run(capsys, "keys", "export", "kitchen")
    assert code == 2 and "refusing to print a secret key" in err
    assert keys.load_keypair("kitchen").secret_key.hex() not in out


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b'{"format": "hyperpi-identity", "version": 1, "secret_key": "abcd"}',
        b"{}",
    ],
)
def test_import_of_bad_file_stores_nothing(
    hyperpi_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture, content: bytes
) -> None:
    bad = tmp_path / "bad"
    home.write_secret(bad, content)
    code, _, err = run(capsys, "keys", "import", "x", str(bad))
    assert code == 2 and "not a hyperpi key export" in err
    assert not keys.exists("x")


def test_import_of_tampered_public_half_is_refused(
    hyperpi_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run(capsys, "keys", "new", "kitchen")
    exported = tmp_path / "k"
    run(capsys, "keys", "export", "kitchen", str(exported))
    data = json.loads(exported.read_text())
    other = generate_keypair()
    # Seed of one key with the public key of another: libsodium would sign garbage.
    data["secret_key"] = data["secret_key"][:64] + other.public_key.hex()
    home.write_secret(exported, json.dumps(data).encode())
    code, _, err = run(capsys, "keys", "import", "y", str(exported))
    assert code == 2 and not keys.exists("y")


def test_export_does_not_overwrite(hyperpi_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run(capsys, "keys", "new", "kitchen")
    target = tmp_path / "existing"
    target.write_text("precious")
    code, _, err = run(capsys, "keys", "export", "kitchen", str(target))
    assert code == 2 and "already exists" in err
    assert target.read_text() == "precious"


def test_rm_needs_confirmation_when_not_interactive(hyperpi_home: Path, capsys: pytest.CaptureFixture) -> None:
    run(capsys, "keys", "new", "kitchen")
    code, _, err = run(capsys, "keys", "rm", "kitchen")  # stdin is not a terminal under pytest
    assert code == 2 and "--yes" in err
    assert keys.exists("kitchen")
    assert run(capsys, "keys", "rm", "kitchen", "--yes")[0] == 0
    assert not keys.exists("kitchen")
    assert list((hyperpi_home / "keys").iterdir()) == []


def test_owner_identity_has_a_control_feed(hyperpi_home: Path, capsys: pytest.CaptureFixture) -> None:
    from hyperpi.hypercore import Core, Store

    code, out, _ = run(capsys, "keys", "new", "--owner", "ana")
    assert code == 0 and "created owner identity ana" in out
    identity = keys.load_identity("ana")
    assert identity.owner and identity.control_feed_key is not None
    assert identity.control_feed_key != identity.feed_key
    assert f"control feed:   {z32_encode(identity.control_feed_key)}" in out
    control = keys.load_control_keypair("ana")
    assert core_key(control.public_key) == identity.control_feed_key

    # The control feed exists in the host store and is writable with the stored key pair.
    with keys.open_store() as store:
        core = keys.open_control_feed(store, "ana")
        assert core.key == identity.control_feed_key and core.writable
        assert core.length == 0
        core.append([b'{"type": "follow"}'])
    with Store(hyperpi_home / "store") as store:  # persisted, found again by key
        assert Core.open(store, identity.control_feed_key).length == 1
    code, out, _ = run(capsys, "keys", "list")
    assert out.splitlines()[1].split() == ["ana", z32_encode(identity.feed_key), "yes"]

    # Export, remove, import: the same control feed, its entries kept.
    exported = hyperpi_home.parent / "ana.key"
    assert run(capsys, "keys", "export", "ana", str(exported))[0] == 0
    assert run(capsys, "keys", "rm", "ana", "--yes")[0] == 0
    assert run(capsys, "keys", "import", "ana2", str(exported))[0] == 0
    assert keys.load_identity("ana2").control_feed_key == identity.control_feed_key
    with keys.open_store() as store:
        assert keys.open_control_feed(store, "ana2").length == 1

    # A plain key has no control feed.
    run(capsys, "keys", "new", "kitchen")
    with pytest.raises(cli.UserError, match="not an owner identity"):
        keys.load_control_keypair("kitchen")


def test_rm_owner_removes_the_control_feed_secret(hyperpi_home: Path, capsys: pytest.CaptureFixture) -> None:
    from hyperpi.hypercore import Core, Store

    run(capsys, "keys", "new", "--owner", "ana")
    control = keys.load_identity("ana").control_feed_key
    assert control is not None
    secret = hyperpi_home / "store" / "keys" / f"{control.hex()}.secret"
    assert mode(secret) == 0o600
    assert run(capsys, "keys", "rm", "ana", "--yes")[0] == 0
    assert not secret.exists()
    with Store(hyperpi_home / "store") as store:  # the signed entries stay, nobody can add more
        assert not Core.open(store, control).writable


def test_import_of_nested_json_is_one_line(hyperpi_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    hostile = tmp_path / "nested.key"
    home.write_secret(hostile, b"[" * 5000 + b"]" * 5000)  # an "export" someone sent: RecursionError unbounded
    code, _, err = run(capsys, "keys", "import", "bea", str(hostile))
    assert code == 2 and err == f"hyperpi: {hostile} is not a hyperpi key export (or it is damaged)\n"
    assert not keys.exists("bea")


def test_cli_errors_have_no_traceback(hyperpi_home: Path) -> None:
    # Through the installed console script, as a user runs it.
    result = subprocess.run(
        [str(Path(sys.executable).parent / "hyperpi"), "keys", "show", "nobody"],
        capture_output=True,
        text=True,
        env={**os.environ, "HYPERPI_HOME": str(hyperpi_home)},
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("hyperpi: no key named 'nobody'")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
