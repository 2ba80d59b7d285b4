"""`hyperpi-device --simulate` defaults: a laptop simulation keeps its state under the user's home
and stays off the real LAN (loopback, no mDNS) unless --lan asks for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperpi.device.config import DEFAULT_STATE_DIR, DeviceConfig, parse_config
from hyperpi.device.main import build_parser, simulation_defaults

SETTINGS = Path("device.toml")


def configured(**extra: object) -> DeviceConfig:
    return parse_config({"name": "kitchen / hall", "board": "headless", **extra}, SETTINGS)


def test_simulate_defaults_to_home_and_loopback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    config = simulation_defaults(configured(), build_parser().parse_args(["--simulate"]))
    assert config.state_dir == tmp_path / ".local/state/hyperpi-device/kitchen-hall"
    assert (config.listen_host, config.mdns) == ("127.0.0.1", False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    config = simulation_defaults(configured(), build_parser().parse_args(["--simulate"]))
    assert config.state_dir == tmp_path / "xdg/hyperpi-device/kitchen-hall"


def test_lan_and_named_folders_are_kept(tmp_path: Path) -> None:
    settings = configured(state_dir=str(tmp_path / "state"), listen_host="0.0.0.0", mdns=True)
    config = simulation_defaults(settings, build_parser().parse_args(["--simulate", "--lan"]))
    assert (config.state_dir, config.listen_host, config.mdns) == (tmp_path / "state", "0.0.0.0", True)
    given = build_parser().parse_args(["--simulate", "--state-dir", str(tmp_path / "x")])
    # --state-dir is used as it is (main: args.state_dir or config.state_dir): no folder invented
    assert simulation_defaults(configured(), given).state_dir == DEFAULT_STATE_DIR


def test_a_real_device_is_left_as_configured() -> None:
    config = configured()
    assert simulation_defaults(config, build_parser().parse_args([])) is config
    assert config.state_dir == DEFAULT_STATE_DIR and config.mdns
