"""What a client may call on a driver: its interface's public methods and the ones it marks @remote,
nothing else; and arguments too large are refused before the driver sees them."""

from __future__ import annotations

import logging
import pathlib
import pickle
import pydoc

import pytest

from labctl.actors import drivercalls, logs
from labctl.actors.handles import DeviceHandle, make_handle
from labctl.actors.messages import Call, GetValveStates, OpenValve
from labctl.config import ConfigError, parse
from labctl.hardware import ValveController, remote, remote_methods, time_limit
from labctl.hardware.simulated import SimFloatingCamera, SimLightSource, SimStage, StageAwareCamera

CALLS: list[str] = []  # what any method of Tricky ran, static and class methods included


class Tricky(ValveController):
    """A valve controller with every kind of attribute a client must not reach, recording each call."""

    label = "a plain attribute"
    opener = open              # a callable class attribute (a builtin, not a method)
    path_type = pathlib.Path   # a class

    def __init__(self) -> None:
        super().__init__(("A", "B"))
        self._open = {"A": False, "B": False}
        self.close = lambda valve: CALLS.append("instance close")  # shadows the interface's close

    @staticmethod
    def peek(path: str) -> str:
        CALLS.append("peek")
        return pathlib.Path(path).read_text()

    @classmethod
    def make(cls) -> Tricky:
        CALLS.append("make")
        return cls()

    @property
    def temperature(self) -> float:
        CALLS.append("temperature")
        return 20.0

    @staticmethod
    def get_states() -> dict:  # an interface method, overridden as a static method
        CALLS.append("get_states")
        return {}

    is_locked = property(lambda self: CALLS.append("is_locked"))  # an interface method, now a property

    def open(self, valve: str) -> str:  # an interface method, overridden as a method: remote
        CALLS.append(f"open {valve}")
        return super().open(valve)

    def extra(self) -> str:  # public, but neither on the interface nor marked
        CALLS.append("extra")
        return "extra"

    @remote
    @time_limit(3.0)
    def special(self, text: str = "") -> int:
        CALLS.append("special")
        return len(text)

    @time_limit(4.0)
    def slow_extra(self) -> None:  # a time limit does not make a method remote
        CALLS.append("slow_extra")

    def _do_secret(self) -> str:
        CALLS.append("_do_secret")
        return "secret"

    def __reduce__(self):
        CALLS.append("__reduce__")
        return (Tricky, ())

    def _do_set(self, valve: str, open_: bool) -> None:
        CALLS.append(f"_do_set {valve}")
        self._open[valve] = open_

    def _do_get(self, valve: str) -> bool:
        return self._open[valve]


INTERFACE = {"valve_names", "describe_valves", "open", "get_state", "lock", "unlock", "status", "get_locks",
             "valve_rules", "actuate"}
REFUSED = ["peek", "make", "_restore_locks", "temperature", "get_states", "is_locked", "close", "extra", "slow_extra", "label",
           "opener", "path_type", "_do_secret", "_do_set", "_open", "__reduce__", "__reduce_ex__",
           "__init_subclass__", "__class__", "__init__", "__getattribute__", "__setattr__", "__dict__",
           "__subclasshook__", "mro", "shutdown", "subscribe", "sub_devices", "reconnect"]


@pytest.fixture
def tricky():
    CALLS.clear()
    yield Tricky()
    CALLS.clear()


def test_only_interface_methods_and_marked_ones_are_remote(tricky):
    methods = remote_methods(tricky)
    assert set(methods) == INTERFACE | {"special"}
    assert methods["open"].__func__ is Tricky.open  # the driver's override, bound to the driver
    assert methods["special"].__self__ is tricky
    assert not set(REFUSED) & set(methods)


def test_drivers_of_the_project_expose_their_interface_and_what_they_mark():
    camera = SimFloatingCamera()
    assert "connected_units" not in remote_methods(camera)  # a static method that reads a named file
    assert {"get_id", "acquire", "set_exposure"} <= set(remote_methods(camera))
    assert not {"count_candidates", "open_candidate"} & set(remote_methods(camera))
    assert "get_wavelength" in remote_methods(SimLightSource(wavelength_nm=488))
    stage = SimStage(axes={"x": [0, 100], "y": [0, 100]})
    assert "view_origin" in remote_methods(StageAwareCamera(stage, shape=(4, 4), sample_shape=(8, 8)))


def test_remote_refuses_what_can_never_be_remote():
    with pytest.raises(TypeError, match="plain method"):
        remote(staticmethod(lambda: None))
    with pytest.raises(TypeError, match="plain method"):
        remote(property(lambda self: 1))

    def _hidden(self):
        pass

    def shutdown(self):
        pass

    for method in (_hidden, shutdown):
        with pytest.raises(ValueError, match="cannot be remote"):
            remote(method)


def test_a_static_method_stays_refused_even_when_marked(tricky):
    class Marked(Tricky):
        @staticmethod
        @remote
        def leak(path: str) -> str:
            return pathlib.Path(path).read_text()

        special = staticmethod(Tricky.special)  # a remote method overridden as a static method

    methods = remote_methods(Marked())
    assert "leak" not in methods and "special" not in methods


