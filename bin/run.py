"""`labctl run SCRIPT.py`: run a Python script against a running lab, every action logged."""

from __future__ import annotations

import ast
import builtins
import contextlib
import difflib
import functools
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import click

from labctl.actors import runstate
from labctl.actors.errors import DeviceUnavailable, LabError, UnknownDevice
from labctl.actors.extraction import VALVE_HELPERS, ExtractionLine, log, script_namespace
from labctl.actors.scriptlab import ScriptLab
from labctl.actors.handles import DeviceHandle
from labctl.actors.messages import DEVICE_MESSAGES

from .options import fail, lab_options, resolve_port

INTERRUPTED = 130          # what a shell reports for a program ended by Ctrl-C
LOG_FILE = "scripts.log"   # in the lab's log folder, next to lab.log
VALVE_METHODS = ("open", "close", "get_state", "lock", "unlock", "is_locked")
_OURS = tuple(str(Path(m.__file__).resolve().parent) + os.sep
              for m in (sys.modules["labctl.actors"], sys.modules["labctl.bin"]))


@click.command("run")
@click.argument("script", type=click.Path(exists=True, dir_okay=False))
@click.argument("args", nargs=-1)
@click.option("--dry-run", is_flag=True,
              help="Check every device and valve name and print each command instead of sending it. Valve "
                   "queries (is_open, GetValveState) answer from the valve states read from the lab the first "
                   "time the script touches a valve controller, updated by what the script commands; other "
                   "queries (temperatures, positions, status) are read from the lab, which changes nothing; "
                   "sleep() returns at once and wait_until() looks once.")
@lab_options
def run(script: str, args: tuple[str, ...], port: int | None, config_file: str | None, dry_run: bool) -> None:
    """Run SCRIPT (Python) against a running lab; ARGS after `--` go to the script as `argv`.

    \b
    The script sees `lab` (the connected client: lab.valves.open("A")), every message class
    (OpenValve, SetSetpoint, ...) and the extraction-line helpers: open(name), close(name),
    is_open(name), is_closed(name), lock(name), unlock(name), sleep(seconds), info(message),
    wait_until(predicate, timeout, poll=0.5). The helper `open` hides the built-in: use io.open
    for files. A valve is named by its name when unique across the valve controllers, as
    DEVICE:VALVE (e.g. valves:A), or by its description (any case).

    \b
    Before anything is sent, every literal device and valve name the script uses is checked;
    unknown ones are listed and nothing runs. Actions are logged with a timestamp to stderr and
    to scripts.log in the lab's log folder (when the lab runs on this machine); the script's own
    prints go to stdout.

    \b
    Exit status: 0 when the script ends, 1 when it raises (the traceback points at its line) or
    the lab or a name is wrong, its own sys.exit code, 130 after Ctrl-C. Ctrl-C waits for the
    reply to a request already sent, then stops the script; the lab keeps running.
    """
    path = os.path.abspath(script)
    source = Path(path).read_text()
    try:
        tree = ast.parse(source, path)
        code = compile(tree, path, "exec")
    except SyntaxError as exc:
        click.echo("".join(traceback.format_exception_only(type(exc), exc)).rstrip(), err=True)
        sys.exit(1)
    port = resolve_port(port, config_file)
    interrupts = DeferredInterrupts()
    interrupts.install()
    lab = None
    status = 1
    try:
        try:
            lab = ScriptLab(port, dry_run=dry_run, echo=functools.partial(print, flush=True))
        except LabError as exc:  # not running, or not authorised (no key)
            fail(str(exc))
        lab.guard = interrupts.guard
        line = ExtractionLine(lab)
        try:
            problems = check_names(tree, source, line)
        except LabError as exc:
            fail(str(exc))
        if problems:
            fail(f"{script} names what the lab does not have; nothing was sent:\n  " + "\n  ".join(problems))
        with script_log(port, f"run {Path(path).name}", terminal=True, dry_run=dry_run):
            status = execute(code, path, args, line)
            if dry_run:
                log.info("%d command%s would have been sent; nothing was sent", len(lab.rehearsed),
                         "" if len(lab.rehearsed) == 1 else "s")
    except KeyboardInterrupt:
        status = INTERRUPTED
    finally:
        if lab is not None:
            lab.close()
    sys.exit(status)


