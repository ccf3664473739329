"""Pychron's extraction-line protocol as pure functions: known values from PYCHRON.md, the three
request forms, framing, and what is refused."""

import zlib

import attrs
import pytest

from labctl.hardware.errors import ChecksumError, GarbledReply, HardwareError
from labctl.hardware.pychronwire import (CrcMismatch, ProtocolError, Request, check_crc, crc16, error, frame,
                                         is_framed, parse, parse_state_word, render, state_checksum, state_word,
                                         truthy, unframe, with_crc)


# ---------------------------------------------------------------- crc16

@pytest.mark.parametrize("text, crc", [
    ("", "ffff"), ("OK", "75b7"), ("A,B,C", "edba"), ("A0,B0,C0,D0,E0,F0", "2f85"),
    ("123456789", "374b"),  # the Modbus check value 0x4B37, low byte first
])
def test_crc16_known_values(text, crc):
    assert crc16(text) == crc


def test_crc16_is_over_utf8_bytes():
    assert crc16("é") == crc16("\u00e9") != crc16("e")
    assert crc16("é") == "913e"  # over b"\xc3\xa9", not over the code point 0xE9 (which gives "7ece")


def test_with_crc_appends_and_check_crc_returns_the_body():
    assert with_crc("A0,B0,C0,D0,E0,F0") == "A0,B0,C0,D0,E0,F02f85"
    assert check_crc("A0,B0,C0,D0,E0,F02f85") == "A0,B0,C0,D0,E0,F0"
    assert check_crc(with_crc("")) == ""
    assert check_crc(with_crc("V10,V21")) == "V10,V21"


@pytest.mark.parametrize("word", [
    "A0,B0,C0,D0,E0,F02f84",    # one digit off
    "A0,B0,C0,D0,E0,F12f85",    # the body changed (F opened), the crc did not
    "A0,B0,C0,D0,E0,F02F85",    # upper case is not what the box writes
    "A0,B0,C0,D0,E0,F0",        # no crc at all: its last four characters taken as one
    "ffe", "",                  # too short to hold a crc
    "ERROR 015 : Valve A failed to actuate open",
])
def test_check_crc_refuses_a_word_that_does_not_end_in_its_crc(word):
    with pytest.raises(CrcMismatch) as caught:
        check_crc(word)
    assert isinstance(caught.value, ChecksumError) and isinstance(caught.value, HardwareError)
    assert repr(word) in str(caught.value)


# ---------------------------------------------------------------- state words and checksum

def test_state_checksum_is_crc32_of_the_concatenation_in_the_order_given():
    entries = [("A", True, False), ("B", False, False), ("C", False, True)]
    expected = zlib.crc32(b"VALVE-ATrueFalseVALVE-BFalseFalseVALVE-CFalseTrue")
    assert state_checksum(entries) == expected
    assert state_checksum(reversed(entries)) == zlib.crc32(b"VALVE-CFalseTrueVALVE-BFalseFalseVALVE-ATrueFalse")
    assert state_checksum([("A", 1, 0)]) == zlib.crc32(b"VALVE-ATrueFalse")  # bits are words, not digits
    assert state_checksum([]) == 0
    assert isinstance(state_checksum(entries), int) and state_checksum(entries) >= 0


def test_state_word_and_its_parse():
    assert state_word([("A", False), ("B", True), ("C", False)]) == "A0,B1,C0"
    assert parse_state_word("A0,B1,C0") == [("A", False), ("B", True), ("C", False)]
    assert parse_state_word("V10,V11") == [("V1", False), ("V1", True)]  # names may end in digits
    assert parse_state_word("") == []


@pytest.mark.parametrize("body", ["A", "A0,,B1", "A2", "A0,B"])
def test_a_malformed_state_word_is_garbled(body):
    with pytest.raises(GarbledReply):
        parse_state_word(body)


# ---------------------------------------------------------------- raw requests

@pytest.mark.parametrize("data, command, args", [
    (b"Open A", "Open", ("A",)),
    (b"Open A\r", "Open", ("A",)),
    (b"  \t Close B \r\n", "Close", ("B",)),
    (b"GetValveStates", "GetValveStates", ()),
    (b"GetValveStates\r\n", "GetValveStates", ()),
    (b"GetStateChecksum A,B,C", "GetStateChecksum", ("A", "B", "C")),
    (b"GetPressure bone,ion", "GetPressure", ("bone", "ion")),
    (b"Set MSFlag 1", "Set", ("MSFlag", "1")),
    (b"Set MSFlag", "Set", ("MSFlag",)),
    (b"Read MSFlag", "Read", ("MSFlag",)),
    (b"SetSetpoint 500.5", "SetSetpoint", ("500.5",)),
    (b"Open A B", "Open", ("A B",)),           # one argument: only ',' splits
    (b"Open  A", "Open", (" A",)),             # everything after the first single space
    (b"get_valve_state_2 x", "get_valve_state_2", ("x",)),
])
def test_raw_requests(data, command, args):
    assert parse(data) == Request(command, args, False, None)


