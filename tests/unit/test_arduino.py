"""The Arduino valve driver against its emulator, over a real pseudo-terminal."""

import pytest

from labctl.hardware.arduino import ArduinoValves, default_pin
from labctl.hardware.emulators import ArduinoEmulator
from labctl.hardware.errors import (GarbledReply, HardwareError, LinkError, NoReply, OutOfRange, Rejected,
                                    ValveLocked, ValveNotConfirmed)

REPLY_S = 0.2  # the driver's reply timeout: short, so that silence is found out fast
VALVES = {"A": 0, "B": {"channel": 1, "description": "pipette"}}  # output pins 4 and 7


@pytest.fixture
def emulator():
    with ArduinoEmulator(stuck=[default_pin(1)], slow_s=0.3) as emu:
        yield emu
    assert not emu.running


def connect(emulator, **conf):
    return ArduinoValves(emulator.port, valves=VALVES, timeout=REPLY_S, **conf)


@pytest.fixture
def valves(emulator):
    driver = connect(emulator)
    yield driver
    driver.shutdown()


@pytest.fixture
def confirmed(emulator):
    driver = connect(emulator, confirm=True, confirm_delay_s=0)
    yield driver
    driver.shutdown()


def test_default_pins_leave_room_for_two_indicators_and_the_serial_pins():
    assert [default_pin(channel) for channel in range(3)] == [4, 7, 10]


def test_open_and_close_drive_the_output_pin(valves, emulator):
    assert valves.get_states() == {"A": "closed", "B": "closed"}
    assert valves.open("A") == "open"
    assert emulator.level(4) == 1
    assert (emulator.level(3), emulator.level(2)) == (1, 0)  # open indicator high, closed low
    assert valves.get_state("A") == "open"
    assert valves.get_state("B") == "closed"
    assert valves.close("A") == "closed"
    assert emulator.level(4) == 0
    assert valves.get_state("A") == "closed"


def test_the_state_comes_from_the_box_not_from_memory(valves, emulator):
    valves.open("A")
    valves.shutdown()
    with connect(emulator) as again:  # a restarted driver: it learns the state from the output pin
        assert again.get_state("A") == "open"


def test_confirmed_moves_read_the_indicators(confirmed, emulator):
    assert confirmed.open("A") == "open"
    assert confirmed.get_state("A") == "open"
    assert confirmed.close("A") == "closed"
    assert confirmed.get_state("A") == "closed"
    assert emulator.level(2) == 1  # closed indicator


def test_a_stuck_valve_is_not_confirmed_and_the_message_names_the_pins(confirmed):
    with pytest.raises(ValveNotConfirmed) as caught:
        confirmed.open("B")
    assert str(caught.value) == ("valve B did not confirm open: open indicator (pin 6) reads 0, "
                                 "closed indicator (pin 5) reads 1")
    assert confirmed.get_state("B") == "closed"  # the indicators still say closed


def test_without_confirm_a_stuck_valve_goes_unnoticed(valves):
    assert valves.open("B") == "open"  # the output pin follows; nothing reads the indicators


def test_indicators_wired_the_other_way_do_not_confirm(emulator):
    with connect(emulator, confirm=True, confirm_delay_s=0, open_offset=2, closed_offset=1) as driver:
        with pytest.raises(ValveNotConfirmed, match=r"closed indicator \(pin 3\) reads 1"):
            driver.open("A")


def test_a_valve_with_no_indicator_high_has_no_known_state():
    with ArduinoEmulator(valve_pins=[4]) as emu:  # the valve on pin 7 starts with both indicators low
        with connect(emu, confirm=True) as driver:
            with pytest.raises(ValveNotConfirmed, match=r"valve B is neither open nor closed: open indicator "
                                                        r"\(pin 6\) reads 0, closed indicator \(pin 5\) reads 0"):
                driver.get_state("B")
            assert driver.get_state("A") == "closed"


def test_a_locked_valve_does_not_reach_the_box(valves, emulator):
    valves.lock("A")
    before = emulator.received
    with pytest.raises(ValveLocked):
        valves.open("A")
    assert emulator.received == before


