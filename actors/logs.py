"""The lab's logs: one file per device plus the lab's own, every line naming its device."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

LAB = "lab"
FORMAT = "%(asctime)s %(levelname)-7s [%(device)s] %(name)s: %(message)s"

# The device being driven, per thread (driver calls run on a worker thread, the actor on its own);
# a thread that drives nothing logs under the process's default device.
_driving = threading.local()
_default_device = [LAB]


class DeviceFilter(logging.Filter):
    """Gives every record a `device` (default 'lab'), which the format prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "device"):
            record.device = LAB
        return True


class DeviceFiles(logging.Handler):
    """Writes each record that names a device to <log_dir>/<device>.log (a sub-device's to its
    device's file), opening files as devices first log; no list of devices is needed up front."""

    def __init__(self, log_dir: str) -> None:
        super().__init__()
        self.log_dir = Path(log_dir)
        self.files: dict[str, logging.FileHandler] = {}

    def emit(self, record: logging.LogRecord) -> None:
        device = getattr(record, "device", LAB).split(".")[0]
        if device == LAB or not device.isidentifier():
            return
        handler = self.files.get(device)
        if handler is None:
            handler = self.files[device] = logging.FileHandler(self.log_dir / f"{device}.log")
            handler.setFormatter(self.formatter)
        handler.emit(record)

    def close(self) -> None:
        for handler in self.files.values():
            handler.close()
        super().close()


def log_config(log_dir: str, level: str = "INFO") -> dict:
    """A logging.config dict for a lab's logger process: lab.log, plus <device>.log per device."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"plain": {"format": FORMAT}},
            "filters": {"any": {"()": "labctl.actors.logs.DeviceFilter"}},
            "handlers": {
                "lab": {"class": "logging.FileHandler", "filename": str(Path(log_dir) / "lab.log"),
                        "formatter": "plain", "filters": ["any"]},
                "devices": {"()": "labctl.actors.logs.DeviceFiles", "log_dir": str(log_dir),
                            "formatter": "plain", "filters": ["any"]}},
            "root": {"level": level, "handlers": ["lab", "devices"]}}


# logging's managers of the processes this one descends from (the keeper's, the admin's, ...).
_inherited_managers: list[logging.Manager] = []


def remember_logging_manager() -> None:
    """Note this process's logging manager before Thespian replaces it in a forked child."""
    if logging.Logger.manager not in _inherited_managers:
        _inherited_managers.append(logging.Logger.manager)


def adopt_inherited_loggers() -> None:
    """In an actor's process: route loggers made in the processes it was forked from to Thespian's
    log forwarder, as if they had been made here."""
    for manager in _inherited_managers:
        if manager is logging.Logger.manager:
            continue
        for logger in list(manager.loggerDict.values()):
            if isinstance(logger, logging.Logger) and not logger.handlers:
                logger.parent = logging.root
                logger.manager = logging.Logger.manager


def tag_records_with_device(default: str) -> None:
    """In a device host's process: stamp each log record with the device being driven.

    Code running there names its device with `driving(...)`, not with `extra=`."""
    _default_device[0] = default
    make_record = logging.getLogRecordFactory()
    if getattr(make_record, "_labctl", False):
        return

    def factory(*args, **kwargs):
        record = make_record(*args, **kwargs)
        if not hasattr(record, "device"):
            record.device = getattr(_driving, "device", None) or _default_device[0]
        return record

    factory._labctl = True
    logging.setLogRecordFactory(factory)


class driving:
    """Context manager: log records made inside it, on this thread, name `device`."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self) -> None:
        self.previous = getattr(_driving, "device", None)
        _driving.device = self.device

    def __exit__(self, *exc: object) -> None:
        _driving.device = self.previous


def log_failure(device: str, method: str, args: tuple, kwargs: dict, exc: Exception) -> None:
    """Log a driver call that raised, with its arguments cut to a few hundred characters."""
    import reprlib

    # A client chooses the arguments (and an error text may quote them): each is cut, and so is the
    # whole, so that a megabyte of argument costs the log one short line. reprlib builds no huge
    # string on the way; the count of arguments is capped too (a call may carry a million).
    limit, cut = 300, reprlib.Repr()
    cut.maxstring = cut.maxother = cut.maxlong = 100
    parts = [cut.repr(a) for a in args[:20]] + [f"{str(k)[:40]}={cut.repr(v)}" for k, v in list(kwargs.items())[:20]]
    shown = ", ".join(parts) + (", ..." if len(args) > 20 or len(kwargs) > 20 else "")
    shown = shown if len(shown) <= limit else shown[:limit] + f"... ({len(shown)} characters)"
    text = str(exc)
    text = text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"
    with driving(device):
        logging.getLogger("labctl.devicehost").warning("%s(%s) failed: %s: %s", method, shown,
                                                       type(exc).__name__, text)


def write_locally(log_dir: str) -> None:
    """In a lab process on the leader's machine: write log records straight to lab.log and the device
    files (appending, as the logger process does) instead of through Thespian's logger process, so
    that a logger that is stopped or dead costs nothing here: not a blocked thread, not a heartbeat."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(FORMAT)
    handlers = [logging.FileHandler(Path(log_dir) / "lab.log"), DeviceFiles(log_dir)]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(DeviceFilter())
    root = logging.getLogger()
    root.handlers = handlers  # replaces Thespian's forwarder to its logger
    root.setLevel(logging.INFO)


def file_logger(log_dir: str, name: str = "labctl.keeper") -> logging.Logger:
    """A logger writing to the lab's lab.log from a process outside the actor system (the keeper)."""
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(name)
    path = str(Path(log_dir) / "lab.log")
    if not any(getattr(h, "baseFilename", None) == path for h in logger.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler.addFilter(DeviceFilter())
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger
