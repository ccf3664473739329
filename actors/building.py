"""Building a configured device's drivers in its process: its emulator first (if the lab file
declares one), then the driver class, a factory's parts, or the floating unit probing found."""

from __future__ import annotations

from pathlib import Path

from labctl.config.drivers import is_floating, resolve_driver, resolve_factory
from labctl.config.schema import Device as DeviceSpec
from labctl.hardware import Device, NotPresent


def as_driver(part) -> Device:
    """A factory's part as a labctl driver: itself, or a python-microscope device wrapped."""
    if isinstance(part, Device):
        return part
    from labctl.hardware.microscope_devices import wrap

    return wrap(part)


def build(spec: DeviceSpec, candidate: int | None, run_dir: str, emulators: list) -> dict[str, Device]:
    """{name: driver} for one configured device (a factory's parts as `device.part`); an emulator it
    starts is appended to `emulators` at once, so that it is stopped even if the driver then fails."""
    conf = spec.fresh_conf()
    if spec.emulator is not None:
        from labctl.hardware.emulators import make_emulator

        Path(run_dir).mkdir(parents=True, exist_ok=True)
        link = Path(run_dir) / f"{spec.name}.tty"
        emulator = make_emulator(spec.emulator.kind, link=str(link), **spec.emulator.options).start()
        emulators.append(emulator)
        conf["port"] = emulator.port
    if spec.factory:
        built = resolve_factory(spec.factory)(**conf)
        if not isinstance(built, dict):
            raise TypeError(f"factory {spec.factory} must return {{name: driver}}, got {type(built).__name__}")
        return {f"{spec.name}.{member}": as_driver(driver) for member, driver in built.items()}
    cls = resolve_driver(spec.driver)
    if not is_floating(cls):
        return {spec.name: cls(**conf)}
    if candidate is None:
        raise NotPresent(f"unit {spec.uid} was not found when probing")
    driver = cls.open_candidate(candidate, **conf)
    found = driver.get_id()
    if found != spec.uid:
        driver.shutdown()
        raise NotPresent(f"candidate {candidate} is now unit {found}, not {spec.uid} (units were re-ordered)")
    return {spec.name: driver}
