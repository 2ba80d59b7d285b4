"""hyperpi: a LAN chat appliance for the Raspberry Pi on the Hypercore 11 protocol."""

__version__ = "0.1.0"
