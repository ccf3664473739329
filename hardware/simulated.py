"""Simulated devices: one small, plausible simulator per interface, for demos and tests."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import HardwareError, NotPresent, OutOfRange
from .interfaces import (Camera, FilterWheel, FloatingDevice, LightSource, Stage,
                         TemperatureController, ValveController, number, remote)


class SimValves(ValveController):
    """A bank of valves that start closed and take `move_time_s` to move."""

    def __init__(self, valves: Mapping[str, Any] | Iterable[str] = ("A", "B", "C", "D", "E", "F"),
                 move_time_s: float = 0.0) -> None:
        super().__init__(valves)
        self._move_time = number(move_time_s, "move_time_s")
        self._open = {name: False for name in self.valve_names()}

    def _do_set(self, valve: str, open_: bool) -> None:
        if self._move_time:
            time.sleep(self._move_time)
        self._open[valve] = open_

    def _do_get(self, valve: str) -> bool:
        return self._open[valve]


class SimFurnace(TemperatureController):
    """A furnace whose temperature approaches the setpoint exponentially (time constant `tau_s`)."""

    def __init__(self, setpoint: float = 20.0, ambient: float = 20.0, tau_s: float = 30.0,
                 min_setpoint: float = 0.0, max_setpoint: float = 1200.0) -> None:
        super().__init__(min_setpoint, max_setpoint)
        self._ambient = number(ambient, "ambient")
        self._tau = number(tau_s, "tau_s")
        if self._tau <= 0:
            raise OutOfRange(f"tau_s must be positive, got {tau_s}")
        self._setpoint = self.set_setpoint(setpoint)
        self._temperature = self._ambient
        self._at = time.monotonic()

    def _advance(self) -> float:
        now = time.monotonic()
        decay = math.exp(-(now - self._at) / self._tau)
        self._temperature = self._setpoint + (self._temperature - self._setpoint) * decay
        self._at = now
        return self._temperature

    def _do_get_setpoint(self) -> float:
        return self._setpoint

    def _do_set_setpoint(self, value: float) -> None:
        if hasattr(self, "_temperature"):
            self._advance()
        self._setpoint = value

    def _do_read_temperature(self) -> float:
        return self._advance()

    def _do_get_output(self) -> float:
        # Holding power grows with the temperature above ambient; the error term drives the approach.
        temperature = self._advance()
        holding = 100.0 * (temperature - self._ambient) / 1500.0
        drive = 100.0 * (self._setpoint - temperature) / 50.0
        return min(100.0, max(0.0, holding + drive))


class _StoredSettings(Camera):
    """A simulated camera's settings kept in attributes: `_exposure`, `_shape`, `_dtype`."""

    def _do_get_exposure(self) -> float:
        return self._exposure

    def _do_set_exposure(self, seconds: float) -> None:
        self._exposure = seconds

    def _do_get_sensor_shape(self) -> tuple[int, int]:
        return self._shape

    def _do_get_dtype(self) -> str:
        return self._dtype.name


class SimCamera(_StoredSettings):
    """A camera whose images carry their frame number in the first row (pixel [0, 0] == frame).

    With `pattern = "static"` every image is one fixed, read-only gradient that costs nothing to
    make (like python-microscope's "black" pattern): for measuring what carries frames, not the
    camera."""

    def __init__(self, shape: Iterable[int] = (2048, 2048), dtype: str = "uint16",
                 exposure: float = 0.01, simulate_exposure: bool = True, pattern: str = "numbered") -> None:
        shape = [int(n) for n in shape]
        if len(shape) != 2 or min(shape) < 1:
            raise OutOfRange(f"shape must be [rows, columns] of positive integers, got {shape}")
        self._dtype = np.dtype(dtype)
        if self._dtype.kind not in "ui":
            raise OutOfRange(f"dtype must be an integer type such as 'uint16', got {dtype!r}")
        self._shape = tuple(shape)
        self._exposure = self.set_exposure(exposure)
        self._simulate_exposure = bool(simulate_exposure)
        self._frame = 0
        rows, cols = np.indices(self._shape, dtype=np.int64)
        self._base = ((rows + cols) % max(1, min(np.iinfo(self._dtype).max, 4096))).astype(self._dtype)
        if pattern not in ("numbered", "static"):
            raise OutOfRange(f"pattern must be 'numbered' or 'static', got {pattern!r}")
        self._static = pattern == "static"
        self._base.flags.writeable = False   # shared by every static image: nobody may change it

    def _do_acquire(self) -> np.ndarray:
        if self._simulate_exposure:
            time.sleep(self._exposure)
        self._frame += 1
        if self._static:
            return self._base
        image = self._base.copy()
        image[0, :] = self._frame % (int(np.iinfo(self._dtype).max) + 1)
        return image

    def status(self) -> dict[str, Any]:
        return {**super().status(), "frames": self._frame}


