"""Pychron's extraction-line protocol, as pure functions: checksums, requests, replies, framing.

Both sides use it: labctl's drivers for an existing Pychron valve box (client side) and a gateway
that lets Pychron drive labctl's valves (server side). Written from labctl's PYCHRON.md, which
describes how the real Pychron code behaves; nothing here opens a socket.

Framing rule (for `parse`, `unframe` and `frame`): the four hex digits of `{XXXX}` count every
byte of the message, braces included. A trailing CR/LF terminator may be counted or not: a length
between the message without its trailing CR/LF bytes and the message with all of them is
accepted (the deployment doc counts the CRLF, a reader that stops at the first CR cannot).
`frame` never adds a terminator, so its length is that of `{XXXX}` plus the text's UTF-8 bytes.
"""

from __future__ import annotations

import json as jsonlib
import numbers
import re
import zlib
from collections.abc import Iterable
from typing import Any

import attrs

from . import errors

# Error codes Pychron's server answers with (PYCHRON.md, "Replies").
INVALID_COMMAND, INVALID_ARGUMENTS, INVALID_VALVE = 3, 4, 5
DEVICE_NOT_CONNECTED, VALVE_ACTUATION_FAILED, GAUGE_NOT_AVAILABLE = 8, 15, 16

ASCII_WHITESPACE = " \t\n\r\x0b\x0c"
TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1", "ok", "open"})
# JSON argument keys, in the order their values become Request.args: what names a thing comes
# before the quantity, so `Set` gives (device, value) and `GetPressure` (controller, gauge), as
# their text forms do.
JSON_ARGUMENT_KEYS = ("device", "controller", "gauge", "name", "action", "value", "setpoint")

FRAME_HEADER = 6  # len("{XXXX}")
FRAME_MAX = 0xFFFF

_COMMAND = re.compile(r"[A-Za-z0-9_]+")
_WORD_START = re.compile(r"[A-Za-z0-9_]")
_HEX4 = re.compile(rb"[0-9A-Fa-f]{4}")


class ProtocolError(errors.ProtocolError):
    """A request that breaks the protocol; `code` and `message` make its ERROR reply."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code, self.message = code, message

    def __str__(self) -> str:
        return self.message

    def reply(self) -> str:
        """The `ERROR 0NN : message` reply to send back."""
        return error(self.code, self.message)


class CrcMismatch(errors.ChecksumError):
    """A word's last four characters are not the crc16 of the rest."""


# ---------------------------------------------------------------- checksums

def crc16(text: str) -> str:
    """Modbus CRC-16 of `text`'s UTF-8 bytes, as 4 lowercase hex digits, low byte first."""
    crc = 0xFFFF
    for byte in text.encode("utf-8"):
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return f"{crc & 0xFF:02x}{crc >> 8:02x}"


def with_crc(body: str) -> str:
    """`body` followed at once by its crc16."""
    return body + crc16(body)


def check_crc(word: str) -> str:
    """The body of a word that ends in its crc16; CrcMismatch otherwise."""
    # Exact comparison: Pychron writes lowercase, and a word that differs in any way is not trusted.
    if len(word) < 4 or crc16(word[:-4]) != word[-4:]:
        raise CrcMismatch(f"crc16 mismatch in {word!r}: expected {crc16(word[:-4])!r} at its end"
                          if len(word) >= 4 else f"{word!r} is too short to end in a crc16")
    return word[:-4]


def state_checksum(entries: Iterable[tuple[str, bool, bool]]) -> int:
    """zlib CRC-32 of `VALVE-<name><open><locked>` for each (name, open, locked), in the order given."""
    text = "".join(f"VALVE-{name}{bool(is_open)}{bool(locked)}" for name, is_open, locked in entries)
    return zlib.crc32(text.encode("utf-8"))


def state_word(entries: Iterable[tuple[str, bool]]) -> str:
    """`A0,B1,C0` from (name, bit) pairs: the body of GetValveStates or GetValveLockStates."""
    return ",".join(f"{name}{int(bool(bit))}" for name, bit in entries)


def parse_state_word(body: str) -> list[tuple[str, bool]]:
    """(name, bit) pairs from a `A0,B1,C0` body (its crc16 already removed); GarbledReply if malformed."""
    if body == "":
        return []
    pairs = []
    for item in body.split(","):
        if len(item) < 2 or item[-1] not in "01":
            raise errors.GarbledReply(f"{item!r} in {body!r} is not a valve name followed by 0 or 1")
        pairs.append((item[:-1], item[-1] == "1"))
    return pairs


# ---------------------------------------------------------------- requests

@attrs.frozen
class Request:
    """One parsed request: its command, its arguments, whether it came framed, its JSON object if any."""

    command: str
    args: tuple[str, ...] = ()
    framed: bool = False
    json: dict | None = None


def is_framed(data: bytes) -> bool:
    """Whether `data` is meant as the framed form: `{` then a byte that cannot begin a JSON member."""
    # After `{` a JSON object has only whitespace, `"` or `}`; anything else is a frame header,
    # good or bad, so a bad one is refused as a frame (code 4), not as JSON (code 3).
    return len(data) >= 2 and data[:1] == b"{" and data[1:2] not in (b'"', b"}", b" ", b"\t", b"\r", b"\n",
                                                                        b"\x0b", b"\x0c")


