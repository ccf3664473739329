"""Benchmark: labctl side by side with python-microscope's device server. Prints figures; asserts nothing.

    pip install -e '.[bench]'          # python-microscope and Pyro4, next to labctl
    python bench/vs_microscope.py [--rounds 5] [--calls 500] [--frames 10] [--stream-seconds 2]
                                  [--stream-frames 200] [--lanes unix,tcp,off] [--memory-minutes 0]
                                  [--keep-files]

Both systems serve the same two simulated devices on free loopback ports, each in its own
subprocesses, and are stopped at the end (also after an error or Ctrl-C):

  microscope  `python -m microscope.device_server CONFIG.py` with microscope.simulators'
              SimulatedCamera (2048x2048 sensor, "black" image pattern, uint16, 1 ms exposure) and
              SimulatedLightSource, driven through Pyro4 proxies as its clients do.
  labctl      `labctl up LAB.toml --detach --port P` with sim-camera (2048x2048 uint16, "static" pattern, 1 ms
              exposure) and sim-light, driven through `labctl.actors.client.connect(P, lane=...)`
              once per lane given with --lanes: "unix" (Unix socket, frames in shared memory),
              "tcp" (the remote path, here over loopback), "off" (through the supervisor).

Each round runs microscope, then labctl on every lane, then a raw TCP socket, and measures:

  trivial call  light.get_is_enabled()         | lab.send("light", GetStatus())      p50, p99 (ms)
  frame pull    camera.grab_next_data()        | lab.send("camera", Acquire())       MB/s (1 MB = 1e6 bytes)
  stream        DataClient + trigger() window  | lab.camera.stream(n)                frames/s, frames lost
                (the simulated camera takes one software trigger per frame: 4 are kept in flight)
  raw socket    8 MiB buffers, sendall / recv_into between two processes            MB/s

and prints the medians over the rounds next to the goals (labctl/microscope ratios, and the tcp
lane's pull as a share of the raw socket). A measurement that fails prints "n/a (<error>)" and the
run carries on. --memory-minutes M adds, after the rounds, an M-minute stream per system and lane
that reports this client's RSS at its start and end.

Not a test: it lives in bench/, outside pytest's testpaths, and is not run in CI.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import psutil

try:
    import microscope
    import microscope.clients  # also makes Pyro4 use pickle (numpy arrays), as microscope's clients do
    import Pyro4
except ImportError as exc:
    raise SystemExit(f"{exc}: install the bench extra first: pip install -e '.[bench]'") from None

SHAPE = (2048, 2048)
FRAME_BYTES = SHAPE[0] * SHAPE[1] * 2
EXPOSURE_S = 0.001
LANES = ("unix", "tcp", "off", "auto")
WARMUP_CALLS = 20
TRIGGER_WINDOW = 4          # microscope stream: software triggers kept in flight
DRAIN_S = 2.0               # microscope stream: how long frames still in flight may take to arrive
PYRO_TIMEOUT_S = 30.0
MB = 1e6

MICROSCOPE_CONFIG = """\
from microscope.device_server import device
from microscope.simulators import SimulatedCamera, SimulatedLightSource

DEVICES = [
    device(SimulatedCamera, "127.0.0.1", {camera_port}, conf={{"sensor_shape": ({rows}, {cols})}}),
    device(SimulatedLightSource, "127.0.0.1", {light_port}),
]
"""

LAB_TOML = """\
[lab]
name = "vs-microscope"
log_dir = "{log_dir}"

[devices.light]
driver = "sim-light"

[devices.camera]
driver = "sim-camera"
conf = {{ shape = [{rows}, {cols}], dtype = "uint16", exposure = {exposure}, pattern = "static" }}
"""


# -- helpers ---------------------------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    """`n` different TCP ports on loopback that nothing listens on right now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def short(exc: BaseException, width: int = 110) -> str:
    """An exception as one short line."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= width else text[:width - 3] + "..."


def timed_calls(call, n: int) -> list[float]:
    """Seconds each of `n` calls took, sorted."""
    times = []
    for _ in range(n):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return sorted(times)


def call_figures(call, n: int) -> dict:
    """Warm up, then p50 and p99 of `n` calls, in ms."""
    for _ in range(WARMUP_CALLS):
        call()
    times = timed_calls(call, n)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    return {"call_p50": times[len(times) // 2] * 1e3, "call_p99": p99 * 1e3}


def pull_figures(pull, frames: int) -> dict:
    """Warm up, then MB/s over `frames` pulls of one frame; `pull` returns the numpy array."""
    first = pull()
    if first.shape != SHAPE or first.nbytes != FRAME_BYTES:
        raise RuntimeError(f"expected a {SHAPE} uint16 frame, got {first.shape} {first.dtype}")
    began = time.perf_counter()
    received = sum(pull().nbytes for _ in range(frames))
    return {"pull_mbs": received / (time.perf_counter() - began) / MB}


def client_rss_mb() -> float:
    """This process's resident memory, MB, after a collection."""
    gc.collect()
    return psutil.Process().memory_info().rss / MB