class SimFilterWheel(FilterWheel):
    """A filter wheel with `positions` positions."""

    def __init__(self, positions: int = 6, position: int = 0) -> None:
        if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
            raise OutOfRange(f"positions must be a positive integer, got {positions!r}")
        self._count = positions
        self._position = 0
        self.set_position(position)

    def _do_get_n_positions(self) -> int:
        return self._count

    def _do_get_position(self) -> int:
        return self._position

    def _do_set_position(self, position: int) -> None:
        self._position = position


class SimStage(Stage):
    """A stage with named axes and limits; it starts at the middle of each axis unless told otherwise."""

    def __init__(self, axes: Mapping[str, Iterable[float]] | None = None,
                 position: Mapping[str, float] | None = None) -> None:
        axes = {"x": (0.0, 25000.0), "y": (0.0, 25000.0), "z": (0.0, 5000.0)} if axes is None else axes
        self._limits = {}
        for axis, limits in dict(axes).items():
            low, high = (number(v, f"axes.{axis}") for v in limits)
            if not low < high:
                raise OutOfRange(f"axis {axis}: low limit {low:g} must be below high limit {high:g}")
            self._limits[str(axis)] = (low, high)
        if not self._limits:
            raise HardwareError("a stage needs at least one axis")
        self._position = {axis: (low + high) / 2 for axis, (low, high) in self._limits.items()}
        for axis, value in dict(position or {}).items():
            self.move_to(axis, value)

    def _do_get_limits(self) -> Mapping[str, tuple[float, float]]:
        return self._limits

    def _do_get_position(self) -> Mapping[str, float]:
        return self._position

    def _do_move(self, axis: str, position: float) -> None:
        self._position[axis] = position


class SimLightSource(LightSource):
    """A light source (LED or laser) that starts off at power `power`."""

    def __init__(self, power: float = 0.5, wavelength_nm: float | None = None) -> None:
        self._on = False
        self._power = 0.0
        self.wavelength_nm = wavelength_nm
        self.set_power(power)

    @remote
    def get_wavelength(self) -> float | None:
        """The wavelength in nm, when known."""
        return self.wavelength_nm

    def _do_enable(self, on: bool) -> None:
        self._on = on

    def _do_get_enabled(self) -> bool:
        return self._on

    def _do_set_power(self, power: float) -> None:
        self._power = power

    def _do_get_power(self) -> float:
        return self._power


class SimLaserCombiner(SimLightSource):
    """A laser combiner: a master shutter plus one addressable laser per line (`combiner.l488`)."""

    def __init__(self, lasers: Mapping[str, float] | None = None) -> None:
        super().__init__(power=1.0)
        lasers = {"l405": 405, "l488": 488, "l561": 561, "l640": 640} if lasers is None else lasers
        self._lasers = {str(name): SimLightSource(power=0.0, wavelength_nm=number(nm, f"lasers.{name}"))
                        for name, nm in dict(lasers).items()}

    def sub_devices(self) -> dict[str, SimLightSource]:
        return dict(self._lasers)

    def _do_shutdown(self) -> None:
        for laser in self._lasers.values():
            laser.shutdown()


