"""Exceptions a client raises: what went wrong, in the lab's words, with the remote error's type."""

from __future__ import annotations


class LabError(Exception):
    """Something about the lab went wrong."""


class LabNotRunning(LabError):
    """No lab answers on the port."""


class LabNotReady(LabError):
    """The lab answers but is still starting."""


class LabTimeout(LabError, TimeoutError):
    """No reply came within the time the caller gave."""


class DeviceError(LabError):
    """A device request failed; carries the device, the remote error's type and its text."""

    def __init__(self, text: str, device: str = "", error_type: str = "", remote_traceback: str = "") -> None:
        super().__init__(text)
        self.device = device
        self.error_type = error_type
        self.text = text
        self.remote_traceback = remote_traceback


class DriverError(DeviceError):
    """The device's driver raised an exception."""


class DeviceUnavailable(DeviceError):
    """The device is starting, restarting, failed or stopped; the request was not carried out."""

    def __init__(self, text: str, device: str = "", error_type: str = "", remote_traceback: str = "",
                 state: str = "") -> None:
        super().__init__(text, device, error_type, remote_traceback)
        self.state = state


class UnknownDevice(DeviceError):
    """No device by that name; the text lists the known ones."""


class UnknownMessage(DeviceError):
    """The device does not accept that message or method; the text lists what it accepts."""


class BadArgument(DeviceError, TypeError):
    """The arguments do not fit the method."""


class NotAuthorised(LabError):
    """This process does not hold the lab's key (or holds another one)."""


class RunDirUnsafe(LabError):
    """The run folder (keys, records) is not this user's alone."""