def test_retries_until_an_answer_comes(valves, emulator):
    emulator.inject("no_reply", count=3)  # retried up to 3 times: the fourth try is answered
    before = emulator.received
    assert valves.open("A") == "open"
    assert emulator.received - before == 4
    assert emulator.level(4) == 1


@pytest.mark.parametrize("fault, error", [
    ("no_reply", NoReply), ("garbage", GarbledReply), ("bad_checksum", GarbledReply), ("nak", Rejected)])
def test_each_fault_on_every_try_raises_its_own_error_then_serving_resumes(valves, emulator, fault, error):
    emulator.inject(fault, count=4)
    with pytest.raises(error, match="tried 4 times") as caught:
        valves.open("A")
    assert caught.type is error
    assert emulator.received == 4
    assert valves.open("A") == "open"


def test_an_err_answer_to_a_read_is_rejected(valves, emulator):
    emulator.inject("nak", count=None)
    with pytest.raises(Rejected, match="'ERR' to 'r 4'"):
        valves.get_state("A")
    emulator.clear()
    assert valves.get_state("A") == "closed"


def test_a_slow_reply_is_retried(valves, emulator):
    emulator.inject("slow")  # 0.3 s late: the first try gives up at 0.2 s, the second is answered
    assert valves.open("A") == "open"
    assert emulator.received == 2
    assert emulator.wait_idle()
    assert valves.get_state("B") == "closed"


def test_a_late_reply_is_not_taken_for_the_next_answer(emulator):
    with connect(emulator, retries=0) as driver:
        emulator.inject("slow")  # the OK comes 0.3 s late, after the driver gave up at 0.2 s
        with pytest.raises(NoReply):
            driver.open("A")
        assert emulator.wait_idle()  # the late OK now waits in the driver's input
        assert driver.get_state("A") == "open"  # a level, not the stale OK


def test_unplug_then_reconnect_after_replug(valves, emulator):
    valves.open("A")
    emulator.unplug()
    with pytest.raises(LinkError, match=emulator.port):
        valves.close("A")
    with pytest.raises(LinkError):
        valves.reconnect()
    emulator.replug()
    valves.reconnect()
    assert valves.get_state("A") == "open"
    assert valves.close("A") == "closed"


def test_a_pyserial_url_is_a_port():
    # loop:// sends every byte back: the box "answers" each command with the command itself.
    with ArduinoValves("loop://", valves=["A"], timeout=REPLY_S, retries=0) as driver:
        with pytest.raises(Rejected, match="answered 'w 4 1' to 'w 4 1'"):
            driver.open("A")


def test_pins_from_toml_have_string_keys(emulator):
    with ArduinoValves(emulator.port, valves={"A": 0, "B": 1}, pins={"0": 12, "1": 15}, timeout=REPLY_S) as driver:
        driver.open("B")
        assert emulator.level(15) == 1


@pytest.mark.parametrize("conf, message", [
    ({"pins": {"0": 4}}, r"missing \[1\]"),
    ({"pins": {"0": 4, "1": 7, "5": 9}}, r"not a valve's channel \[5\]"),
    ({"pins": {"x": 4, "1": 7}}, "not a channel number"),
    ({"pins": {"0": 4, "1": 4}}, "pin 4 would be both"),
    ({"pins": {"0": 4, "1": 5}, "confirm": True}, "pin 4 would be both"),  # 5's open indicator is 4
    ({"pins": {"0": 1, "1": 7}, "confirm": True}, "closed indicator pin would be -1"),
    ({"open_offset": 2}, "must differ"),
    ({"confirm": "yes"}, "true or false"),
])
def test_bad_configurations_are_refused_before_the_port_is_opened(conf, message):
    with pytest.raises(HardwareError, match=message):
        ArduinoValves("/nonexistent/tty", valves={"A": 0, "B": 1}, **conf)


@pytest.mark.parametrize("conf", [{"retries": -1}, {"timeout": 0}, {"timeout": "1"}, {"baudrate": 0}])
def test_bad_numbers_are_out_of_range(conf):
    with pytest.raises(OutOfRange):
        ArduinoValves("/nonexistent/tty", valves=["A"], **conf)


def test_status_names_the_port(valves, emulator):
    assert valves.status() == {"states": {"A": "closed", "B": "closed"}, "locked": [], "port": emulator.port}