def execute(code: Any, path: str, args: tuple[str, ...], line: ExtractionLine) -> int:
    """Run the compiled script as __main__ and return its exit status; logs how it ended."""
    namespace = {"__name__": "__main__", "__file__": path, "__builtins__": builtins,
                 **script_namespace(line), "argv": list(args)}
    sys.argv = [path, *args]
    sys.path.insert(0, os.path.dirname(path))
    log.info("run %s%s on port %s", Path(path).name, "".join(f" {a}" for a in args), line.lab.port)
    began = time.monotonic()
    try:
        exec(code, namespace)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
        log.info("exit %d after %.1f s", status, time.monotonic() - began)
        return status
    except KeyboardInterrupt:
        log.warning("interrupted after %.1f s; nothing was sent after the interrupt; the lab keeps running",
                    time.monotonic() - began)
        return INTERRUPTED
    except BaseException as exc:  # the script's own error, whatever it is: report it and exit 1
        sys.stderr.write(script_traceback(exc, path))
        log.warning("failed after %.1f s: %s: %s", time.monotonic() - began, type(exc).__name__, exc)
        return 1
    log.info("done in %.1f s", time.monotonic() - began)
    return 0


def script_traceback(exc: BaseException, path: str) -> str:
    """The traceback from the script's first frame on; for lab errors also without labctl's own
    frames below the script's line (the error text says what went wrong)."""
    report = traceback.TracebackException.from_exception(exc)
    frames = list(report.stack)
    start = next((i for i, frame in enumerate(frames) if frame.filename == path), 0)
    frames = frames[start:]
    if isinstance(exc, LabError):
        while len(frames) > 1 and _is_ours(frames[-1].filename):
            frames.pop()
    report.stack = traceback.StackSummary.from_list(frames)
    return "".join(report.format())


def _is_ours(filename: str) -> bool:
    return filename.startswith(_OURS) or f"{os.sep}thespian{os.sep}" in filename or filename.startswith("<attrs")


class DeferredInterrupts:
    """Ctrl-C that lets a request already handed to the lab get its reply, then interrupts."""

    def __init__(self) -> None:
        self.enabled = False
        self.depth = 0
        self.pending = False
        self._outside: Any = None

    def install(self) -> None:
        """Defer SIGINT inside guard() from now on (unless it is ignored, as for a background job)."""
        self.enabled = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN

    def _defer(self, signum: int, frame: Any) -> None:
        if not self.pending:
            print("interrupt: waiting for the reply to the request already sent", file=sys.stderr, flush=True)
        self.pending = True

    @contextlib.contextmanager
    def guard(self) -> Iterator[None]:
        """Context for one request: an interrupt inside it takes effect when it ends."""
        if not self.enabled or threading.current_thread() is not threading.main_thread():
            yield  # Ctrl-C interrupts only the main thread (the REPL's event thread asks all the time)
            return
        if not self.depth:
            # outside requests Python's own handler stays, so that an interrupt is plain KeyboardInterrupt
            self._outside = signal.signal(signal.SIGINT, self._defer)
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if not self.depth:
                signal.signal(signal.SIGINT, self._outside)
                if self.pending:
                    self.pending = False
                    raise KeyboardInterrupt


@contextlib.contextmanager
def script_log(port: int, source: str, *, terminal: bool, dry_run: bool = False) -> Iterator[None]:
    """Send the helpers' log to stderr (if `terminal`) and, for real runs, to scripts.log in the
    lab's log folder when the lab runs on this machine."""
    handlers: list[logging.Handler] = []
    prefix = "[dry run] " if dry_run else ""
    if terminal:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s.%(msecs)03d {prefix}%(message)s", "%H:%M:%S"))
        handlers.append(handler)
    log_dir = None if dry_run else lab_log_dir(port)
    if log_dir is not None:
        try:
            handler = logging.FileHandler(log_dir / LOG_FILE)
        except OSError:
            pass  # the log folder is the lab's; a script still runs without it
        else:
            handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)-7s [{source}] %(message)s"))
            handlers.append(handler)
    for handler in handlers:
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        yield
    finally:
        for handler in handlers:
            log.removeHandler(handler)
            handler.close()


def lab_log_dir(port: int) -> Path | None:
    """The log folder of the lab on `port`, from its run record on this machine, if any."""
    try:
        record = runstate.read(port)
    except (OSError, LabError):
        return None
    if record is None or not record.log_dir or not Path(record.log_dir).is_dir():
        return None
    return Path(record.log_dir)


