"""The appliance: settings, board profiles, chat timeline, screens, buttons and the service.

`main.py` is the `hyperpi-device` process; `service.DeviceService` is the chat service the
network plugs into (see its docstring for the seam). `service_main` is the console script's
entry point: it keeps OpenSSL out of the process before the service's imports run.
"""

from __future__ import annotations

import sys

# Modules the service process never loads. asyncio imports `ssl` only to offer TLS, which the
# device never speaks (its connections are Noise streams); hashlib falls back to CPython's own
# BLAKE2b and SHA-512, the only hashes the firmware uses. Together they would map OpenSSL's
# libcrypto and libssl: ~4.5 MB of RSS against the service's 40 MB budget (README "The device", memory).
WITHOUT_MODULES = ("ssl", "_hashlib")
# The `device` extra's top-level modules (pyproject.toml), which a host-only install lacks.
DEVICE_PACKAGES = ("PIL", "segno", "gpiozero", "luma")


def without_openssl() -> None:
    """Make `import ssl` / `import _hashlib` fail in this process (callers handle that).
    Only for the service process, before asyncio or hashlib is imported; loaded ones stay."""
    for name in WITHOUT_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def service_main() -> int:
    """`hyperpi-device`: the service process (see `main.main`)."""
    without_openssl()
    try:
        from .main import main
    except ModuleNotFoundError as e:  # a host-only install (hyperpi[host]) has no screen or GPIO packages
        if (e.name or "").split(".")[0] not in DEVICE_PACKAGES:
            raise
        print(f"hyperpi-device: needs the {e.name} package: pip install 'hyperpi[device]'", file=sys.stderr)
        return 1
    return main()
