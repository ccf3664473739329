"""Emulator lifecycle (pty, symlink, thread), the registry, `labctl emulate`, and the serial link itself."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from labctl.bin.emulate import emulate
from labctl.hardware.arduino import ArduinoValves
from labctl.hardware.emulators import (EMULATORS, FAULTS, ArduinoEmulator, EurothermEmulator, emulator_options,
                                       make_emulator)
from labctl.hardware.errors import LinkError, OutOfRange, ValveNotConfirmed
from labctl.hardware.eurotherm import Eurotherm
from labctl.hardware.serial_link import SerialLink

REPLY_S = 0.2
EMULATE = [sys.executable, "-c", "from labctl.bin.emulate import emulate; emulate()"]


def open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(params=sorted(EMULATORS))
def emulator(request):
    with make_emulator(request.param) as emu:
        yield emu
    assert not emu.running


def test_the_port_is_a_symlink_to_a_tty(emulator):
    assert os.path.islink(emulator.port)
    assert os.isatty(fd := os.open(emulator.port, os.O_RDWR | os.O_NOCTTY))
    os.close(fd)
    assert emulator.running and emulator.plugged


def test_stop_is_prompt_idempotent_and_removes_the_symlink_and_its_folder():
    emu = EurothermEmulator().start()
    port = emu.port
    started = time.monotonic()
    emu.stop()
    assert time.monotonic() - started < 1.0
    emu.stop()
    assert not emu.running
    assert not os.path.lexists(port)
    assert not os.path.exists(os.path.dirname(port))


def test_a_given_link_is_used_and_removed(tmp_path):
    link = tmp_path / "ttyEUROTHERM"
    with EurothermEmulator(link=link) as emu:
        assert emu.port == str(link)
        assert link.is_symlink()
    assert not os.path.lexists(link)
    assert tmp_path.exists()


def test_a_newer_emulator_on_the_same_link_keeps_it_when_the_older_stops(tmp_path):
    link = tmp_path / "furnace.tty"
    older = EurothermEmulator(link=link, setpoint=1.0).start()
    with EurothermEmulator(link=link, setpoint=2.0) as newer:
        older.stop()  # e.g. the process of a restarted device, going away late
        assert link.is_symlink()
        with Eurotherm(newer.port, timeout=REPLY_S) as driver:
            assert driver.get_setpoint() == 2.0


def test_a_file_in_the_way_of_the_link_is_left_alone(tmp_path):
    precious = tmp_path / "data"
    precious.write_text("keep me")
    fds = open_fds()
    with pytest.raises(ValueError, match="not a symlink"):
        EurothermEmulator(link=precious).start()
    assert precious.read_text() == "keep me"
    assert open_fds() == fds


def test_unplug_removes_the_symlink_and_replug_restores_it(emulator):
    port = emulator.port
    emulator.unplug()
    assert not os.path.lexists(port) and not emulator.plugged
    emulator.unplug()  # already unplugged: nothing to do
    emulator.replug()
    assert os.path.islink(port) and emulator.plugged
    assert emulator.port == port


def test_nothing_leaks_over_starts_unplugs_and_stops():
    threads, fds = threading.active_count(), open_fds()
    for _ in range(3):
        with EurothermEmulator() as emu:
            driver = Eurotherm(emu.port, timeout=REPLY_S)
            assert driver.get_setpoint() == 20.0
            emu.unplug()
            emu.replug()
            driver.reconnect()
            assert driver.get_setpoint() == 20.0
            driver.shutdown()
    assert threading.active_count() == threads
    assert open_fds() == fds


def test_an_emulator_starts_once_and_must_run_to_be_unplugged():
    emu = ArduinoEmulator()
    with pytest.raises(RuntimeError, match="not running"):
        emu.unplug()
    with pytest.raises(RuntimeError, match="not started"):
        emu.port
    with emu:
        with pytest.raises(RuntimeError, match="once"):
            emu.start()


def test_faults_are_checked(emulator):
    with pytest.raises(ValueError, match="unknown fault 'smoke'; known: " + ", ".join(FAULTS)):
        emulator.inject("smoke")
    with pytest.raises(OutOfRange):
        emulator.inject("nak", count=0)


def test_faults_queue_up_in_order():
    with EurothermEmulator(setpoint=42.0) as emu:
        with Eurotherm(emu.port, timeout=REPLY_S) as driver:
            emu.inject("nak")
            emu.inject("garbage")
            outcomes = []
            for _ in range(3):
                try:
                    outcomes.append(driver.get_setpoint())
                except Exception as exc:
                    outcomes.append(type(exc).__name__)
            assert outcomes == ["Rejected", "GarbledReply", 42.0]


def test_the_registry_and_its_errors():
    assert EMULATORS == {"arduino-valves": ArduinoEmulator, "eurotherm": EurothermEmulator}
    assert {"gid", "uid", "setpoint", "ambient", "tau_s", "slow_s", "link"} <= set(emulator_options("eurotherm"))
    assert {"stuck", "open_offset", "closed_offset", "slow_s", "link"} <= set(emulator_options("arduino-valves"))
    with pytest.raises(ValueError, match="unknown emulator 'keithley'; known: arduino-valves, eurotherm"):
        make_emulator("keithley")
    with pytest.raises(ValueError, match="unknown option.* stuck .*eurotherm.*known: gid, uid"):
        make_emulator("eurotherm", stuck=[4])
    with pytest.raises(ValueError, match="tau_s must be positive"):
        make_emulator("eurotherm", tau_s=0)
    with pytest.raises(ValueError, match="stuck pin 99 is out of range"):
        make_emulator("arduino-valves", stuck=[99])


def test_make_emulator_passes_options_through():
    with make_emulator("eurotherm", gid=2, uid=3, setpoint=123.4) as emu:
        with Eurotherm(emu.port, gid=2, uid=3, timeout=REPLY_S) as driver:
            assert driver.get_setpoint() == 123.4


def test_the_eurotherm_emulator_skips_line_noise():
    with EurothermEmulator() as emu:
        link = SerialLink(emu.port, bytesize=7, parity="E", timeout=REPLY_S)
        try:
            link.write(b"\x15garbage\x03" + b"\x04" b"0011" b"SL" b"\x05")
            assert link.read_until(b"\x03") == b"\x02" b"SL20.0" b"\x03"
        finally:
            link.close()


def test_the_arduino_emulator_answers_err_to_what_it_does_not_know():
    with ArduinoEmulator() as emu:
        link = SerialLink(emu.port, baudrate=115200, timeout=REPLY_S)
        try:
            for command, answer in [(b"x 1\r\n", b"ERR\r\n"), (b"w 99 1\r\n", b"ERR\r\n"),
                                    (b"w 4 2\r\n", b"ERR\r\n"), (b"w 4 1\n", b"OK\r\n"), (b"r 4\r\n", b"1\r\n"),
                                    (b"r 3\r\n", b"1\r\n")]:
                link.write(command)
                assert link.read_until(b"\r\n") == answer, command
        finally:
            link.close()


# -- the serial link -------------------------------------------------------------------------------------

def test_the_link_opens_a_loop_url_and_writes_and_reads():
    link = SerialLink("loop://", timeout=0.05)
    try:
        link.write(b"r 4\r\n")
        assert link.read_until(b"\r\n") == b"r 4\r\n"
        link.write(b"stale")
        link.discard_input()
        assert link.read(5) == b""
    finally:
        link.close()


def test_the_link_reopens_and_refuses_io_when_closed():
    link = SerialLink("loop://", timeout=REPLY_S)
    link.close()
    link.close()
    with pytest.raises(LinkError, match="loop:// is not open"):
        link.write(b"x")
    link.reopen()
    link.write(b"x")
    assert link.read(1) == b"x"
    link.close()


def test_the_link_names_the_port_it_cannot_open():
    with pytest.raises(LinkError, match="cannot open serial port /dev/nonexistent-tty: No such file"):
        SerialLink("/dev/nonexistent-tty")
    with pytest.raises(OutOfRange, match="bogus://x"):
        SerialLink("bogus://x")


# -- labctl emulate ---------------------------------------------------------------------------------------

def start_emulate(*args):
    process = subprocess.Popen([*EMULATE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    port = process.stdout.readline().strip()
    hint = process.stderr.readline()
    return process, port, hint


def stop_emulate(process, signum):
    try:
        process.send_signal(signum)
        returncode = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        process.stdout.close()
        process.stderr.close()
    return returncode


def test_emulate_serves_until_sigterm():
    process, port, hint = start_emulate("eurotherm", "--setpoint", "150", "--uid", "2")
    try:
        assert f"eurotherm emulator serving on {port}" in hint
        with Eurotherm(port, uid=2, timeout=REPLY_S) as driver:
            assert driver.get_setpoint() == 150.0
    finally:
        returncode = stop_emulate(process, signal.SIGTERM)
    assert returncode == 0
    assert not os.path.lexists(port)


def test_emulate_serves_on_a_given_link_until_ctrl_c(tmp_path):
    link = tmp_path / "valves"
    process, port, _ = start_emulate("arduino-valves", "--link", str(link), "--stuck", "7")
    try:
        assert port == str(link)
        with ArduinoValves(port, valves=["A", "B"], timeout=REPLY_S, confirm=True, confirm_delay_s=0) as driver:
            assert driver.open("A") == "open"
            with pytest.raises(ValveNotConfirmed, match="valve B"):
                driver.open("B")
    finally:
        returncode = stop_emulate(process, signal.SIGINT)
    assert returncode == 0
    assert not os.path.lexists(link)


def test_emulate_refuses_options_of_the_other_kind():
    result = CliRunner().invoke(emulate, ["eurotherm", "--stuck", "3"])
    assert result.exit_code == 2
    assert "--stuck does not apply to eurotherm" in result.output