# -- names a script uses, checked before it runs ----------------------------------------------

@attrs.frozen
class NameUse:
    """A literal name in a script: a valve of the helpers (open("A")), an attribute chain of `lab`
    (lab.valves.open), or a device named by a string (lab.send("valves", ...)); the last two may
    carry a valve of that device (lab.valves.open("A"), lab.send("valves", OpenValve("A")))."""

    line: int
    text: str
    kind: str                      # "valve", "attribute" or "device"
    path: tuple[str, ...] = ()     # the attribute chain after `lab` (without a valve method), or (device,)
    valve: str = ""


def names_used(tree: ast.AST, source: str) -> list[NameUse]:
    """Every literal device and valve name the script passes to the helpers or reaches via `lab`."""
    uses: list[NameUse] = []

    def add(node: ast.AST, kind: str, path: tuple[str, ...], valve: str = "") -> None:
        text = ast.get_source_segment(source, node) or ""
        uses.append(NameUse(node.lineno, text if len(text) <= 60 else text[:57] + "...", kind, path, valve))

    nodes = list(ast.walk(tree))
    inner = {id(node.value) for node in nodes if isinstance(node, ast.Attribute)}
    for node in nodes:
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            chain = _lab_chain(node)
            if chain:
                add(node, "attribute", chain)
        if not isinstance(node, ast.Call):
            continue
        first = _literal(node.args[0]) if node.args else None
        if isinstance(node.func, ast.Name) and node.func.id in VALVE_HELPERS:
            name = first if first is not None else _literal(_keyword(node, "name"))
            if name is not None:
                add(node, "valve", (), name)
        chain = _lab_chain(node.func)
        if not chain:
            continue
        if chain[-1] in VALVE_METHODS and len(chain) > 1 and first is not None:
            add(node, "attribute", chain[:-1], first)
        elif chain in (("send",), ("device",)) and first is not None:
            valve = _message_valve(node.args[1]) if chain == ("send",) and len(node.args) > 1 else None
            add(node, "device", (first,), valve or "")
    return sorted(uses, key=lambda use: use.line)


def _lab_chain(node: ast.expr) -> tuple[str, ...] | None:
    """('valves', 'open') for `lab.valves.open`; None when the chain does not start at `lab`."""
    names = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    return tuple(reversed(names)) if isinstance(node, ast.Name) and node.id == "lab" and names else None


def _literal(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _keyword(node: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in node.keywords if k.arg == name), None)


def _message_valve(node: ast.AST) -> str | None:
    """'A' for OpenValve("A") (any valve message written with a literal name)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in DEVICE_MESSAGES \
            and "valve" in attrs.fields_dict(DEVICE_MESSAGES[node.func.id]):
        return _literal(node.args[0] if node.args else _keyword(node, "valve"))
    return None


def check_names(tree: ast.AST, source: str, line: ExtractionLine) -> list[str]:
    """One line per literal name the lab does not know ("line 50: open('Z'): no valve 'Z'; ...")."""
    problems: dict[str, None] = {}  # in order, once each (one line may name a device twice)
    lab_api = set(dir(type(line.lab))) | set(vars(line.lab))
    for use in names_used(tree, source):
        try:
            if use.kind == "valve":
                line.valve(use.valve)
            elif use.kind == "device" or use.path[0] not in lab_api:
                _check_device(line.lab, use)
        except (LookupError, UnknownDevice, DeviceUnavailable) as exc:
            problems[f"line {use.line}: {use.text}: {getattr(exc, 'text', None) or exc}"] = None
    return list(problems)


def _check_device(lab: ScriptLab, use: NameUse) -> None:
    """Walk `lab.a.b.c` as the client would: devices, their parts, then a method; check a valve."""
    description = lab.describe(use.path[0])
    for part in use.path[1:]:
        if f"{description.name}.{part}" in description.sub_devices:
            description = lab.describe(f"{description.name}.{part}")
            continue
        methods = [m.name for m in description.methods]
        if part not in methods and part not in dir(DeviceHandle):
            close = difflib.get_close_matches(part, methods, n=1)
            raise LookupError(f"{description.name} has no method or part {part!r}"
                              f"{f' (did you mean {close[0]!r}?)' if close else ''}; methods: {', '.join(methods)}")
        break
    if use.valve and description.valves and use.valve not in description.valves:
        raise LookupError(f"{description.name} has no valve {use.valve!r}; valves: {', '.join(description.valves)}")
