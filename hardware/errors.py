"""Exceptions raised by drivers; each says what went wrong in words a lab user can act on."""


class HardwareError(Exception):
    """A driver could not do what it was asked."""


class OutOfRange(HardwareError, ValueError):
    """A value lies outside what the device accepts."""


class UnknownName(HardwareError, LookupError):
    """A valve, axis, sub-device or other named part does not exist."""

    def __str__(self) -> str:
        # LookupError would quote the text like a dict key; keep it readable.
        return str(self.args[0]) if self.args else ""


class ValveLocked(HardwareError):
    """A locked valve was asked to move."""


class InterlockRefused(HardwareError):
    """A valve may not move now: an interlock is open, a positive interlock closed, or another owns it."""


class NotPresent(HardwareError):
    """A floating unit with the requested id is not connected."""


class LinkError(HardwareError):
    """The link to the instrument is lost (port gone, cable unplugged); reconnecting may fix it."""


class ProtocolError(HardwareError):
    """The instrument answered, but not as its protocol says it must."""


class NoReply(ProtocolError):
    """The instrument did not answer within the timeout."""


class GarbledReply(ProtocolError):
    """The reply could not be parsed."""


class ChecksumError(ProtocolError):
    """The reply's checksum does not match its content."""


class Rejected(ProtocolError):
    """The instrument refused the command (NAK, or an answer other than OK)."""


class ValveNotConfirmed(HardwareError):
    """A valve's position indicators do not confirm the commanded state."""
