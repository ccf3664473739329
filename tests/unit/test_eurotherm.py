"""The Eurotherm driver against its emulator, over a real pseudo-terminal."""

import time

import pytest

from labctl.hardware import bisynch
from labctl.hardware.emulators import EurothermEmulator
from labctl.hardware.errors import (ChecksumError, GarbledReply, LinkError, NoReply, OutOfRange,
                                    Rejected)
from labctl.hardware.eurotherm import Eurotherm
from labctl.hardware.serial_link import SerialLink

REPLY_S = 0.2  # the driver's reply timeout: short, so that silence is found out fast


@pytest.fixture
def emulator():
    with EurothermEmulator(setpoint=300.0, ambient=20.0, tau_s=1000.0, slow_s=0.3) as emu:
        yield emu
    assert not emu.running


@pytest.fixture
def furnace(emulator):
    driver = Eurotherm(emulator.port, timeout=REPLY_S)
    yield driver
    driver.shutdown()


def wait_until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"


def test_reads_pv_sl_and_op(furnace):
    assert furnace.get_setpoint() == 300.0
    assert 20.0 <= furnace.read_temperature() < 25.0  # starts at ambient, creeps up slowly
    assert furnace.get_output() == 100.0  # 280 degrees below the setpoint: full power


def test_set_setpoint_reaches_the_instrument(furnace, emulator):
    assert furnace.set_setpoint(450.5) == 450.5
    assert emulator.setpoint == 450.5
    assert furnace.get_setpoint() == 450.5


def test_a_setpoint_whose_bcc_is_the_eot_byte_goes_through(furnace, emulator):
    # The write of SL 11.6 ends in BCC 0x04 (worked out in test_bisynch); it must not be taken for a new request.
    furnace.set_setpoint(11.6)
    assert emulator.setpoint == 11.6


def test_temperature_approaches_the_setpoint():
    with EurothermEmulator(setpoint=20.0, ambient=20.0, tau_s=0.05) as emu:
        with Eurotherm(emu.port, timeout=REPLY_S) as driver:
            driver.set_setpoint(100.0)
            first = driver.read_temperature()
            wait_until(lambda: driver.read_temperature() > 99.0)
            assert first < 99.0
            driver.set_setpoint(20.0)
            assert driver.get_output() == 0.0  # far above the setpoint: no power


def test_a_setpoint_outside_the_drivers_limits_is_refused_before_sending(furnace, emulator):
    before = emulator.received
    with pytest.raises(OutOfRange, match="1300 is out of range"):
        furnace.set_setpoint(1300)
    assert emulator.received == before


def test_a_setpoint_the_instrument_refuses_is_rejected():
    with EurothermEmulator(max_setpoint=1000.0) as emu:
        with Eurotherm(emu.port, timeout=REPLY_S) as driver:
            with pytest.raises(Rejected, match="NAK"):
                driver.set_setpoint(1100.0)
            assert emu.setpoint == 20.0


@pytest.mark.parametrize("fault, error", [
    ("no_reply", NoReply), ("garbage", GarbledReply), ("bad_checksum", ChecksumError), ("nak", Rejected)])
def test_each_fault_on_a_read_raises_its_own_error_then_serving_resumes(furnace, emulator, fault, error):
    emulator.inject(fault)
    with pytest.raises(error) as caught:
        furnace.read_temperature()
    assert caught.type is error
    assert "read of PV" in str(caught.value)
    assert furnace.get_setpoint() == 300.0


@pytest.mark.parametrize("fault, error", [("bad_checksum", Rejected), ("nak", Rejected), ("no_reply", NoReply)])
def test_a_faulty_write_is_not_carried_out(furnace, emulator, fault, error):
    emulator.inject(fault)
    with pytest.raises(error):
        furnace.set_setpoint(400.0)
    assert emulator.setpoint == 300.0
    furnace.set_setpoint(400.0)
    assert emulator.setpoint == 400.0


