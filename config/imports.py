"""Importing driver modules in child processes first, so that one that exits, crashes or hangs at import
is reported as a problem of the lab file instead of taking `labctl check` or `labctl up` down with it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import Any

from .drivers import registered_drivers

IMPORT_TIMEOUT_S = 10.0
_MARK = "labctl-import-check:"

# The child imports with the caller's exact sys.path, so that it judges the very module the caller would
# import. An ordinary exception counts as a pass: the child survived it, and the caller's own import
# reports it the way it reports any failed import. The verdict goes straight to fd 1 (a module may
# replace sys.stdout), and os._exit skips the atexit handlers and non-daemon threads a module may leave.
_CHILD = f"""\
import importlib, json, os, sys
sys.path[:] = json.loads(sys.argv[2])
try:
    importlib.import_module(sys.argv[1])
    verdict = "ok"
except SystemExit:
    raise
except Exception:
    verdict = "ok"
except BaseException as exc:
    verdict = "raised " + type(exc).__name__
os.write(1, ("\\n{_MARK} " + verdict + "\\n").encode())
os._exit(0)
"""


def untrusted_modules(data: dict[str, Any]) -> list[str]:
    """The modules outside labctl that a lab document's drivers and factories import, not yet imported here."""
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, dict):
        return []
    registered = registered_drivers()
    modules: list[str] = []
    for spec in devices.values():
        if not isinstance(spec, dict):
            continue
        driver, factory = spec.get("driver"), spec.get("factory")
        for target in (registered.get(driver, driver) if isinstance(driver, str) else None, factory):
            if not isinstance(target, str):
                continue
            module, sep, _ = target.removeprefix("microscope:").partition(":")
            # labctl's own drivers are trusted, and a module already imported has nothing left to run
            if (not sep or not module or module == "labctl" or module.startswith("labctl.")
                    or module in sys.modules or module in modules):
                continue
            modules.append(module)
    return modules


def check_imports(modules: Iterable[str], timeout: float = IMPORT_TIMEOUT_S) -> dict[str, str]:
    """Import each module in its own child process, all at once: {module: problem} for those whose import
    ended the process (an exit, a signal), raised a non-Exception, or did not finish within `timeout` s."""
    modules = list(dict.fromkeys(modules))
    if not modules:
        return {}
    path = json.dumps(sys.path)
    children = []
    try:
        for module in modules:
            # files, not pipes: a child that writes a lot must not block on a pipe nobody reads yet
            out = tempfile.TemporaryFile()
            err = tempfile.TemporaryFile()
            children.append((module, out, err, subprocess.Popen(
                [sys.executable, "-c", _CHILD, module, path], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True)))  # its own process group: a hang is killed with whatever it started
        deadline = time.monotonic() + timeout
        problems = {}
        for module, out, err, child in children:
            try:
                code = child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                problems[module] = f"importing {module!r} did not finish within {timeout:g} s"
                continue
            problem = _verdict(module, code, _read(out), _read(err))
            if problem:
                problems[module] = problem
        return problems
    finally:
        for _, out, err, child in children:
            if child.poll() is None:
                _kill_group(child)
            out.close()
            err.close()


def _verdict(module: str, code: int, out: str, err: str) -> str | None:
    """What went wrong in a child that ended with `code`, or None if it finished the import."""
    lines = out.splitlines()
    verdict = next((line[len(_MARK):].strip() for line in reversed(lines) if line.startswith(_MARK)), None)
    if code == 0 and verdict == "ok":
        return None
    if verdict and verdict != "ok":
        return f"importing {module!r} {verdict}"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        what = f"killed the process with {name}"
    else:
        what = f"exited with code {code}"
    last = next((line.strip() for line in reversed(err.splitlines()) if line.strip()), "")
    return f"importing {module!r} {what}" + (f": {last[:200]}" if last else "")


def _read(file) -> str:
    """The last 64 KiB a child wrote: the verdict and the last error line are at the end."""
    file.seek(0, os.SEEK_END)
    file.seek(max(0, file.tell() - 65536))
    return file.read().decode("utf-8", "replace")


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        child.kill()
    child.wait()
