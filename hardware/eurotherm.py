"""Eurotherm temperature controllers, spoken to in EI-Bisynch over a serial line."""

from __future__ import annotations

from typing import Any

from . import bisynch
from .errors import ChecksumError, GarbledReply, NoReply, Rejected
from .interfaces import TemperatureController
from .serial_link import SerialDevice, SerialLink

# Parameters by their two-character mnemonics.
PROCESS_VALUE, SETPOINT, OUTPUT = "PV", "SL", "OP"


class Eurotherm(SerialDevice, TemperatureController):
    """A Eurotherm controller (group `gid`, unit `uid`) at `port`: a device path or a pyserial URL.

    The line runs at `baudrate` with 7 data bits, even parity and 1 stop bit; each reply must come
    within `timeout` seconds. Setpoints are sent with one decimal.
    """

    def __init__(self, port: str, gid: int = 0, uid: int = 1, baudrate: int = 9600, timeout: float = 0.5,
                 min_setpoint: float = 0.0, max_setpoint: float = 1200.0) -> None:
        super().__init__(min_setpoint, max_setpoint)
        bisynch.address(gid, uid)  # refuse a bad address before the port is opened
        self._gid, self._uid = gid, uid
        self._link = SerialLink(port, baudrate=baudrate, bytesize=7, parity="E", stopbits=1, timeout=timeout)

    def _do_get_setpoint(self) -> float:
        return self._read(SETPOINT)

    def _do_set_setpoint(self, value: float) -> None:
        self._write(SETPOINT, bisynch.encode_value(value))

    def _do_read_temperature(self) -> float:
        return self._read(PROCESS_VALUE)

    def _do_get_output(self) -> float:
        return self._read(OUTPUT)

    def status(self) -> dict[str, Any]:
        return {**super().status(), "gid": self._gid, "uid": self._uid}

    def _read(self, mnemonic: str) -> float:
        what = f"read of {mnemonic}"
        first = self._send(bisynch.read_request(self._gid, self._uid, mnemonic), what)
        if first == bisynch.EOT:
            raise Rejected(f"{self._where()} has no parameter {mnemonic} (answered EOT to a {what})")
        if first == bisynch.NAK:
            raise Rejected(f"{self._where()} refused (NAK) a {what}")
        if first != bisynch.STX:
            raise GarbledReply(f"{self._where()} answered {first!r} to a {what}; expected STX")
        frame = first + self._link.read_until(bisynch.ETX)
        if frame.endswith(bisynch.ETX):
            frame += self._link.read(1)
        try:
            answered, value = bisynch.parse_data_frame(frame)
        except (GarbledReply, ChecksumError) as exc:
            raise type(exc)(f"{self._where()}, {what}: {exc}") from None
        if answered != mnemonic:
            raise GarbledReply(f"{self._where()} answered {answered} to a {what}")
        try:
            return float(value)
        except ValueError:
            raise GarbledReply(f"{self._where()} answered {value!r}, not a number, to a {what}") from None

    def _write(self, mnemonic: str, value: str) -> None:
        what = f"write of {mnemonic} = {value}"
        answer = self._send(bisynch.write_request(self._gid, self._uid, mnemonic, value), what)
        if answer == bisynch.NAK:
            raise Rejected(f"{self._where()} refused (NAK) a {what}")
        if answer != bisynch.ACK:
            raise GarbledReply(f"{self._where()} answered {answer!r} to a {what}; expected ACK or NAK")

    def _send(self, request: bytes, what: str) -> bytes:
        """Send a request and return the first byte of its answer; NoReply if none comes in time."""
        # Whatever is waiting now answers nothing we are about to ask, e.g. a reply that came late.
        self._link.discard_input()
        self._link.write(request)
        first = self._link.read(1)
        if not first:
            raise NoReply(f"{self._where()}: no reply to a {what} within {self._link.timeout:g} s")
        return first

    def _where(self) -> str:
        return f"eurotherm at {self._link.port} (group {self._gid}, unit {self._uid})"


__all__ = ["Eurotherm", "PROCESS_VALUE", "SETPOINT", "OUTPUT"]
