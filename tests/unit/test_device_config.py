"""Settings file: valid files load; every mistake is one line naming the file and the key."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hyperpi.device.config import EX_CONFIG, ConfigError, load_config
from hyperpi.hypercore.keys import z32_encode

KEY = bytes(range(32))
GOOD = f"""
name = "kitchen"
board = "oled-bonnet"
presets = ["Hello!", "On my way"]
owner = "{KEY.hex()}"
listen_port = 4000
peers = ["192.168.1.20:49737", "[fe80::1]:5000"]
state_dir = "/tmp/x"
[buttons]
A = 12
[[follow]]
name = "Ana"
key = "{z32_encode(KEY)}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "device.toml"
    path.write_text(text)
    return path


def test_good_file_loads(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, GOOD))
    assert (c.name, c.board, c.presets, c.listen_port) == (
        "kitchen",
        "oled-bonnet",
        ("Hello!", "On my way"),
        4000,
    )
    assert c.owner == KEY and c.follows[0].name == "Ana" and c.follows[0].key == KEY
    assert c.peers == (("192.168.1.20", 49737), ("fe80::1", 5000))
    assert c.buttons == {"A": 12} and c.state_dir == Path("/tmp/x")


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, 'name = "n"\n'))
    assert c.board == "headless" and len(c.presets) > 1 and c.owner is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('name = ""', "name"),
        ('name = "x"\nboard = "pi-tv"', "board"),
        ('name = "x"\npresets = []', "presets"),
        ('name = "x"\npresets = ["ok", 3]', "presets"),
        ('name = "x"\nowner = "nope"', "owner"),
        ('name = "x"\nlisten_port = 70000', "listen_port"),
        ('name = "x"\npeers = ["hostonly"]', "peers"),
        ('name = "x"\npreset = ["typo"]', "preset"),
        ('name = "x"\n[[follow]]\nname = "A"\nkey = "zz"', "follow[0].key"),
        ('name = "x"\n[[follow]]\nkey = "zz"', "follow[0].name"),
        ('name = "x"\nboard = "mini-pitft"\n[buttons]\nA = 5', "buttons.A"),
    ],
)
def test_mistakes_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: key '{key}':") and "\n" not in message
    assert info.value.exit_code == EX_CONFIG == 78


def test_not_toml_and_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "name = "))
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")


def test_service_exits_78_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\nboard = "pi-tv"\n')
    env = {**os.environ, "NOTIFY_SOCKET": ""}
    r = subprocess.run(
        [sys.executable, "-m", "hyperpi.device.main", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 78
    assert r.stderr.count("\n") == 1 and "key 'board'" in r.stderr and str(path) in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


ROOT = Path(__file__).resolve().parent.parent.parent


def test_example_config_loads() -> None:
    c = load_config(ROOT / "firmware" / "device.toml.example")
    assert c.name == "kitchen" and c.board == "display-hat-mini" and len(c.presets) == 6


def test_systemd_unit(tmp_path: Path) -> None:
    unit = (ROOT / "firmware" / "hyperpi-device.service").read_text()
    for line in [
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        "User=hyperpi",
        "SupplementaryGroups=gpio spi i2c video",
        "RestartPreventExitStatus=69 73 78",
        "RestartForceExitStatus=42",  # hyperpi/device/install.py EXIT_UPDATED
        "ExecStart=/usr/local/bin/hyperpi-launch --config /etc/hyperpi/device.toml",
        "NoNewPrivileges=yes",
    ]:
        assert f"\n{line}\n" in unit, line
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return  # the text checks above still ran; systemd's own check needs systemd installed
    copy = tmp_path / "hyperpi-device.service"
    copy.write_text(unit.replace("/usr/local/bin/hyperpi-launch", "/bin/true"))
    r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in (r.stdout + r.stderr).splitlines() if "hyperpi-device.service" in ln]
    assert not problems, problems
