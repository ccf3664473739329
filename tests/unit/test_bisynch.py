"""EI-Bisynch framing against byte vectors worked out by hand (ASCII codes in the comments)."""

import pytest

from labctl.hardware import bisynch
from labctl.hardware.errors import ChecksumError, GarbledReply, OutOfRange


def test_address_repeats_each_digit():
    assert bisynch.address(0, 1) == b"0011"
    assert bisynch.address(3, 7) == b"3377"


@pytest.mark.parametrize("gid, uid", [(10, 1), (0, -1), (True, 1), ("0", 1)])
def test_address_refuses_anything_but_single_digits(gid, uid):
    with pytest.raises(OutOfRange, match="single decimal digit"):
        bisynch.address(gid, uid)


def test_bcc_is_the_xor_after_stx_through_etx():
    # S 0x53 ^ L 0x4C = 0x1F; ^ '5' 0x35 = 0x2A; ^ '0' 0x30 = 0x1A; ^ '0' 0x30 = 0x2A;
    # ^ '.' 0x2E = 0x04; ^ '0' 0x30 = 0x34; ^ ETX 0x03 = 0x37 ('7')
    assert bisynch.bcc(b"SL500.0\x03") == b"\x37"
    # P 0x50 ^ V 0x56 = 0x06; ^ '1' 0x31 = 0x37; ^ ETX 0x03 = 0x34 ('4')
    assert bisynch.bcc(b"PV1\x03") == b"\x34"


def test_read_request():
    assert bisynch.read_request(0, 1, "PV") == b"\x04" b"0011" b"PV" b"\x05"
    assert bisynch.read_request(2, 5, "OP") == b"\x04" b"2255" b"OP" b"\x05"


def test_write_request():
    # BCC of b"SL500.0\x03" is 0x37, worked out in test_bcc_is_the_xor_after_stx_through_etx.
    assert bisynch.write_request(0, 1, "SL", "500.0") == b"\x04" b"0011" b"\x02" b"SL500.0" b"\x03" b"\x37"


def test_data_frame_of_a_read_reply():
    # P 0x50 ^ V 0x56 = 0x06; ^ '2' 0x32 = 0x34; ^ '0' 0x30 = 0x04; ^ '.' 0x2E = 0x2A;
    # ^ '0' 0x30 = 0x1A; ^ ETX 0x03 = 0x19
    assert bisynch.data_frame("PV", "20.0") == b"\x02" b"PV20.0" b"\x03" b"\x19"


def test_values_go_out_with_one_decimal():
    assert bisynch.encode_value(500) == "500.0"
    assert bisynch.encode_value(-12.25) == "-12.2"


def test_parse_data_frame():
    # O 0x4F ^ P 0x50 = 0x1F; ^ '4' 0x34 = 0x2B; ^ '5' 0x35 = 0x1E; ^ '.' 0x2E = 0x30;
    # ^ '5' 0x35 = 0x05; ^ ETX 0x03 = 0x06 (the same byte as ACK, and still just a BCC)
    assert bisynch.parse_data_frame(b"\x02" b"OP45.5" b"\x03" b"\x06") == ("OP", "45.5")


def test_a_wrong_bcc_is_a_checksum_error():
    with pytest.raises(ChecksumError, match="0x18.*should be 0x19"):
        bisynch.parse_data_frame(b"\x02" b"PV20.0" b"\x03" b"\x18")


@pytest.mark.parametrize("frame", [
    b"",
    b"\x02PV20.0",                   # cut short: no ETX, no BCC
    b"?PV20.0\x03\x19",              # no STX
    b"\x02PV20.0\x03",               # no BCC
])
def test_what_is_not_a_frame_is_garbled(frame):
    with pytest.raises(GarbledReply, match="not an STX"):
        bisynch.parse_data_frame(frame)


def test_a_control_character_inside_a_frame_is_garbled():
    # P 0x50 ^ 0x01 = 0x51; ^ ETX 0x03 = 0x52: the BCC is right, the content is not.
    with pytest.raises(GarbledReply, match="control"):
        bisynch.parse_data_frame(b"\x02" b"P\x01" b"\x03" b"\x52")


def test_parse_read_and_write_requests():
    assert bisynch.parse_request(b"\x04" b"0011" b"SL" b"\x05") == (0, 1, "SL", None)
    assert bisynch.parse_request(b"\x04" b"2255" b"\x02" b"SL500.0" b"\x03" b"\x37") == (2, 5, "SL", "500.0")


def test_a_write_request_with_a_wrong_bcc_is_a_checksum_error():
    with pytest.raises(ChecksumError):
        bisynch.parse_request(b"\x04" b"0011" b"\x02" b"SL500.0" b"\x03" b"\x36")


@pytest.mark.parametrize("request_", [b"\x040012PV\x05", b"\x0400AAPV\x05", b"0011PV\x05"])
def test_a_request_without_a_proper_address_is_garbled(request_):
    with pytest.raises(GarbledReply, match="address"):
        bisynch.request_address(request_)


def test_take_request_splits_a_stream_and_drops_noise():
    # S 0x53 ^ L 0x4C = 0x1F; ^ '1' 0x31 = 0x2E; ^ '1' 0x31 = 0x1F; ^ '.' 0x2E = 0x31;
    # ^ '6' 0x36 = 0x07; ^ ETX 0x03 = 0x04: this write's BCC is the EOT byte itself.
    write = b"\x04" b"0011" b"\x02" b"SL11.6" b"\x03" b"\x04"
    read = b"\x04" b"0011" b"PV" b"\x05"
    buffer = bytearray(b"noise" + write + read + b"\x04" b"00")
    assert bisynch.take_request(buffer) == write
    assert bisynch.take_request(buffer) == read
    assert bisynch.take_request(buffer) is None
    assert buffer == b"\x04" b"00"  # the start of the next request waits for the rest


def test_take_request_waits_for_the_bcc_and_restarts_at_a_new_eot():
    buffer = bytearray(b"\x04" b"0011" b"\x02" b"SL500.0" b"\x03")
    assert bisynch.take_request(buffer) is None
    buffer += b"\x37"
    assert bisynch.take_request(buffer) == b"\x04" b"0011" b"\x02" b"SL500.0" b"\x03" b"\x37"
    buffer += b"\x04" b"00" + b"\x04" b"0011" b"OP" b"\x05"  # a request cut short, then a whole one
    assert bisynch.take_request(buffer) == b"\x04" b"0011" b"OP" b"\x05"
    assert buffer == b""
