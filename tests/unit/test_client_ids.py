"""The client takes as a request's answer only a reply carrying that request's id: a late reply to an
earlier request (or a duplicate) arriving first is passed over, never returned or raised as this one's.
A fake Thespian context stands in for the lab, so the rule is tested without one."""

from __future__ import annotations

import threading

import pytest

from labctl.actors.client import LabClient
from labctl.actors.laneclient import Lanes
from labctl.actors.errors import DeviceError, DriverError
from labctl.actors.messages import Failure, GetPosition, OpenValve, Reply


class FakeContext:
    """Answers `ask` with what `script(request)` lists, in order: first from ask, the rest from listen."""

    def __init__(self, script) -> None:
        self.script = script
        self.pending: list = []
        self.asked: list = []

    def createActor(self, cls, globalName=None):  # noqa: N802 (Thespian's name)
        return "supervisor"

    def ask(self, address, message, timeout):
        self.asked.append(message)
        self.pending = list(self.script(message))
        return self.listen(timeout)

    def listen(self, timeout):
        return self.pending.pop(0) if self.pending else None

    def exit_clone(self) -> None:
        pass


def client_with(script, timeout: float = 2.0) -> tuple[LabClient, FakeContext]:
    """A LabClient whose every thread talks through one FakeContext (no lab, no sockets)."""
    context = FakeContext(script)
    client = object.__new__(LabClient)
    client.port, client.address, client.timeout = 1, "127.0.0.1", timeout
    client._local, client._lock, client._supervisor_address = threading.local(), threading.Lock(), None
    client._descriptions, client._handles, client._names = {}, {}, None
    client._local.context = context
    client._lanes = Lanes(client, b"k" * 32, "off")   # everything through the (fake) supervisor
    client._via_supervisor = True
    return client, context


def test_a_reply_to_another_request_is_not_taken_as_this_ones():
    client, context = client_with(lambda request: [Reply("an-earlier-request", "closed"),
                                                   Reply(request.request_id, "open")])
    assert client.send("valves", OpenValve("A")) == "open"
    assert context.asked[0].request_id and context.asked[0].request_id != "an-earlier-request"


def test_a_failure_of_another_request_is_not_raised_as_this_ones():
    client, _ = client_with(lambda request: [
        Failure("an-earlier-request", "driver_error", "HardwareError", "stuck", "stage"),
        Reply(request.request_id, {"x": 1.0})])
    assert client.send("stage", GetPosition()) == {"x": 1.0}


def test_a_duplicate_of_the_previous_reply_is_passed_over():
    """Each request gets a fresh id; a second copy of the first reply must not answer the second."""
    answers = iter(["first", "second"])
    previous: list = []

    def script(request):
        reply = Reply(request.request_id, next(answers))
        stale, previous[:] = list(previous), [reply]
        return [*stale, reply]  # the previous request's reply, sent again, arrives first

    client, context = client_with(script)
    assert client.send("valves", OpenValve("A")) == "first"
    assert client.send("valves", OpenValve("B")) == "second"
    assert context.asked[0].request_id != context.asked[1].request_id


def test_this_requests_failure_is_raised():
    client, _ = client_with(lambda request: [Reply("another", 1),
                                             Failure(request.request_id, "driver_error", "HardwareError", "stuck",
                                                     "stage")])
    with pytest.raises(DriverError) as info:
        client.send("stage", GetPosition())
    assert isinstance(info.value, DeviceError) and "stuck" in str(info.value)
