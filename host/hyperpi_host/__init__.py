"""hyperpi_host: the laptop side of hyperpi (keys, QR, provisioning, flashing, pairing, chat)."""