def unframe(data: bytes) -> bytes:
    """The text of a framed message, its length checked (see the module's framing rule); ProtocolError 4 if wrong."""
    if len(data) < FRAME_HEADER or data[5:6] != b"}" or not _HEX4.fullmatch(data[1:5]):
        raise ProtocolError(INVALID_ARGUMENTS, f"invalid arguments: {data[:FRAME_HEADER]!r} is not a "
                                               "{XXXX} frame header (4 hex digits in braces)")
    declared = int(data[1:5], 16)
    core = data.rstrip(b"\r\n")
    if not len(core) <= declared <= len(data):
        counted = f"{len(core)}" if len(core) == len(data) else f"{len(core)} to {len(data)}"
        raise ProtocolError(INVALID_ARGUMENTS, f"invalid arguments: frame length {declared} "
                                               f"(0x{data[1:5].decode()}) does not match the message's {counted} bytes")
    return core[FRAME_HEADER:]


def parse(data: bytes) -> Request:
    """A Request from one request's bytes: framed `{XXXX}...`, raw text, or JSON; ProtocolError if invalid."""
    framed = is_framed(data)
    if framed:
        data = unframe(data)
    try:
        text = data.decode("utf-8").strip(ASCII_WHITESPACE)
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_COMMAND, f"invalid command: {data!r} is not UTF-8") from None
    if not text:
        raise ProtocolError(INVALID_COMMAND, "invalid command: empty request")
    if _WORD_START.match(text):
        return _parse_text(text, framed)
    return _parse_json(text, framed)


def _parse_text(text: str, framed: bool) -> Request:
    command, space, rest = text.partition(" ")
    if not _COMMAND.fullmatch(command):
        raise ProtocolError(INVALID_COMMAND, f"invalid command: {command}")
    if not space:
        args: tuple[str, ...] = ()
    elif command == "Set":  # `Set <name> <value>` is the one space-separated command
        args = tuple(rest.split(" ", 1))
    else:
        args = tuple(rest.split(","))
    return Request(command, args, framed, None)


def _parse_json(text: str, framed: bool) -> Request:
    try:
        obj = jsonlib.loads(text)
    except ValueError:
        raise ProtocolError(INVALID_COMMAND, f"invalid command: {text[:80]!r} is neither a command nor a "
                                             "JSON object") from None
    if not isinstance(obj, dict):
        raise ProtocolError(INVALID_COMMAND, f"invalid command: a JSON request must be an object, got {text[:80]!r}")
    command = obj.get("command")
    if not isinstance(command, str) or not _COMMAND.fullmatch(command):
        raise ProtocolError(INVALID_COMMAND, f"invalid command: {command!r}")
    args: list[str] = []
    for key in JSON_ARGUMENT_KEYS:
        value = obj.get(key)
        if value is None:
            continue
        if isinstance(value, (dict, list)):
            raise ProtocolError(INVALID_ARGUMENTS, f"invalid arguments: {command} {key}={jsonlib.dumps(value)}")
        item = _json_scalar(value)
        # `value` carries what the text form puts after the space, so it is split on ',' as that is
        # (GetStateChecksum gets the same names either way).
        args.extend(item.split(",") if key == "value" else [item])
    return Request(command, tuple(args), framed, obj)


def _json_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"  # as `Set <flag> <0|1>` writes it
    return str(value)


# ---------------------------------------------------------------- replies

def render(value: Any) -> str:
    """A value as Pychron's server writes it: True 'OK', False 'False', None 'No Response', numbers, text."""
    if value is True:
        return "OK"
    if value is False:
        return "False"
    if value is None:
        return "No Response"
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return str(float(value))
    raise TypeError(f"cannot render {type(value).__name__} {value!r} as a Pychron reply")


def error(code: int, message: str) -> str:
    """`ERROR 004 : message`: an error reply with its 3-digit code."""
    if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= 999:
        raise ValueError(f"an error code is 0..999, got {code!r}")
    return f"ERROR {code:03d} : {message}"


def frame(text: str) -> str:
    """`{XXXX}text`, XXXX the length in hex of the whole (braces and text, UTF-8 bytes; no terminator)."""
    length = FRAME_HEADER + len(text.encode("utf-8"))
    if length > FRAME_MAX:
        raise ValueError(f"a {length}-byte message is too long for a {{XXXX}} frame (at most {FRAME_MAX})")
    return f"{{{length:04X}}}{text}"


def truthy(reply: str) -> bool:
    """Whether a Pychron client takes `reply` as true: true, t, yes, y, 1, ok, open, in any case."""
    return reply.strip(ASCII_WHITESPACE).lower() in TRUE_WORDS


__all__ = [
    "ProtocolError", "CrcMismatch", "Request", "crc16", "with_crc", "check_crc", "state_checksum",
    "state_word", "parse_state_word", "is_framed", "unframe", "parse", "render", "error", "frame", "truthy",
    "INVALID_COMMAND", "INVALID_ARGUMENTS", "INVALID_VALVE", "DEVICE_NOT_CONNECTED",
    "VALVE_ACTUATION_FAILED", "GAUGE_NOT_AVAILABLE", "JSON_ARGUMENT_KEYS",
]