# -- python-microscope -----------------------------------------------------------------------------

class MicroscopeServer:
    """python-microscope's device server in its own session, serving a camera and a light source."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "microscope"
        self.folder.mkdir()
        self.camera_port, self.light_port = free_ports(2)
        self.process: subprocess.Popen | None = None
        self.camera = self.light = self.data_client = None
        self.stop_s: float | None = None

    camera_name, light_name = "SimulatedCamera", "SimulatedLightSource"

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until both devices answer; set up the camera as the benchmark wants."""
        self.launch()
        self.camera = self._wait_for(self.camera_name, self.camera_port, timeout)
        self.light = self._wait_for(self.light_name, self.light_port, timeout)
        for setting, wanted in (("image pattern", "black"), ("image data type", "uint16")):
            values = dict((name, index) for index, name in self.camera.describe_setting(setting)["values"])
            self.camera.set_setting(setting, values[wanted])
        self.camera.set_exposure_time(EXPOSURE_S)
        self.camera.enable()
        self.data_client = microscope.clients.DataClient(self._uri(self.camera_name, self.camera_port))
        self.data_client._proxy._pyroTimeout = PYRO_TIMEOUT_S

    def launch(self) -> None:
        """Start the device server."""
        config = self.folder / "devices.py"
        config.write_text(MICROSCOPE_CONFIG.format(camera_port=self.camera_port, light_port=self.light_port,
                                                   rows=SHAPE[0], cols=SHAPE[1]))
        # Its own session, so that stop() can reach every process it forks; cwd too: it writes __MAIN__.log there.
        with open(self.folder / "server.err", "wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "microscope.device_server", "--logging-dir", str(self.folder), str(config)],
                cwd=self.folder, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)

    @staticmethod
    def _uri(name: str, port: int) -> str:
        return f"PYRO:{name}@127.0.0.1:{port}"

    def _wait_for(self, name: str, port: int, timeout: float):
        """A proxy for `name` once it answers."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the device server exited ({self.process.returncode}): "
                                   f"{(self.folder / 'server.err').read_text()[-500:]}")
            proxy = Pyro4.Proxy(self._uri(name, port))
            proxy._pyroTimeout = PYRO_TIMEOUT_S
            try:
                proxy.get_is_enabled()
                return proxy
            except Pyro4.errors.CommunicationError:
                proxy._pyroRelease()
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer on port {port} within {timeout:g} s") from None
                time.sleep(0.1)

    def call(self, n: int) -> dict:
        """Trivial call: get_is_enabled() on the light source."""
        return call_figures(self.light.get_is_enabled, n)

    def pull(self, frames: int) -> dict:
        """Frame pull: grab_next_data() (it software-triggers the camera and waits for the frame)."""
        return pull_figures(lambda: self.camera.grab_next_data()[0], frames)

    def stream(self, seconds: float, max_frames: int) -> dict:
        """Push stream to a DataClient: the camera only triggers once per software trigger, so this keeps
        TRIGGER_WINDOW triggers in flight and counts what receiveData delivers."""
        client = self.data_client
        while not client._buffer.empty():
            client._buffer.get_nowait()
        client.enable()  # pushes this client on the camera's client stack
        sent = received = 0
        try:
            began = time.perf_counter()
            deadline = began + seconds
            while received < max_frames and time.perf_counter() < deadline:
                while sent - received < TRIGGER_WINDOW and sent < max_frames:
                    client.trigger()
                    sent += 1
                try:
                    data, _ = client._buffer.get(timeout=max(0.1, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if isinstance(data, Exception):
                    raise RuntimeError(f"the camera sent an error: {data}")
                if data.nbytes != FRAME_BYTES:
                    raise RuntimeError(f"expected a {SHAPE} uint16 frame, got {data.shape} {data.dtype}")
                received += 1
            elapsed = time.perf_counter() - began
            late = 0
            drain_until = time.monotonic() + DRAIN_S
            while received + late < sent and time.monotonic() < drain_until:
                try:
                    client._buffer.get(timeout=max(0.01, drain_until - time.monotonic()))
                    late += 1
                except queue.Empty:
                    break
        finally:
            client.set_client(None)  # pops it again
        # microscope has no way to report a lost frame: every one missing is lost silently.
        return {"stream_fps": received / elapsed, "stream_silent": sent - received - late}

    def stop(self) -> None:
        """SIGTERM (its clean shutdown), then SIGKILL to whatever of its session is left."""
        for proxy in (self.camera, self.light, self.data_client and self.data_client._proxy):
            if proxy is not None:
                proxy._pyroRelease()
        if self.process is None:
            return
        began = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                pass
        self.stop_s = time.monotonic() - began
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


# -- labctl ----------------------------------------------------------------------------------------

class LabctlLab:
    """A lab started with `labctl up --detach`, and one client per lane."""

    def __init__(self, folder: Path, lanes: list[str]) -> None:
        self.folder = folder / "labctl"
        self.folder.mkdir()
        self.port = free_ports(1)[0]
        self.lanes = lanes
        self.clients: dict[str, object] = {}
        self.connect_errors: dict[str, str] = {}
        self.notes: list[str] = []
        self.pids: list[int] = []

    def labctl(self, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a labctl command (the CLI of this interpreter's labctl)."""
        return subprocess.run([sys.executable, "-m", "labctl.bin.cli", *map(str, args)], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        """`labctl up --detach`, then a client per lane (a lane that cannot connect is remembered, not fatal)."""
        from labctl.actors import processes, runstate

        config = self.folder / "lab.toml"
        config.write_text(LAB_TOML.format(log_dir=self.folder / "logs", rows=SHAPE[0], cols=SHAPE[1],
                                          exposure=EXPOSURE_S))
        out = self.labctl("up", config, "--detach", "--port", self.port)
        record = runstate.read(self.port)
        if record is not None:
            self.pids = processes.session_members(record.session) + [record.keeper_pid]
        if out.returncode != 0:
            raise RuntimeError(f"labctl up failed: {(out.stderr or out.stdout).strip()[-500:]}")
        for lane in self.lanes:
            try:
                self.clients[lane] = self._connect(lane)
            except Exception as exc:
                self.connect_errors[lane] = short(exc)

    def _connect(self, lane: str):
        """connect(port, lane=lane); for "off", plain connect(port) where lane= does not exist yet."""
        from labctl.actors.client import connect

        try:
            return connect(self.port, lane=lane)
        except TypeError as exc:
            if lane != "off" or "lane" not in str(exc):
                raise
            self.notes.append("lane off: connect() takes no lane= yet; measured its only path, connect(port)")
            return connect(self.port)

    def call(self, lane: str, n: int) -> dict:
        """Trivial call: GetStatus to the light source."""
        from labctl.actors.messages import GetStatus

        lab = self.clients[lane]
        return call_figures(lambda: lab.send("light", GetStatus()), n)

    def pull(self, lane: str, frames: int) -> dict:
        """Frame pull: Acquire from the camera."""
        from labctl.actors.messages import Acquire

        lab = self.clients[lane]
        return pull_figures(lambda: lab.send("camera", Acquire()).data, frames)

    def stream(self, lane: str, seconds: float, max_frames: int) -> dict:
        """lab.camera.stream(n): frames/s, frames it reported lost, and gaps in .frame it did not report."""
        lab = self.clients[lane]
        frames = reported = silent = 0
        previous = None
        images = lab.camera.stream(max_frames)
        try:
            began = time.perf_counter()
            deadline = began + seconds
            for image in images:
                if image.data.nbytes != FRAME_BYTES:
                    raise RuntimeError(f"expected a {SHAPE} uint16 frame, got {image.data.shape} {image.data.dtype}")
                frames += 1
                reported += image.lost
                if previous is not None:
                    silent += max(0, image.frame - (previous + 1 + image.lost))
                previous = image.frame
                if time.perf_counter() >= deadline:
                    break
            elapsed = time.perf_counter() - began
        finally:
            close = getattr(images, "close", None)
            if close is not None:
                close()
        return {"stream_fps": frames / elapsed, "stream_lost": reported, "stream_silent": silent}

    def stop(self) -> None:
        """Close the clients, `labctl down`, and make sure every process of the lab is gone."""
        from labctl.actors import processes

        for lab in self.clients.values():
            try:
                lab.close()
            except Exception:
                pass
        out = self.labctl("down", "--port", self.port, timeout=60)
        if out.returncode != 0:
            print(f"warning: labctl down: {(out.stderr or out.stdout).strip()}", file=sys.stderr)
        left = processes.wait_gone(self.pids, 10)
        if left:
            print(f"warning: labctl down left processes {sorted(left)}; killing them", file=sys.stderr)
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# -- raw socket ------------------------------------------------------------------------------------

def serve_raw() -> None:
    """The raw-socket peer: print the port, then answer each 1-byte request with an 8 MiB buffer."""
    payload = bytes(FRAME_BYTES)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        print(listener.getsockname()[1], flush=True)
        while True:
            conn, _ = listener.accept()
            with conn:
                while conn.recv(1):
                    conn.sendall(payload)


class RawSocket:
    """A raw TCP connection to a peer process on loopback: the remote lane's reference."""

    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--serve-raw"], stdout=subprocess.PIPE,
                                        stdin=subprocess.DEVNULL, text=True)
        self.port = int(self.process.stdout.readline())
        self.sock = socket.create_connection(("127.0.0.1", self.port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray(FRAME_BYTES)

    def pull(self) -> int:
        """One 8 MiB buffer, received into the same bytearray."""
        self.sock.sendall(b"x")
        view, got = memoryview(self.buffer), 0
        while got < FRAME_BYTES:
            n = self.sock.recv_into(view[got:])
            if not n:
                raise ConnectionError("the raw-socket peer closed the connection")
            got += n
        return got

    def measure(self, frames: int) -> dict:
        """MB/s over `frames` buffers."""
        self.pull()
        began = time.perf_counter()
        received = sum(self.pull() for _ in range(frames))
        return {"raw_mbs": received / (time.perf_counter() - began) / MB}

    def stop(self) -> None:
        """Close the connection and end the peer."""
        self.sock.close()
        self.process.stdout.close()
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# -- results ---------------------------------------------------------------------------------------

class Results:
    """Per-round figures by (system, metric), and the errors of failed measurements by (system, group)."""

    GROUPS = {"call": ("call_p50", "call_p99"), "pull": ("pull_mbs",),
              "stream": ("stream_fps", "stream_lost", "stream_silent"), "raw": ("raw_mbs",)}

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.errors: dict[tuple[str, str], str] = {}

    def run(self, system: str, group: str, measure, *args) -> str:
        """Run one measurement, keep its figures or its error; returns a line for the progress output."""
        try:
            figures = measure(*args)
        except Exception as exc:
            self.errors.setdefault((system, group), short(exc))
            return f"{group} n/a ({short(exc, 70)})"
        for metric, value in figures.items():
            self.values[(system, metric)].append(value)
        return f"{group} " + " ".join(f"{metric.split('_', 1)[1]}={value:.4g}" for metric, value in figures.items())

    def fail(self, system: str, error: str) -> None:
        """Every measurement of a system that could not start failed with `error`."""
        for group in self.GROUPS:
            self.errors.setdefault((system, group), error)

    def median(self, system: str, metric: str) -> float | None:
        """Median over the rounds, None if no round measured it."""
        values = self.values.get((system, metric))
        return statistics.median(values) if values else None

    def total(self, system: str, metric: str) -> float | None:
        """Sum over the rounds, None if no round measured it."""
        values = self.values.get((system, metric))
        return sum(values) if values else None

    def error(self, system: str, metric: str) -> str | None:
        """The error of the group `metric` belongs to, if it failed."""
        group = next(g for g, metrics in self.GROUPS.items() if metric in metrics)
        return self.errors.get((system, group))


def report(results: Results, systems: list[str], lanes: list[str], notes: list[str]) -> None:
    """Print the table of medians, the goals, and the errors in full."""
    footnotes: list[str] = []

    def cell(system: str, value: float | None, metric: str, fmt: str) -> str:
        if value is not None:
            return format(value, fmt)
        error = results.error(system, metric)
        if error is None:
            return "-"
        if error not in footnotes:
            footnotes.append(error)
        return f"n/a [{footnotes.index(error) + 1}]"

    def ratio(system: str, metric: str) -> float | None:
        mine, theirs = results.median(system, metric), results.median("microscope", metric)
        return mine / theirs if mine is not None and theirs else None

    columns = systems
    width = 14
    print()
    print(f"{'medians over rounds':34}" + "".join(f"{name:>{width}}" for name in columns))
    rows = [
        ("trivial call p50, ms", lambda s: cell(s, results.median(s, "call_p50"), "call_p50", ".3f")),
        ("trivial call p99, ms", lambda s: cell(s, results.median(s, "call_p99"), "call_p99", ".3f")),
        ("  p50 ratio labctl/microscope", lambda s: "" if s == "microscope" else
         cell(s, ratio(s, "call_p50"), "call_p50", ".2f")),
        ("8 MiB frame pull, MB/s", lambda s: cell(s, results.median(s, "pull_mbs"), "pull_mbs", ".0f")),
        ("  ratio labctl/microscope", lambda s: "" if s == "microscope" else
         cell(s, ratio(s, "pull_mbs"), "pull_mbs", ".2f")),
        ("stream, frames/s", lambda s: cell(s, results.median(s, "stream_fps"), "stream_fps", ".1f")),
        ("stream, frames lost (reported)", lambda s: "-" if s == "microscope" else
         cell(s, results.total(s, "stream_lost"), "stream_lost", ".0f")),
        ("stream, frames lost silently", lambda s: cell(s, results.total(s, "stream_silent"), "stream_silent", ".0f")),
    ]
    for label, render in rows:
        print(f"{label:34}" + "".join(f"{render(s):>{width}}" for s in columns))
    raw = results.median("raw", "raw_mbs")
    tcp = results.median("labctl tcp", "pull_mbs") if "tcp" in lanes else None
    print(f"{'raw TCP socket 8 MiB, MB/s':34}{cell('raw', raw, 'raw_mbs', '.0f'):>{width}}")
    if "tcp" in lanes:
        share = f"{100 * tcp / raw:.0f}%" if tcp is not None and raw else cell("labctl tcp", None, "pull_mbs", "")
        print(f"{'labctl tcp pull / raw socket':34}{share:>{width}}")

    print("\ngoals (from the issue)")
    for lane in lanes:
        system = f"labctl {lane}"
        print(f"  {system:12} trivial call p50 ratio <= 1.0: "
              f"{verdict(ratio(system, 'call_p50'), lambda v: v <= 1.0, '.2f', 'x')}"
              f"   p99 < 1 ms: {verdict(results.median(system, 'call_p99'), lambda v: v < 1.0, '.3f', ' ms')}")
    for lane in [lane for lane in lanes if lane in ("unix", "auto")]:  # the local lanes
        system = f"labctl {lane}"
        print(f"  {system:12} local pull >= 4x microscope: "
              f"{verdict(ratio(system, 'pull_mbs'), lambda v: v >= 4.0, '.2f', 'x')}")
        print(f"  {system:12} local stream >= 100 frames/s: "
              f"{verdict(results.median(system, 'stream_fps'), lambda v: v >= 100, '.1f')}"
              f"   none lost silently: {verdict(results.total(system, 'stream_silent'), lambda v: v == 0, '.0f')}")
    if "tcp" in lanes:
        share = 100 * tcp / raw if tcp is not None and raw else None
        print(f"  {'labctl tcp':12} pull >= 80% of raw socket: {verdict(share, lambda v: v >= 80, '.0f', '%')}")
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    for number, error in enumerate(footnotes, 1):
        print(f"[{number}] n/a ({error})")


def verdict(value: float | None, meets, fmt: str, unit: str = "") -> str:
    """A measured figure and whether it meets its goal (`meets(value)`)."""
    if value is None:
        return "n/a"
    return f"{format(value, fmt)}{unit} {'met' if meets(value) else 'MISSED'}"


# -- the run ---------------------------------------------------------------------------------------

def raise_on_sigterm(signum, frame) -> None:
    """SIGTERM stops the benchmark like Ctrl-C does, through the cleanup."""
    raise KeyboardInterrupt


def memory_run(minutes: float, scope: MicroscopeServer | None, lab: LabctlLab | None) -> None:
    """Stream for `minutes` per system and lane; print this client's RSS at the start and the end."""
    print(f"\nmemory: {minutes:g} min of streaming each; client RSS at start -> end")
    runs = []
    if scope is not None:
        runs.append(("microscope", lambda: scope.stream(minutes * 60, 10**9)))
    for lane in lab.clients if lab is not None else []:
        runs.append((f"labctl {lane}", lambda lane=lane: lab.stream(lane, minutes * 60, 10**9)))
    for name, stream in runs:
        before = client_rss_mb()
        try:
            figures = stream()
        except Exception as exc:
            print(f"  {name:12} n/a ({short(exc)})")
            continue
        after = client_rss_mb()
        lost = figures.get("stream_lost", 0) + figures["stream_silent"]
        print(f"  {name:12} {before:8.1f} MB -> {after:8.1f} MB  ({after - before:+.1f} MB; "
              f"{figures['stream_fps']:.1f} frames/s, {lost:.0f} lost)")


def main() -> None:
    """Parse options, start both systems, run the interleaved rounds, print, stop everything."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=500, help="trivial calls per round")
    parser.add_argument("--frames", type=int, default=10, help="8 MiB frames pulled per round")
    parser.add_argument("--stream-seconds", type=float, default=2.0, help="stream length per round, at most")
    parser.add_argument("--stream-frames", type=int, default=200, help="stream length per round, at most")
    parser.add_argument("--lanes", default="unix,tcp,off", help="labctl lanes, comma-separated: unix, tcp, off, auto")
    parser.add_argument("--memory-minutes", type=float, default=0.0,
                        help="after the rounds, stream this long per system and lane and report client RSS (0: skip)")
    parser.add_argument("--keep-files", action="store_true", help="keep the temporary folder (configs, logs)")
    parser.add_argument("--serve-raw", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_raw:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        serve_raw()
        return
    lanes = [lane.strip() for lane in args.lanes.split(",") if lane.strip()]
    if not lanes or set(lanes) - set(LANES):
        parser.error(f"--lanes takes a comma-separated list of {', '.join(LANES)}")

    folder = Path(tempfile.mkdtemp(prefix="vs-microscope-"))
    os.environ["LABCTL_RUN_DIR"] = str(folder / "run")  # the lab's record and key, for labctl and this client
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    systems = ["microscope"] + [f"labctl {lane}" for lane in lanes]
    results = Results()
    scope = lab = raw = None
    print(f"python {sys.version.split()[0]}, microscope {importlib.metadata.version('microscope')}, "
          f"Pyro4 {Pyro4.__version__}, {os.cpu_count()} CPUs; {args.rounds} rounds of {args.calls} calls, "
          f"{args.frames} frames, streams of {args.stream_seconds:g} s or {args.stream_frames} frames")
    try:
        scope = MicroscopeServer(folder)
        try:
            scope.start()
        except Exception as exc:
            results.fail("microscope", short(exc))
            print(f"microscope: n/a ({short(exc)})")
            scope.stop()
            scope = None
        lab = LabctlLab(folder, lanes)
        try:
            lab.start()
        except Exception as exc:
            for lane in lanes:
                results.fail(f"labctl {lane}", short(exc))
            print(f"labctl: n/a ({short(exc)})")
        else:
            for lane, error in lab.connect_errors.items():
                results.fail(f"labctl {lane}", f"connect: {error}")
                print(f"labctl {lane}: n/a (connect: {error})")
        try:
            raw = RawSocket()
        except Exception as exc:
            results.fail("raw", short(exc))
        for round_ in range(1, args.rounds + 1):
            if scope is not None:
                lines = [results.run("microscope", "call", scope.call, args.calls),
                         results.run("microscope", "pull", scope.pull, args.frames),
                         results.run("microscope", "stream", scope.stream, args.stream_seconds, args.stream_frames)]
                print(f"round {round_}/{args.rounds} {'microscope':12} " + " | ".join(lines), flush=True)
            for lane in lanes:
                system = f"labctl {lane}"
                if lane not in lab.clients:
                    continue  # the lab did not start, or this lane did not connect: failed already
                lines = [results.run(system, "call", lab.call, lane, args.calls),
                         results.run(system, "pull", lab.pull, lane, args.frames),
                         results.run(system, "stream", lab.stream, lane, args.stream_seconds, args.stream_frames)]
                print(f"round {round_}/{args.rounds} {system:12} " + " | ".join(lines), flush=True)
            if raw is not None:
                line = results.run("raw", "raw", raw.measure, max(args.frames, 20))
                print(f"round {round_}/{args.rounds} {'raw socket':12} {line}", flush=True)
        report(results, systems, lanes, lab.notes if lab else [])
        if args.memory_minutes > 0:
            memory_run(args.memory_minutes, scope, lab)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for part in (raw, lab, scope):
            if part is not None:
                try:
                    part.stop()
                except Exception as exc:
                    print(f"warning: stopping {type(part).__name__}: {short(exc)}", file=sys.stderr)
        if scope is not None and scope.stop_s is not None:
            print(f"(microscope's device server took {scope.stop_s:.1f} s to stop on SIGTERM)")
        if args.keep_files:
            print(f"configs and logs kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted (everything it started is stopped)", file=sys.stderr)
        sys.exit(130)
