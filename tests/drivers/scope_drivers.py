"""python-microscope device classes for the tests: floating units told apart by get_id(), and a
device whose initialize() raises (as a device's constructor calls it, in microscope's convention)."""

from __future__ import annotations

import microscope
import microscope.abc


class ScopeUnit(microscope.abc.FloatingDeviceMixin, microscope.abc.Device):
    """Floating units: unit `index` has id `uids[index]`; each open is noted in `journal`."""

    def __init__(self, uids=("u-one", "u-two"), journal: str = "", **kwargs) -> None:
        super().__init__(**kwargs)
        self._uid = list(uids)[self._index]
        if journal:
            with open(journal, "a") as file:
                file.write(f"open {self._index}\n")

    def get_id(self) -> str:
        return self._uid

    def whoami(self) -> str:
        return f"unit {self._uid} at index {self._index}"

    def _do_shutdown(self) -> None:
        pass


class BrokenInit(microscope.abc.Device):
    """A device whose initialize() fails, as a real one does when its hardware does not answer."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.initialize()

    def initialize(self) -> None:
        raise microscope.InitialiseError("no answer from the controller on COM3")

    def _do_shutdown(self) -> None:
        pass


def light_and_wheel(positions: int = 4) -> dict:
    """A composite as microscope's device server takes one: a function returning {name: device}."""
    from microscope.simulators import SimulatedFilterWheel, SimulatedLightSource

    return {"laser": SimulatedLightSource(), "wheel": SimulatedFilterWheel(positions=positions)}
