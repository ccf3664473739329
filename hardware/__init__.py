"""labctl.hardware: device interfaces, drivers, simulators and instrument emulators. No actor code."""

from .errors import (ChecksumError, GarbledReply, HardwareError, InterlockRefused, LinkError, NoReply, NotPresent,
                     OutOfRange, ProtocolError, Rejected, UnknownName, ValveLocked, ValveNotConfirmed)
from .interfaces import (Camera, Device, FilterWheel, FloatingDevice, LightSource, Stage,
                         TemperatureController, ValveController, declared_time_limits, probe, remote,
                         remote_methods, time_limit, time_limit_of)

__all__ = [
    "Camera", "Device", "FilterWheel", "FloatingDevice", "LightSource", "Stage", "TemperatureController",
    "ValveController", "declared_time_limits", "probe", "remote", "remote_methods", "time_limit", "time_limit_of",
    "ChecksumError", "GarbledReply", "HardwareError", "InterlockRefused", "LinkError", "NoReply", "NotPresent",
    "OutOfRange",
    "ProtocolError", "Rejected", "UnknownName", "ValveLocked", "ValveNotConfirmed",
]
