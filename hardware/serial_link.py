"""A serial port opened by device path or pyserial URL, whose every failure surfaces as LinkError."""

from __future__ import annotations

import errno
import os
from typing import Any

import serial

from .errors import LinkError, OutOfRange
from .interfaces import Device, number, whole_number

try:
    import termios
except ImportError:  # not a POSIX system: pyserial then raises only OSError and SerialException
    _PORT_ERRORS: tuple[type[BaseException], ...] = (OSError, serial.SerialException)
else:
    # tcflush (reset_input_buffer) on a tty whose device vanished raises termios.error, not OSError.
    _PORT_ERRORS = (OSError, serial.SerialException, termios.error)


def is_url(port: str) -> bool:
    """Whether `port` is a pyserial URL (socket://, rfc2217://, loop://) rather than a device path."""
    return "://" in port


def _reason(exc: BaseException) -> str:
    """Why a port operation failed, without pyserial's repetition of the port's name."""
    code = exc.args[0] if len(exc.args) == 2 and isinstance(exc.args[0], int) else None
    if code in (errno.EAGAIN, errno.EWOULDBLOCK):  # pyserial's exclusive lock is taken
        return "another process holds it"
    if code is not None:
        return os.strerror(code) + (" (was the device unplugged?)" if code == errno.EIO else "")
    return str(exc)


class SerialLink:
    """One serial port: open by path or URL, write, read with a timeout, close and reopen.

    A device path is opened exclusively, so that two processes can never hold one instrument.
    """

    def __init__(self, port: str, *, baudrate: int = 9600, bytesize: int = 8, parity: str = "N",
                 stopbits: float = 1, timeout: float = 0.5) -> None:
        if not isinstance(port, str) or not port.strip():
            raise OutOfRange(f"port must be a device path or a pyserial URL, got {port!r}")
        self._timeout = number(timeout, "timeout")
        if self._timeout <= 0:
            raise OutOfRange(f"timeout must be positive, got {timeout!r}")
        self._name = port
        self._settings = {"baudrate": whole_number(baudrate, "baudrate", low=1), "bytesize": bytesize,
                          "parity": parity, "stopbits": stopbits, "timeout": self._timeout}
        if not is_url(port):
            self._settings["exclusive"] = True
        self._port: serial.SerialBase | None = None
        self.open()

    @property
    def port(self) -> str:
        """The path or URL as configured (a symlink stays a symlink, so a replugged device is found again)."""
        return self._name

    @property
    def timeout(self) -> float:
        """Seconds to wait for a reply."""
        return self._timeout

    @property
    def is_open(self) -> bool:
        """Whether the port is open."""
        return self._port is not None

    def open(self) -> None:
        """Open the port; LinkError when it is missing or held by another process."""
        if self._port is not None:
            return
        try:
            port = serial.serial_for_url(self._name, do_not_open=True, **self._settings)
        except ValueError as exc:  # an unknown URL scheme or a setting pyserial refuses
            raise OutOfRange(f"serial port {self._name}: {exc}") from None
        try:
            port.open()
        except _PORT_ERRORS as exc:
            raise LinkError(f"cannot open serial port {self._name}: {_reason(exc)}") from exc
        self._port = port

    def close(self) -> None:
        """Close the port. Safe to call more than once, and when the device is already gone."""
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except _PORT_ERRORS:
                pass  # the device vanished; its file descriptor is released all the same

    def reopen(self) -> None:
        """Close, then open the same path or URL again; LinkError while the device is still gone."""
        self.close()
        self.open()

    def discard_input(self) -> None:
        """Drop whatever has arrived unasked, such as a late reply to an earlier command."""
        self._use(lambda port: port.reset_input_buffer())

    def write(self, data: bytes) -> None:
        """Send bytes."""
        self._use(lambda port: port.write(data))

    def read(self, size: int = 1) -> bytes:
        """Up to `size` bytes; fewer (maybe none) when the timeout passes first."""
        return self._use(lambda port: port.read(size))

    def read_until(self, terminator: bytes, size: int = 256) -> bytes:
        """Bytes up to and including `terminator`; less when the timeout passes or `size` bytes came first."""
        return self._use(lambda port: port.read_until(terminator, size))

    def _use(self, action: Any) -> Any:
        if self._port is None:
            raise LinkError(f"serial port {self._name} is not open; reconnect first")
        try:
            return action(self._port)
        except _PORT_ERRORS as exc:
            # The device is gone (e.g. a USB adapter was unplugged): release the port at once so that
            # a reconnect, or another process, can open it when it returns.
            self.close()
            raise LinkError(f"lost the link on serial port {self._name}: {_reason(exc)}") from exc

    def __repr__(self) -> str:
        return f"SerialLink({self._name!r}, {'open' if self.is_open else 'closed'})"


class SerialDevice(Device):
    """A driver that talks over one SerialLink kept in `self._link`: reconnect, shut down, report the port."""

    _link: SerialLink

    def reconnect(self) -> None:
        """Close and reopen the same port; LinkError while the device is still gone."""
        self._link.reopen()

    def _do_shutdown(self) -> None:
        # A driver whose constructor failed before opening its link has nothing to close.
        link = self.__dict__.get("_link")
        if link is not None:
            link.close()

    def status(self) -> dict[str, Any]:
        return {**super().status(), "port": self._link.port}

    def __enter__(self) -> SerialDevice:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.shutdown()


__all__ = ["SerialLink", "SerialDevice", "is_url", "whole_number"]