@pytest.mark.parametrize("data", [b"", b"   ", b"\r\n", b"\t \r"])
def test_an_empty_request_is_an_invalid_command(data):
    with pytest.raises(ProtocolError) as caught:
        parse(data)
    assert caught.value.code == 3
    assert caught.value.reply() == "ERROR 003 : invalid command: empty request"


@pytest.mark.parametrize("data, named", [
    (b"Open-Valve A", "Open-Valve"), (b"Open\tA", "Open\tA"), (b"Op.en A", "Op.en"),
    (b"Open\xc3\xa9 A", "Open\u00e9"),  # ASCII letters only
])
def test_a_command_outside_the_syntax_is_an_invalid_command(data, named):
    with pytest.raises(ProtocolError) as caught:
        parse(data)
    assert caught.value.code == 3
    assert str(caught.value) == f"invalid command: {named}"


def test_only_ascii_whitespace_is_stripped():
    # Python's str.strip would also take the no-break space and the file separator.
    assert parse("Open A\u00a0".encode()).args == ("A\u00a0",)
    assert parse(b"Open A\x1c").args == ("A\x1c",)
    assert parse(b"\x0b\x0cOpen A\x0b\x0c").args == ("A",)


def test_bytes_that_are_not_utf8_are_an_invalid_command():
    with pytest.raises(ProtocolError) as caught:
        parse(b"Open \xff")
    assert caught.value.code == 3


def test_a_protocol_error_is_a_hardware_error_and_pickles():
    import pickle
    exc = pickle.loads(pickle.dumps(ProtocolError(4, "invalid arguments: Open Z")))
    assert isinstance(exc, HardwareError)
    assert (exc.code, exc.message, exc.reply()) == (4, "invalid arguments: Open Z",
                                                    "ERROR 004 : invalid arguments: Open Z")


# ---------------------------------------------------------------- JSON requests

@pytest.mark.parametrize("text, command, args", [
    ('{"command": "Open", "value": "A"}', "Open", ("A",)),
    ('{"command": "GetValveStates"}', "GetValveStates", ()),
    ('{"command": "SetSetpoint", "setpoint": 500}', "SetSetpoint", ("500",)),
    ('{"command": "SetSetpoint", "setpoint": 500.5}', "SetSetpoint", ("500.5",)),
    ('{"command": "SetSetpoint", "value": "450"}', "SetSetpoint", ("450",)),
    ('{"gauge": "ion", "controller": "bone", "command": "GetPressure"}', "GetPressure", ("bone", "ion")),
    ('{"command": "Set", "value": 1, "device": "MSFlag"}', "Set", ("MSFlag", "1")),
    ('{"command": "Set", "value": true, "device": "MSFlag"}', "Set", ("MSFlag", "1")),
    ('{"command": "Laser", "action": "fire", "name": "co2"}', "Laser", ("co2", "fire")),
    ('{"command": "GetStateChecksum", "value": "A,B,C"}', "GetStateChecksum", ("A", "B", "C")),
    ('{"command": "Open", "value": null, "extra": 1}', "Open", ()),
    ('  {"command": "Open", "value": "A"}\r\n', "Open", ("A",)),
])
def test_json_requests_map_their_keys_to_args_in_the_documented_order(text, command, args):
    request = parse(text.encode())
    assert (request.command, request.args, request.framed) == (command, args, False)
    assert request.json["command"] == command


@pytest.mark.parametrize("text, code", [
    ('{"value": "A"}', 3),                       # no command
    ('{"command": "Open A"}', 3),                # not a command name
    ('{"command": 7}', 3),
    ('{"command": "Open", "value": ', 3),        # not JSON
    ('["Open", "A"]', 3),                        # JSON, not an object
    ('?Open A', 3),
    ('{"command": "Open", "value": ["A"]}', 4),  # an argument must be a scalar
    ('{"command": "Open", "value": {"v": "A"}}', 4),
])
def test_bad_json_requests_are_refused(text, code):
    with pytest.raises(ProtocolError) as caught:
        parse(text.encode())
    assert caught.value.code == code
    assert caught.value.reply().startswith(f"ERROR {code:03d} : invalid ")


# ---------------------------------------------------------------- framing

def test_frame_counts_the_braces_and_the_text_in_bytes():
    assert frame("OK") == "{0008}OK"
    assert frame("Open A") == "{000C}Open A"
    assert frame("") == "{0006}"
    assert frame("é") == "{0008}é"  # two UTF-8 bytes
    assert frame("x" * 0xFFF9).startswith("{FFFF}")
    with pytest.raises(ValueError):
        frame("x" * 0xFFFA)