@pytest.mark.parametrize("name", REFUSED)
def test_check_refuses_every_other_name_and_the_driver_is_untouched(tricky, name):
    drivers, methods = {"v": tricky}, {"v": remote_methods(tricky)}
    failure = drivercalls.check(drivers, methods, Call(name, ("/etc/hostname",), device="v", request_id="r1"))
    assert failure.kind == "unknown_message" and failure.request_id == "r1"
    assert f"has no method {name!r}" in failure.message
    listed = failure.message.split("; methods: ")[1].split(", ")  # it lists what can be called
    assert sorted(listed) == sorted(INTERFACE | {"special"})
    assert CALLS == []


def test_check_refuses_oversize_arguments_before_the_driver(tricky):
    drivers, methods = {"v": tricky}, {"v": remote_methods(tricky)}
    failure = drivercalls.check(drivers, methods, Call("special", ("x" * (2 << 20),), device="v"))
    assert failure.kind == "bad_argument"
    assert failure.message == ("v: arguments of Call 'special' are 2.0 MiB; "
                               "the limit is 1 MiB (max_argument_bytes)")
    failure = drivercalls.check(drivers, methods, Call("special", (), {"text": "y" * 2000}, device="v"), 1024)
    assert failure.kind == "bad_argument" and "the limit is 1 KiB (max_argument_bytes)" in failure.message
    failure = drivercalls.check(drivers, methods, OpenValve("A" * 2000, device="v"), 1024)  # typed ones too
    assert failure.kind == "bad_argument" and "arguments of OpenValve 'open'" in failure.message
    assert CALLS == []
    # Up to the limit (measured as the pickle of (args, kwargs)), the call goes through.
    fits = "z" * 1024
    while len(pickle.dumps(((), {"text": fits}), protocol=5)) > 1024:
        fits = fits[1:]
    driver, args, kwargs = drivercalls.check(drivers, methods, Call("special", (), {"text": fits}, device="v"), 1024)
    assert driver is tricky and kwargs == {"text": fits}
    one_more = Call("special", (), {"text": fits + "z"}, device="v")
    assert drivercalls.check(drivers, methods, one_more, 1024).kind == "bad_argument"


def test_check_lets_remote_calls_through(tricky):
    drivers, methods = {"v": tricky}, {"v": remote_methods(tricky)}
    assert drivercalls.check(drivers, methods, OpenValve("A", device="v")) == (tricky, ("A",), {})
    refused = drivercalls.check(drivers, methods, GetValveStates(device="v"))  # now a static method
    assert refused.kind == "unknown_message" and "does not accept GetValveStates" in refused.message


def test_description_and_handle_show_exactly_the_remote_methods(tricky):
    description = drivercalls.describe("v", tricky)
    assert {m.name for m in description.methods} == INTERFACE | {"special"}
    assert description.time_limits == {"special": 3.0}  # slow_extra's limit is not shown: not callable
    handle = make_handle(None, description)
    assert {n for n in dir(handle) if not n.startswith("_")} - set(dir(DeviceHandle)) == INTERFACE | {"special"}
    text = pydoc.render_doc(handle, renderer=pydoc.plaintext)
    assert "special(" in text and "open(" in text
    for name in ("peek", "extra", "slow_extra", "get_states", "temperature", "_do_secret"):
        assert f"{name}(" not in text and not hasattr(handle, name)


def test_a_failing_call_logs_its_arguments_cut(caplog):
    with caplog.at_level(logging.WARNING, logger="labctl.devicehost"):
        logs.log_failure("v", "special", ("x" * 100_000, list(range(100_000))), {"k" * 1000: "y" * 100_000},
                         ValueError("bad " + "z" * 100_000))
    (record,) = caplog.records
    line = record.getMessage()
    assert len(line) < 1000 and line.startswith("special('xxx") and "ValueError: bad zzz" in line


def test_max_argument_bytes_is_configured_in_lab():
    devices = {"devices": {"v": {"driver": "sim-valves"}}}
    assert parse({"lab": {"name": "x"}, **devices}).max_argument_bytes == 1 << 20
    assert parse({"lab": {"name": "x", "max_argument_bytes": 4096}, **devices}).max_argument_bytes == 4096
    for bad in (100, 1 << 31, "1MiB"):
        with pytest.raises(ConfigError) as info:
            parse({"lab": {"name": "x", "max_argument_bytes": bad}, **devices})
        assert [p.path for p in info.value.problems] == ["lab.max_argument_bytes"]


def test_a_result_of_plain_data_travels_without_a_trial_pickle_and_anything_else_is_tried():
    import numpy as np

    from labctl.actors.drivercalls import plain_data, sendable
    from labctl.actors.messages import Call, Failure, Reply

    frame = (np.zeros((4, 4), np.uint16), 12.5)
    assert plain_data(frame) and plain_data({"x": [1, 2.0, "a", b"b", None]})
    assert not plain_data((lambda: 1,)) and not plain_data(np.array([object()]))
    assert not plain_data(list(range(5000)))          # too many items to look at: tried instead
    request = Call(method="m", device="d", request_id="r")
    assert sendable(Reply("r", list(range(5000))), request).value == list(range(5000))
    refused = sendable(Reply("r", [(x for x in "ab")]), request)
    assert isinstance(refused, Failure) and refused.error_type == "UnsendableResult"
