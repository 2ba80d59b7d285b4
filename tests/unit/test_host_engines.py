"""The engines under `hyperpi provision` and `hyperpi pair` (provisioning.py, pairing.py), the home
folder and store locks, used without the command line: each refuses with its own error type and
a message that stands on its own; the commands print those messages as they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperpi.hypercore import generate_keypair
from hyperpi_host import home, pairing, provisioning, storelock
from hyperpi_host.devices import Device
from tests.conftest import run_cli


def test_settings_the_device_would_reject_are_a_provision_error() -> None:
    settings = provisioning.Settings(name="kitchen", board="headless", presets=["x" * 141])
    with pytest.raises(provisioning.ProvisionError, match="the device would reject these settings: .*presets"):
        provisioning.device_toml(settings)


def test_a_file_that_is_not_an_image_names_the_source_and_leaves_nothing(tmp_path: Path) -> None:
    source, out = tmp_path / "junk.img", tmp_path / "out.img"
    source.write_bytes(bytes(1 << 20))  # no partition table
    settings = provisioning.Settings(name="kitchen", board="headless")
    with pytest.raises(provisioning.ProvisionError) as refused:
        provisioning.write_image(source, out, settings, provisioning.new_identity())
    assert str(source) in str(refused.value) and ".partial" not in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.img"]


def test_an_entry_the_device_would_refuse_is_a_pairing_error() -> None:
    device = Device("kitchen", bytes(32), None, bytes(32))
    with pytest.raises(pairing.PairingError, match="the device would not accept this"):
        pairing.follow_entry(device, generate_keypair().public_key, "")


def test_a_home_that_is_a_file_is_a_home_error(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(home.HomeError, match="set HYPERPI_HOME"):
        home.ensure_dir(a_file / "home")


def test_a_store_folder_under_a_file_is_a_store_lock_error(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(storelock.StoreLockError, match="as a store"):
        storelock.acquire(a_file / "store")


def test_the_command_line_prints_a_home_error_as_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    monkeypatch.setenv("HYPERPI_HOME", str(a_file))
    code, _, err = run_cli(capsys, "keys", "new", "ana")
    assert code == 2
    assert err.startswith("hyperpi: cannot create") and err.count("\n") == 1, err
