"""Start pacing: at most MAX_STARTING processes construct at once; a queued start that was cancelled
meanwhile (its unit failed with its group, stopped, or restarted) is never carried out."""

from __future__ import annotations

import types

from labctl.actors import starting
from labctl.actors.registry import Phase, UnitState
from labctl.config.schema import Device, Unit


class FakeSupervisor:
    """What Starts uses of the supervisor actor; createActor records what it was asked to create."""

    def __init__(self) -> None:
        self.created, self.stopping, self.run_dir, self._myRef = [], False, "/nonexistent", None
        self.lab = types.SimpleNamespace(max_argument_bytes=1 << 20, log_dir="/nonexistent", port=1)
        self.locks = types.SimpleNamespace(of=lambda device: {})
        self.hosts = types.SimpleNamespace(may_launch=lambda unit: True)  # every unit here is the leader's own

    def createActor(self, cls, targetActorRequirements=None):
        self.created.append(object())
        return self.created[-1]

    def send(self, *args) -> None:
        pass

    def after(self, *args) -> None:
        pass


def units(n: int) -> list[UnitState]:
    return [UnitState(Unit(f"d{i}", (Device(f"d{i}", driver="sim-valves"),))) for i in range(n)]


def one_queued() -> tuple[FakeSupervisor, starting.Starts, list[UnitState]]:
    """Every start slot taken and one more unit launched: it waits in the queue (the last unit)."""
    actor = FakeSupervisor()
    starts = starting.Starts(actor)
    lab = units(starting.MAX_STARTING + 1)
    for unit in lab:
        starts.launch(unit)
    assert len(actor.created) == starting.MAX_STARTING and lab[-1].address is None
    return actor, starts, lab


def test_no_more_than_max_starting_construct_at_once_and_the_queue_moves_on():
    actor = FakeSupervisor()
    starts = starting.Starts(actor)
    lab = units(starting.MAX_STARTING + 2)
    for unit in lab:
        starts.launch(unit)
    assert len(actor.created) == starting.MAX_STARTING
    starts.ended(lab[0])          # its construction is over: one queued unit starts
    assert len(actor.created) == starting.MAX_STARTING + 1 and lab[-2].address is not None
    assert lab[-1].address is None


def test_a_queued_start_that_was_cancelled_is_not_carried_out():
    actor, starts, lab = one_queued()
    queued = lab[-1]
    queued.start_token += 1       # what failing its group (or a stop) does to a unit without a process
    queued.state = Phase.FAILED
    starts.ended(lab[0])
    assert queued.address is None and len(actor.created) == starting.MAX_STARTING


def test_a_unit_relaunched_while_queued_starts_once():
    actor, starts, lab = one_queued()
    queued = lab[-1]
    queued.start_token += 1       # `labctl restart` of the queued unit: a new start, queued again
    starts.launch(queued)
    starts.ended(lab[0])
    starts.ended(lab[1])
    assert queued.address is not None and len(actor.created) == starting.MAX_STARTING + 1
