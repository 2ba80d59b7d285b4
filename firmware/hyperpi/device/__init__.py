"""The appliance: settings, board profiles, chat timeline, screens, buttons and the service.

`main.py` is the `hyperpi-device` process; `service.DeviceService` is the chat service the
network plugs into (see its docstring for the seam).
"""
