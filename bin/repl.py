"""`labctl repl`: an interactive Python console connected to a running lab, printing its events."""

from __future__ import annotations

import code
import contextlib
import keyword
import os
import rlcompleter
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from labctl.actors.errors import DeviceUnavailable, LabError, UnknownDevice
from labctl.actors.extraction import ExtractionLine, script_namespace
from labctl.actors.scriptlab import ScriptLab
from labctl.actors.handles import DeviceHandle
from labctl.actors.messages import DEVICE_MESSAGES, Request

from . import formatting
from .options import fail, lab_options, resolve_port
from .run import DeferredInterrupts, script_log

try:
    import readline
except ImportError:  # no readline on this platform: the console still works, without editing
    readline = None

HISTORY_ENV = "LABCTL_HISTORY"
HISTORY_LENGTH = 10000


@click.command("repl")
@click.option("--plain", is_flag=True, help="Use the standard Python console even when IPython is installed.")
@lab_options
def repl(port: int | None, config_file: str | None, plain: bool) -> None:
    """An interactive Python console on a running lab.

    \b
    Names: `lab` (the client), every device by its name (valves, furnace, ...), every message
    class (OpenValve, ...), send(device, message), status(), and the script helpers of
    `labctl run`: open, close, is_open, is_closed, lock, unlock, sleep, info, wait_until.
    Tab completes names, device methods and, inside quotes, valve names; help(furnace) shows
    what a device accepts. Lab events (crashes, restarts, valve changes) are printed as they
    happen. Actions go to scripts.log in the lab's log folder (when the lab runs on this
    machine). Uses IPython when installed.
    History: $LABCTL_HISTORY, else $XDG_STATE_HOME/labctl/repl_history (default
    ~/.local/state/labctl/repl_history). Ctrl-D or exit() leaves; the lab keeps running.
    """
    port = resolve_port(port, config_file)
    interrupts = DeferredInterrupts()
    interrupts.install()
    try:
        lab = ScriptLab(port)
    except LabError as exc:  # not running, or not authorised (no key)
        fail(str(exc))
    lab.guard = interrupts.guard
    events = None
    try:
        try:
            namespace, banner, words = console_namespace(lab)
        except LabError as exc:
            fail(str(exc))
        screen = Screen()
        events = EventPrinter(lab, screen.show)
        events.start()
        with script_log(port, "repl", terminal=False):
            if plain or not ipython_installed():
                status = plain_console(namespace, banner, words, history_path(), screen)
            else:
                status = ipython_console(namespace, banner, history_path(), screen)
    except KeyboardInterrupt:  # Ctrl-C while connecting
        status = 130
    finally:
        if events is not None:
            events.stop()
        lab.close()
    sys.exit(status)


def console_namespace(lab: ScriptLab) -> tuple[dict[str, Any], str, list[str]]:
    """The console's names, its banner, and the words Tab offers inside quotes (valves, devices)."""
    line = ExtractionLine(lab)
    namespace: dict[str, Any] = {"__name__": "__console__", "__doc__": None, **script_namespace(line)}

    def send(device: str | DeviceHandle, message: Request, timeout: float | None = None) -> Any:
        """Send `message` to `device` (a name or a device) and return the reply's value."""
        return lab.send(device.name if isinstance(device, DeviceHandle) else device, message, timeout)

    def status() -> None:
        """Print every device's state, pid, restarts and last error."""
        print(formatting.status_table(lab.status()))

    namespace.update(send=send, status=status)
    lab_status = lab.status()
    devices, absent = [], []
    for name in lab.device_names():
        if "." in name or not name.isidentifier() or keyword.iskeyword(name):
            continue  # a part (laser.l488) or an odd name: reach it as lab.device("...")
        if name in namespace:
            absent.append(f"{name} (the name is taken: use lab.{name})")
            continue
        try:
            namespace[name] = lab.device(name)
            devices.append(name)
        except UnknownDevice:
            continue  # a composite device: its parts are the devices
        except DeviceUnavailable as exc:
            absent.append(f"{name} ({exc.state or 'unavailable'}: use lab.{name} once it runs)")
    valves = line.valves()
    words = sorted({v.name for v in valves} | set(lab.device_names()))
    banner = "\n".join([
        f"labctl repl: lab {lab_status.lab} on port {lab.port}",
        f"devices: {', '.join(devices) or 'none'}" + (f"; not here: {', '.join(absent)}" if absent else ""),
        f"valves: {', '.join(v.label() for v in valves)}" if valves else "valves: none",
        "helpers: open close is_open is_closed lock unlock sleep info wait_until; send(device, message); "
        "status()",
        f"messages: {', '.join(DEVICE_MESSAGES)}",
        "Tab completes; help(device) shows its methods; lab events are printed as they happen; "
        "Ctrl-D or exit() leaves."])
    return namespace, banner, words


