"""`hyperpi devices` argument checks (the listing itself runs in tests/netns)."""

from __future__ import annotations

import pytest

from hyperpi_host import cli


@pytest.mark.parametrize("timeout", ["0", "-1", "61"])
def test_devices_refuses_a_silly_timeout(timeout: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["devices", "--timeout", timeout]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hyperpi: --timeout must be between 0 and 60 seconds")
    assert "\n" not in error


def test_devices_is_listed_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "devices" in capsys.readouterr().out