class SimFloatingCamera(SimCamera, FloatingDevice):
    """A floating camera: the connected units and their order come from `present` or, when it
    exists, from `present_file` (one serial per line) so that tests can plug and unplug units."""

    def __init__(self, present: Iterable[str] = ("20200910",), present_file: str | None = None,
                 shape: Iterable[int] = (512, 512), dtype: str = "uint16", exposure: float = 0.01,
                 simulate_exposure: bool = False) -> None:
        super().__init__(shape=shape, dtype=dtype, exposure=exposure, simulate_exposure=simulate_exposure)
        units = self.connected_units(present, present_file)
        if not units:
            raise NotPresent("no simulated floating camera is connected")
        self._serial = units[0]

    # A static method reads a file named by its caller: never remote (remote_methods refuses it).
    @staticmethod
    def connected_units(present: Iterable[str] = ("20200910",), present_file: str | None = None) -> list[str]:
        """The serial numbers connected now, in bus order."""
        if present_file and Path(present_file).exists():
            return [line.strip() for line in Path(present_file).read_text().splitlines() if line.strip()]
        return [str(uid) for uid in present]

    @classmethod
    def count_candidates(cls, **conf: Any) -> int:
        return len(cls.connected_units(conf.get("present", ("20200910",)), conf.get("present_file")))

    @classmethod
    def open_candidate(cls, candidate: int, /, **conf: Any) -> SimFloatingCamera:
        units = cls.connected_units(conf.get("present", ("20200910",)), conf.get("present_file"))
        if not 0 <= candidate < len(units):
            raise NotPresent(f"no unit at position {candidate}; {len(units)} connected")
        unit = cls(**conf)
        unit._serial = units[candidate]
        return unit

    def get_id(self) -> str:
        return self._serial

    def status(self) -> dict[str, Any]:
        return {**super().status(), "serial": self._serial}


class StageAwareCamera(_StoredSettings):
    """A camera that images the part of a large sample lying under its stage's current position."""

    def __init__(self, stage: Stage, shape: Iterable[int] = (256, 256), sample_shape: Iterable[int] = (2048, 2048),
                 dtype: str = "uint16", exposure: float = 0.01, seed: int = 1) -> None:
        self._stage = stage
        self._shape = tuple(int(n) for n in shape)
        sample_shape = tuple(int(n) for n in sample_shape)
        if any(s < v for s, v in zip(sample_shape, self._shape)):
            raise OutOfRange(f"sample_shape {list(sample_shape)} must be at least the image shape {list(self._shape)}")
        self._dtype = np.dtype(dtype)
        self._exposure = self.set_exposure(exposure)
        self._sample = np.random.default_rng(seed).integers(
            0, min(np.iinfo(self._dtype).max, 65535) + 1, size=sample_shape, dtype=np.int64).astype(self._dtype)

    @remote
    def view_origin(self) -> list[int]:
        """[row, column] of the sample pixel at the image's top-left corner, from the stage position."""
        axes, position = self._stage.get_axes(), self._stage.get_position()
        origin = []
        for axis, size, total in zip(("y", "x"), self._shape, self._sample.shape):
            low, high = axes[axis]
            fraction = (position[axis] - low) / (high - low)
            origin.append(int(round(fraction * (total - size))))
        return origin

    def _do_acquire(self) -> np.ndarray:
        row, col = self.view_origin()
        return self._sample[row:row + self._shape[0], col:col + self._shape[1]].copy()


def stage_aware_camera(stage: Mapping[str, Any] | None = None, camera: Mapping[str, Any] | None = None) -> dict:
    """Build a stage and a camera that sees the sample under it; they live and restart together."""
    stage_driver = SimStage(**dict(stage or {"axes": {"x": [0, 10000], "y": [0, 10000]}}))
    missing = {"x", "y"} - set(stage_driver.get_axes())
    if missing:
        raise OutOfRange(f"the stage of a stage-aware camera needs axes x and y; missing {sorted(missing)}")
    return {"stage": stage_driver, "camera": StageAwareCamera(stage_driver, **dict(camera or {}))}


__all__ = ["SimValves", "SimFurnace", "SimCamera", "SimFilterWheel", "SimStage", "SimLightSource",
           "SimLaserCombiner", "SimFloatingCamera", "StageAwareCamera", "stage_aware_camera"]
