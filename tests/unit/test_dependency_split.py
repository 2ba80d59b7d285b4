"""One dependency set per program (pyproject.toml): the host tool needs no screen or GPIO package,
and hyperpi-device without them says which package is missing in one line."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BLOCK = "import sys\nfor name in {names!r}: sys.modules[name] = None\n"


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


def test_the_host_tool_runs_without_the_device_packages() -> None:
    device_only = ["gpiozero", "luma", "lgpio", "spidev", "smbus2"]
    code = BLOCK.format(names=device_only) + (
        "from hyperpi_host import cli\n"
        "parser = cli.build_parser()\n"
        "for command in ('keys', 'qr', 'provision', 'flash', 'devices', 'chat', 'pair'):\n"
        "    try:\n"
        "        parser.parse_args([command, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
    )
    done = run(code)
    assert "Traceback" not in done.stderr, done.stderr
    assert "usage: hyperpi keys" in done.stdout and "usage: hyperpi pair" in done.stdout


def test_hyperpi_device_names_a_missing_device_package_in_one_line() -> None:
    done = run(BLOCK.format(names=["gpiozero"]) + "from hyperpi.device import service_main\nsys.exit(service_main())")
    assert done.returncode == 1
    assert done.stderr == "hyperpi-device: needs the gpiozero package: pip install 'hyperpi[device]'\n"


def test_the_extras_split_host_and_device_packages() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {
        extra: {r.split(">")[0].split(" ")[0] for r in reqs} for extra, reqs in project["optional-dependencies"].items()
    }
    assert not {"gpiozero", "lgpio", "luma.core"} & names["host"]
    assert not {"zxing-cpp", "zstandard"} & names["device"]
    assert not {"gpiozero", "zxing-cpp", "zstandard", "luma.core"} & {r.split(">")[0] for r in project["dependencies"]}


def test_a_zstd_image_without_zstandard_is_one_clear_error(tmp_path: Path) -> None:
    image = tmp_path / "card.img.zst"
    image.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(60))  # zstd's magic number, then anything
    code = BLOCK.format(names=["zstandard"]) + (
        "from hyperpi_host.imagefile import ImageError, open_image\n"
        "try:\n"
        f"    open_image({str(image)!r})\n"
        "except ImageError as e:\n"
        "    print(e)\n"
    )
    done = run(code)
    assert done.stderr == ""
    assert done.stdout == (
        f"{image} is zstd-compressed and the zstandard module is missing: "
        "pip install 'hyperpi[host]', or decompress it first (unzstd)\n"
    )