@pytest.mark.parametrize("data", [
    b"{000C}Open A",          # no terminator
    b"{000C}Open A\r\n",      # terminator present, not counted
    b"{000E}Open A\r\n",      # terminator counted, as the deployment doc describes
    b"{000D}Open A\r\n",      # only its CR counted (a reader stopping at CR)
    b"{000D}Open A\r",
    b"{000c}Open A",          # lower-case hex
])
def test_framed_requests(data):
    assert parse(data) == Request("Open", ("A",), True, None)


def test_frame_and_parse_agree():
    for text in ("Open A", "GetValveStates", "Set MSFlag 1", '{"command": "Open", "value": "B"}', "SetSetpoint é"):
        assert parse(frame(text).encode()) == attrs.evolve(parse(text.encode()), framed=True)
        assert parse((frame(text) + "\r\n").encode()) == attrs.evolve(parse(text.encode()), framed=True)


def test_the_deployment_docs_own_example_is_off_by_one_and_refused():
    with pytest.raises(ProtocolError) as caught:
        parse(b"{000F}Open A\r\n")  # 14 bytes, not 15
    assert caught.value.code == 4
    assert str(caught.value) == ("invalid arguments: frame length 15 (0x000F) does not match the message's "
                                 "12 to 14 bytes")


@pytest.mark.parametrize("data", [
    b"{000B}Open A", b"{000D}Open A", b"{0000}Open A", b"{FFFF}Open A",
    b"{000A}Open A\r\n",      # shorter even than the message without its terminator
])
def test_a_wrong_frame_length_is_refused_with_code_4(data):
    with pytest.raises(ProtocolError) as caught:
        parse(data)
    assert caught.value.code == 4
    assert caught.value.reply().startswith("ERROR 004 : invalid arguments: frame length ")


@pytest.mark.parametrize("data", [b"{00G1}Open A", b"{12}Open A", b"{0x0C}Open", b"{+00C}Open A", b"{000C Open A",
                                  b"{0"])
def test_a_bad_frame_header_is_refused_with_code_4(data):
    assert is_framed(data)
    with pytest.raises(ProtocolError) as caught:
        parse(data)
    assert caught.value.code == 4
    assert "frame header" in str(caught.value)


def test_json_is_never_taken_for_a_frame():
    for data in (b'{"command": "Open"}', b'{ "command": "Open"}', b"{}", b'{\n"command": "Open"}'):
        assert not is_framed(data)


def test_a_framed_empty_or_invalid_body_is_an_invalid_command():
    for data, code in ((b"{0006}", 3), (b"{0008}-x", 3), (b"{0007} \r\n", 3)):
        with pytest.raises(ProtocolError) as caught:
            parse(data)
        assert caught.value.code == code


def test_unframe_returns_the_text():
    assert unframe(b"{0008}OK") == b"OK"
    assert unframe(b"{0008}OK\r\n") == b"OK"


# ---------------------------------------------------------------- replies

@pytest.mark.parametrize("value, text", [
    (True, "OK"), (False, "False"), (None, "No Response"), (0, "0"), (1, "1"), (-12, "-12"),
    (1.0, "1.0"), (0.1, "0.1"), (1e-07, "1e-07"), (500.25, "500.25"), ("A0,B1", "A0,B1"), ("", ""),
    (2**40, "1099511627776"),
])
def test_render(value, text):
    assert render(value) == text


def test_render_refuses_what_the_protocol_cannot_say():
    with pytest.raises(TypeError):
        render([1, 2])


def test_error_replies_have_a_three_digit_code():
    assert error(4, "invalid arguments: Open Z") == "ERROR 004 : invalid arguments: Open Z"
    assert error(15, "Valve A failed to actuate open") == "ERROR 015 : Valve A failed to actuate open"
    assert error(5, "Z is not a registered valve name") == "ERROR 005 : Z is not a registered valve name"
    for code in (-1, 1000, True, "4"):
        with pytest.raises(ValueError):
            error(code, "x")


@pytest.mark.parametrize("reply", ["true", "True", "t", "T", "yes", "YES", "y", "1", "ok", "OK", "Ok", "open",
                                   "OPEN", " OK\r\n"])
def test_truthy_replies(reply):
    assert truthy(reply)


@pytest.mark.parametrize("reply", ["False", "false", "0", "No Response", "", "ERROR 015 : Valve A failed to actuate "
                                   "open", "OKAY", "closed", "2", "none", "o k"])
def test_everything_else_is_false(reply):
    assert not truthy(reply)