def history_path() -> Path:
    """$LABCTL_HISTORY, else $XDG_STATE_HOME/labctl/repl_history, else ~/.local/state/labctl/repl_history."""
    if os.environ.get(HISTORY_ENV):
        return Path(os.environ[HISTORY_ENV])
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "labctl" / "repl_history"


# -- events ------------------------------------------------------------------------------------

class EventPrinter:
    """Prints the lab's events as they happen, from a daemon thread (the client gives each thread
    its own Thespian context, so this never crosses the console's replies)."""

    def __init__(self, lab: ScriptLab, write: Callable[[str], None]) -> None:
        self.lab = lab
        self.write = write
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labctl-events", daemon=True)

    def start(self) -> None:
        """Print events from now on."""
        self._since = self.lab.events().last_seq
        self._thread.start()

    def stop(self) -> None:
        """Print nothing more (the thread ends at its next event or poll)."""
        self._stopped.set()

    def _run(self) -> None:
        since, lost = self._since, False
        while not self._stopped.is_set():
            try:
                for event in self.lab.follow(since):
                    if self._stopped.is_set():
                        return
                    if lost:
                        self.write("[lab] events are back")
                        lost = False
                    since = event.seq
                    stamp = time.strftime("%H:%M:%S", time.localtime(event.time))
                    self.write(f"[{stamp}] {event.text()}")
            except Exception as exc:  # the lab went away or restarted: say so once, keep trying
                if self._stopped.is_set():
                    return
                if not lost:
                    self.write(f"[lab] lost the lab's events ({exc}); still trying")
                    lost = True
                since = None  # a restarted lab numbers its events afresh
                self._stopped.wait(1.0)