def test_a_fault_until_cleared(furnace, emulator):
    emulator.inject("garbage", count=None)
    for _ in range(3):
        with pytest.raises(GarbledReply):
            furnace.get_setpoint()
    emulator.clear()
    assert furnace.get_setpoint() == 300.0


def test_a_slow_reply_within_the_timeout_is_fine():
    with EurothermEmulator(setpoint=250.0, slow_s=0.05) as emu:
        with Eurotherm(emu.port, timeout=REPLY_S) as driver:
            emu.inject("slow")
            assert driver.get_setpoint() == 250.0


def test_a_late_reply_is_not_taken_for_the_next_answer(furnace, emulator):
    emulator.inject("slow")  # the SL reply comes 0.3 s late, after the driver gave up at 0.2 s
    with pytest.raises(NoReply):
        furnace.get_setpoint()
    assert emulator.wait_idle()  # the late SL frame now waits in the driver's input
    assert furnace.read_temperature() < 25.0  # a PV, not the stale SL reply of 300


def test_requests_for_another_unit_go_unanswered(emulator):
    with Eurotherm(emulator.port, uid=2, timeout=REPLY_S) as other:
        with pytest.raises(NoReply, match="unit 2"):
            other.read_temperature()
        assert emulator.received == 0


def test_the_emulator_naks_a_write_with_a_wrong_bcc_and_eots_an_unknown_parameter(emulator):
    link = SerialLink(emulator.port, bytesize=7, parity="E", timeout=REPLY_S)
    try:
        link.write(b"\x04" b"0011" b"\x02" b"SL500.0" b"\x03" b"\x36")  # the right BCC is 0x37
        assert link.read(1) == b"\x15"
        link.write(b"\x04" b"0011" b"XX" b"\x05")
        assert link.read(1) == b"\x04"
        assert emulator.setpoint == 300.0
    finally:
        link.close()


def test_unplug_then_reconnect_after_replug(furnace, emulator):
    emulator.unplug()
    with pytest.raises(LinkError, match=emulator.port):
        furnace.read_temperature()
    with pytest.raises(LinkError, match="No such file"):
        furnace.reconnect()
    emulator.replug()
    furnace.reconnect()
    assert furnace.get_setpoint() == 300.0


def test_two_drivers_cannot_hold_one_port(furnace, emulator):
    with pytest.raises(LinkError, match="another process holds it"):
        Eurotherm(emulator.port, timeout=REPLY_S)
    assert furnace.get_setpoint() == 300.0


def test_shutdown_releases_the_port(furnace, emulator):
    assert furnace.get_setpoint() == 300.0
    furnace.shutdown()
    with pytest.raises(LinkError, match="not open"):
        furnace.read_temperature()
    with Eurotherm(emulator.port, timeout=REPLY_S) as second:
        assert second.get_setpoint() == 300.0


def test_a_missing_port_is_a_link_error():
    with pytest.raises(LinkError, match="/nonexistent/tty"):
        Eurotherm("/nonexistent/tty")


def test_status_names_port_and_address(furnace, emulator):
    status = furnace.status()
    assert status["port"] == emulator.port
    assert (status["gid"], status["uid"], status["setpoint"]) == (0, 1, 300.0)


def test_the_reply_frame_is_what_the_driver_reads(emulator):
    # Hand-made bytes on the wire, against the emulator: SL 300.0 -> S 0x53 ^ L 0x4C = 0x1F;
    # ^ '3' 0x33 = 0x2C; ^ '0' 0x30 = 0x1C; ^ '0' 0x30 = 0x2C; ^ '.' 0x2E = 0x02; ^ '0' 0x30 = 0x32;
    # ^ ETX 0x03 = 0x31 ('1')
    link = SerialLink(emulator.port, bytesize=7, parity="E", timeout=REPLY_S)
    try:
        link.write(bisynch.read_request(0, 1, "SL"))
        assert link.read_until(b"\x03") + link.read(1) == b"\x02" b"SL300.0" b"\x03" b"\x31"
    finally:
        link.close()
