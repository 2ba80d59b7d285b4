"""hyperpi.net.address: the one `HOST:PORT` parser (device config, provision --peer, --peer and
--listen of the host commands)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hyperpi.device.config import ConfigError, load_config
from hyperpi.net.address import DEFAULT_PORT, parse_address
from tests.conftest import run_cli


@pytest.mark.parametrize(
    "text, expected",
    [
        ("192.168.1.23:49737", ("192.168.1.23", 49737)),
        ("kitchen.local:1", ("kitchen.local", 1)),
        ("[fe80::1]:49737", ("fe80::1", 49737)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_good_addresses(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text, reason",
    [
        ("", "no port"),
        ("kitchen", "no port"),
        (":49737", "no host"),
        ("[]:49737", "no host"),
        ("kitchen:", "the port must be a number from 1 to 65535"),
        ("kitchen:port", "the port must be a number"),
        ("kitchen:0", "from 1 to 65535"),
        ("kitchen:65536", "from 1 to 65535"),
        ("kitchen:-1", "the port must be a number"),
        ("kitchen: 80", "the port must be a number"),
        ("kitchen:\u00b2", "the port must be a number"),  # a superscript two: isdigit, but not for int()
        ("kitchen:\uff18\uff10", "the port must be a number"),  # fullwidth digits
        ("kitchen:" + "9" * 5000, "the port must be a number"),  # longer than int() takes
        ("kit chen:80", "not a name or address"),
        ("kit\x1b[2Jchen:80", "not a name or address"),
        ("k" * 254 + ":80", "not a name or address"),
    ],
)
def test_bad_addresses_say_why_in_one_line(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as refused:
        parse_address(text)
    message = str(refused.value)
    assert reason in message and "is not HOST:PORT" in message and "\n" not in message
    assert len(message) < 400  # a long input is cut, not echoed whole


def test_port_zero_only_when_any_port_is_allowed() -> None:
    assert parse_address("127.0.0.1:0", any_port=True) == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match="from 1 to 65535"):
        parse_address("127.0.0.1:0")


def test_the_device_config_names_the_bad_peer(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('name = "x"\npeers = ["kitchen.local:49737", "kitchen:70000"]\n')
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert str(refused.value) == (
        f"{path}: key 'peers': 'kitchen:70000' is not HOST:PORT: the port must be a number from 1 to 65535 "
        f"(for example 192.168.1.23:{DEFAULT_PORT})"
    )
    path.write_text('name = "x"\npeers = [49737]\n')
    with pytest.raises(ConfigError, match='not a "host:port" string'):
        load_config(path)
    path.write_text('name = "x"\npeers = ["kitchen.local:49737"]\n')
    assert load_config(path).peers == (("kitchen.local", DEFAULT_PORT),)


@pytest.mark.parametrize(
    "argv, refused",
    [
        (["--peer", "kitchen"], "--peer 'kitchen' is not HOST:PORT: no port"),
        (["--listen", "0.0.0.0:99999"], "--listen '0.0.0.0:99999' is not HOST:PORT"),
    ],
)
def test_host_commands_refuse_in_one_line(
    hyperpi_home: Path, capsys: pytest.CaptureFixture, tmp_path: Path, argv: list[str], refused: str
) -> None:
    code, _out, err = run_cli(capsys, "chat", "view", "0" * 64, "--store", str(tmp_path / "s"), "--no-mdns", *argv)
    assert code != 0 and refused in err and err.count("\n") == 1 and "Traceback" not in err