class Screen:
    """Where events are printed: at the standard console's prompt, above the line being typed (then
    the prompt and what was typed are drawn again); while a command runs, only after its first
    HOLD_S seconds, so that the event a quick command causes (its valve moving) comes after the
    command's output, not inside it."""

    HOLD_S = 0.5

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._readline = False            # readline says when its prompt is drawn (follow_readline)
        self._prompt: str | None = None   # the prompt on the screen while a line is typed
        self._next_prompt: str | None = None
        self._holding = False             # a command runs (its first HOLD_S s), or a prompt is coming
        self._held: list[str] = []
        self._command = 0                 # counts commands, so that a late timer knows it is late
        self._timer: threading.Timer | None = None

    def follow_readline(self) -> None:
        """Learn from readline when its prompt is on the screen, so that news can go above it."""
        if readline is not None and hasattr(readline, "set_pre_input_hook") \
                and sys.stdin.isatty() and sys.stdout.isatty():  # input() uses readline only then
            readline.set_pre_input_hook(self._prompt_shown)
            self._readline = True

    def show(self, text: str) -> None:
        """Print one line of news without garbling the line being typed or a command's output."""
        with self._lock:
            if self._holding:
                self._held.append(text)
            elif self._prompt is not None:
                self._above_prompt(text)
            else:
                self._print(text)

    def command_started(self) -> None:
        """A line was entered: hold news back for HOLD_S seconds."""
        with self._lock:
            self._prompt, self._next_prompt, self._holding = None, None, True
            self._command += 1
            self._timer = threading.Timer(self.HOLD_S, self._release, (self._command,))
            self._timer.daemon = True
            self._timer.start()

    def command_ended(self, prompt: str | None = None) -> None:
        """The console is about to wait for input after `prompt` (the standard console's)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if self._readline and prompt is not None:
                # news waits until readline has drawn the prompt, then goes above it
                self._next_prompt, self._holding = prompt, True
            else:
                self._holding = False
                self._flush()

    def _prompt_shown(self) -> None:
        # readline's pre-input hook: the prompt is drawn, the line is empty
        with self._lock:
            if self._next_prompt is None:
                return  # an input() inside a command, not the console's prompt
            self._prompt, self._holding = self._next_prompt, False
            for text in self._held:
                self._above_prompt(text)
            self._held.clear()

    def _release(self, command: int) -> None:
        with self._lock:
            if command == self._command and self._holding and self._next_prompt is None:
                self._holding = False  # a long command: news from now on as it comes
                self._flush()

    def _above_prompt(self, text: str) -> None:
        sys.stdout.write(f"\r\x1b[K{text}\n{self._prompt}{readline.get_line_buffer()}")
        sys.stdout.flush()

    def _flush(self) -> None:
        for text in self._held:
            self._print(text)
        self._held.clear()

    @staticmethod
    def _print(text: str) -> None:
        # sys.stdout as it is now: under IPython's prompt it is prompt_toolkit's proxy, which puts the
        # line above the prompt
        print(text, file=sys.stdout, flush=True)


# -- the consoles ------------------------------------------------------------------------------

class LabConsole(code.InteractiveConsole):
    """The standard console, telling the screen when a line is being typed and when a command runs."""

    def __init__(self, namespace: dict[str, Any], screen: Screen) -> None:
        super().__init__(namespace, filename="<labctl>")
        self.screen = screen

    def raw_input(self, prompt: str = "") -> str:
        self.screen.command_ended(prompt)
        try:
            return input(prompt)
        finally:
            self.screen.command_started()


class LabCompleter(rlcompleter.Completer):
    """Python completion, plus valve and device names inside quotes: open("A<Tab>."""

    def __init__(self, namespace: dict[str, Any], words: list[str]) -> None:
        super().__init__(namespace)
        self.words = words
        self._quoted: list[str] = []

    def attr_matches(self, text: str) -> list[str]:
        try:
            return super().attr_matches(text)
        except LabError:
            # rlcompleter looks every name up, and a device that is not running cannot be described
            # (the client lets DeviceUnavailable out of getattr): offer the names without looking
            expr, _, attr = text.rpartition(".")
            try:
                names = dir(eval(expr, self.namespace))
            except Exception:  # what rlcompleter does with an expression it cannot evaluate
                return []
            return [f"{expr}.{n}" for n in names if n.startswith(attr) and (attr[:1] == "_" or n[:1] != "_")]

    def complete(self, text: str, state: int) -> str | None:
        if state == 0:
            before = readline.get_line_buffer()[:readline.get_begidx()]
            self._quoted = [w for w in self.words if w.startswith(text)] if before[-1:] in ("'", '"') else []
        if self._quoted:
            return self._quoted[state] if state < len(self._quoted) else None
        return super().complete(text, state)


def plain_console(namespace: dict[str, Any], banner: str, words: list[str], history: Path, screen: Screen) -> int:
    """The standard library's console with readline; returns the exit status."""
    if readline is not None:
        readline.set_completer(LabCompleter(namespace, words).complete)
        screen.follow_readline()
        readline.parse_and_bind("bind ^I rl_complete" if "libedit" in (readline.__doc__ or "") else "tab: complete")
        readline.set_history_length(HISTORY_LENGTH)
        with contextlib.suppress(OSError):
            readline.read_history_file(history)
    status = 0
    try:
        LabConsole(namespace, screen).interact(banner, exitmsg="")
    except SystemExit as exc:  # exit() or quit() typed at the prompt
        status = exc.code if isinstance(exc.code, int) else 0
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):
                history.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(history)
    return status


def ipython_installed() -> bool:
    """Whether IPython can be imported."""
    try:
        import IPython  # noqa: F401
    except ImportError:
        return False
    return True


def ipython_console(namespace: dict[str, Any], banner: str, history: Path, screen: Screen) -> int:
    """IPython on the same names; events print above its prompt. Returns the exit status."""
    from IPython.terminal.ipapp import TerminalIPythonApp
    from traitlets.config import Config

    config = Config()
    config.TerminalInteractiveShell.banner1 = banner + "\n"
    config.TerminalInteractiveShell.confirm_exit = False
    config.HistoryManager.hist_file = str(history.with_name(history.name + ".sqlite"))
    config.IPCompleter.use_jedi = False          # jedi cannot see devices: they come from the lab
    config.IPCompleter.evaluation = "unsafe"     # complete lab.valves.<Tab>: evaluates `lab.valves`
    history.parent.mkdir(parents=True, exist_ok=True)
    app = TerminalIPythonApp.instance(config=config, user_ns=dict(namespace))
    app.initialize(argv=[])
    app.shell.user_ns.update(namespace)  # IPython put its own `open` there: the valve helper wins
    app.shell.events.register("pre_run_cell", lambda *info: screen.command_started())
    app.shell.events.register("post_run_cell", lambda *result: screen.command_ended())
    app.start()  # IPython patches stdout while it prompts: news printed then goes above the prompt
    return 0
