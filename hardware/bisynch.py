"""EI-Bisynch framing as Eurotherm controllers speak it: pure functions on bytes, no I/O.

A read request is EOT, the address, a two-character mnemonic and ENQ; the controller answers
STX, mnemonic, value, ETX, BCC (or EOT when it has no such parameter). A write request is EOT,
the address, then STX, mnemonic, value, ETX, BCC; the controller answers ACK or NAK. The address
is the group id and the unit id, single decimal digits each sent twice (group 0, unit 1 ->
b"0011"). BCC is the XOR of the bytes after STX up to and including ETX.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import ChecksumError, GarbledReply, OutOfRange

EOT, STX, ETX, ENQ, ACK, NAK = b"\x04", b"\x02", b"\x03", b"\x05", b"\x06", b"\x15"

# Values are sent with one decimal, the resolution Eurotherm controllers show by default.
VALUE_FORMAT = "{:.1f}"


class Request(NamedTuple):
    """A request as a controller receives it; `value` is None for a read."""

    gid: int
    uid: int
    mnemonic: str
    value: str | None


def bcc(data: bytes) -> bytes:
    """The block check character of `data` (the bytes after STX up to and including ETX), as one byte."""
    check = 0
    for byte in data:
        check ^= byte
    return bytes([check])


def address(gid: int, uid: int) -> bytes:
    """The four address bytes: each id's digit twice (group 0, unit 1 -> b"0011")."""
    return b"".join(str(_digit(n, what)).encode("ascii") * 2 for n, what in ((gid, "gid"), (uid, "uid")))


def encode_value(value: float) -> str:
    """A number as it goes on the wire, e.g. 500 -> "500.0"."""
    return VALUE_FORMAT.format(value)


def data_frame(mnemonic: str, value: str) -> bytes:
    """STX, mnemonic, value, ETX, BCC: a controller's answer to a read, and the tail of a write."""
    body = _text(mnemonic, "mnemonic", size=2) + _text(value, "value") + ETX
    return STX + body + bcc(body)


def read_request(gid: int, uid: int, mnemonic: str) -> bytes:
    """The request that asks unit (gid, uid) for the value of `mnemonic`."""
    return EOT + address(gid, uid) + _text(mnemonic, "mnemonic", size=2) + ENQ


def write_request(gid: int, uid: int, mnemonic: str, value: str) -> bytes:
    """The request that sets `mnemonic` of unit (gid, uid) to `value`."""
    return EOT + address(gid, uid) + data_frame(mnemonic, value)


def parse_data_frame(frame: bytes) -> tuple[str, str]:
    """(mnemonic, value) of a data frame; GarbledReply if it is not one, ChecksumError if its BCC is wrong."""
    if len(frame) < 5 or frame[:1] != STX or frame[-2:-1] != ETX:
        raise GarbledReply(f"not an STX ... ETX BCC frame: {frame!r}")
    body = frame[1:-1]
    if bcc(body) != frame[-1:]:
        raise ChecksumError(f"checksum {frame[-1]:#04x} of frame {frame!r} should be {bcc(body)[0]:#04x}")
    text = body[:-1]
    if any(not 0x20 <= byte < 0x7F for byte in text):
        raise GarbledReply(f"control or non-ASCII characters in frame {frame!r}")
    text = text.decode("ascii")
    return text[:2], text[2:]


def request_address(request: bytes) -> tuple[int, int]:
    """(gid, uid) of a request; GarbledReply when it does not start with EOT and a valid address."""
    digits = request[1:5]
    if request[:1] != EOT or len(digits) != 4 or not digits.isdigit() or digits[0] != digits[1] \
            or digits[2] != digits[3]:
        raise GarbledReply(f"request does not start with EOT and an address such as b'0011': {request!r}")
    return digits[0] - 0x30, digits[2] - 0x30


def parse_request(request: bytes) -> Request:
    """A request as sent by `read_request` or `write_request`; GarbledReply or ChecksumError if it is not one."""
    gid, uid = request_address(request)
    rest = request[5:]
    if len(rest) == 3 and rest[-1:] == ENQ:
        mnemonic = rest[:2]
        if any(not 0x20 < byte < 0x7F for byte in mnemonic):
            raise GarbledReply(f"read request with an invalid mnemonic: {request!r}")
        return Request(gid, uid, mnemonic.decode("ascii"), None)
    mnemonic, value = parse_data_frame(rest)
    return Request(gid, uid, mnemonic, value)


def take_request(buffer: bytearray) -> bytes | None:
    """Remove and return the first complete request in `buffer`, or None until one has arrived.

    Bytes before an EOT are line noise and are dropped; an EOT inside a request starts a new one
    (the request before it was cut short)."""
    while True:
        start = buffer.find(EOT)
        if start < 0:
            buffer.clear()
            return None
        del buffer[:start]
        for end in range(1, len(buffer)):
            byte = buffer[end:end + 1]
            if byte == EOT:
                del buffer[:end]
                break
            if byte == ENQ or byte == ETX:
                end += 1 if byte == ENQ else 2  # after ETX comes the BCC
                if end > len(buffer):
                    return None
                request = bytes(buffer[:end])
                del buffer[:end]
                return request
        else:
            return None


def _digit(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise OutOfRange(f"{what} must be a single decimal digit 0..9, got {value!r}")
    return value


def _text(text: str, what: str, size: int | None = None) -> bytes:
    if not isinstance(text, str) or not text.isascii() or not text.isprintable() \
            or (size is not None and len(text) != size):
        length = f"{size} " if size else ""
        raise OutOfRange(f"{what} must be {length}printable ASCII characters, got {text!r}")
    return text.encode("ascii")


__all__ = ["EOT", "STX", "ETX", "ENQ", "ACK", "NAK", "Request", "bcc", "address", "encode_value", "data_frame",
           "read_request", "write_request", "parse_data_frame", "request_address", "parse_request",
           "take_request"]
