"""The valve safety model, rule by rule, on a simulated controller: each refusal names its cause and
is reported, and each rule is checked on its own (a valve is given one rule at a time)."""

from __future__ import annotations

import pytest

from labctl.hardware import InterlockRefused, ValveLocked
from labctl.hardware.simulated import SimValves


@pytest.fixture
def bank():
    bank = SimValves({"I": {"channel": 0, "interlocks": ["X"]}, "P": {"channel": 1, "positive_interlocks": ["X"]},
                      "O": {"channel": 2, "owner": "10.0.0.5"}, "L": {"channel": 3, "locked": True},
                      "X": {"channel": 4}})
    bank.events = []
    bank.subscribe(lambda event, detail: bank.events.append((event, detail)))
    return bank


def test_an_interlock_open_refuses_the_open_and_the_close_of_an_open_valve(bank):
    bank.open("X")
    with pytest.raises(InterlockRefused, match="valve I may not open: interlock X is open"):
        bank.open("I")
    assert bank.get_state("I") == "closed"
    assert ("valve_refused", {"valve": "I", "action": "open", "reason": "interlock X is open"}) in bank.events
    assert bank.actuate("I", False) is False           # already closed while X is open: left alone
    bank.close("X")
    assert bank.open("I") == "open"
    bank._open["X"] = True                              # X opened behind the controller's back
    with pytest.raises(InterlockRefused, match="interlock X is open"):
        bank.close("I")


def test_a_positive_interlock_must_be_open(bank):
    with pytest.raises(InterlockRefused, match="positive interlock X is closed"):
        bank.open("P")
    bank.open("X")
    assert bank.open("P") == "open"


def test_an_owned_valve_moves_for_its_owner_and_the_labs_own_clients_only(bank):
    with pytest.raises(InterlockRefused, match="owned by 10.0.0.5"):
        bank.actuate("O", True, requester="10.0.0.6")
    assert bank.get_state("O") == "closed"
    assert bank.actuate("O", True, requester="10.0.0.5") is True
    assert bank.actuate("O", False) is True            # '' is the lab's own client (it holds the key)


def test_a_locked_valve_is_left_alone(bank):
    assert bank.actuate("L", True) is False and bank.get_state("L") == "closed"
    with pytest.raises(ValveLocked):
        bank.open("L")
    bank.unlock("L")
    assert bank.open("L") == "open"
    bank._restore_locks({"L": True, "nope": True})
    assert bank.get_locks()["L"] is True
