"""Benchmark: python-microscope's device server against labctl serving the same microscope devices
over its Pyro facade, driven by the same client code. Prints figures; asserts nothing.

    pip install -e '.[bench]'
    python bench/facade_vs_device_server.py [--rounds 5] [--calls 500] [--frames 10] [--restarts 3]

Both serve microscope.simulators' SimulatedCamera (2048x2048, uint16, "black", 1 ms exposure) and
SimulatedLightSource on free loopback ports. Each round measures, on each system in turn:

  trivial call   light.get_is_enabled()                    p50, p99 (ms)
  frame pull     camera.grab_next_data()                   MB/s
  frame push     DataClient + trigger(), 4 in flight       frames/s and MB/s

then, once per system: the time from SIGKILL of the camera's process until a new proxy is answered
(--restarts times, median), and the time to stop (device server: SIGTERM; labctl: `labctl down`).
The goals: the facade within 10% of the device server on calls and frames; labctl's restart and
stop at least 10x faster.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_microscope import (FRAME_BYTES, MB, SHAPE, MicroscopeServer, Pyro4,  # noqa: E402
                           free_ports, short)

LAB = """\
[lab]
name = "facade"
port = {lab_port}
log_dir = "{log_dir}"

[devices.camera]
driver = "microscope:microscope.simulators:SimulatedCamera"
conf = {{ sensor_shape = [{rows}, {cols}] }}
pyro = {{ port = {camera_port} }}
heartbeat_s = 5.0          # a call may block up to heartbeat_s x heartbeat_misses: 2048x2048 frames take a while

[devices.light]
driver = "microscope:microscope.simulators:SimulatedLightSource"
pyro = {{ port = {light_port} }}
"""


class FacadeLab(MicroscopeServer):
    """labctl serving the same devices over its Pyro facade (`labctl up --detach`)."""

    camera_name, light_name = "camera", "light"

    def __init__(self, folder: Path) -> None:
        self.folder = folder / "facade"
        self.folder.mkdir()
        self.camera_port, self.light_port, self.lab_port = free_ports(3)
        self.process = None
        self.camera = self.light = self.data_client = None
        self.stop_s: float | None = None
        self.env = {**os.environ, "LABCTL_RUN_DIR": str(folder / "run")}

    def launch(self) -> None:
        config = self.folder / "lab.toml"
        config.write_text(LAB.format(lab_port=self.lab_port, log_dir=self.folder / "logs", rows=SHAPE[0],
                                     cols=SHAPE[1], camera_port=self.camera_port, light_port=self.light_port))
        up = subprocess.run([sys.executable, "-m", "labctl.bin.cli", "up", str(config), "--detach"],
                            env=self.env, capture_output=True, text=True, timeout=120)
        if up.returncode != 0:
            raise RuntimeError(f"labctl up failed: {up.stdout[-300:]} {up.stderr[-300:]}")

    def stop(self) -> None:
        for proxy in (self.camera, self.light, self.data_client and self.data_client._proxy):
            if proxy is not None:
                proxy._pyroRelease()
        began = time.monotonic()
        subprocess.run([sys.executable, "-m", "labctl.bin.cli", "down", "--port", str(self.lab_port)],
                       env=self.env, capture_output=True, timeout=60)
        self.stop_s = time.monotonic() - began


def push(system: MicroscopeServer, frames: int) -> dict:
    """Frames pushed to a DataClient (receiveData), 4 triggers in flight: frames/s and MB/s."""
    figures = system.stream(60.0, frames)
    return {"push_fps": figures["stream_fps"], "push_mbs": figures["stream_fps"] * FRAME_BYTES / MB}


def restart(system: MicroscopeServer) -> float:
    """SIGKILL the camera's process; seconds until a new proxy is answered."""
    pid = next(c.pid for c in psutil.net_connections("tcp")
               if c.status == psutil.CONN_LISTEN and c.laddr.port == system.camera_port)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = killed + 60
    while time.monotonic() < deadline:
        proxy = Pyro4.Proxy(system._uri(system.camera_name, system.camera_port))
        proxy._pyroTimeout = 1.0
        try:
            proxy.get_is_enabled()
            return time.monotonic() - killed
        except Pyro4.errors.CommunicationError:
            time.sleep(0.005)
        finally:
            proxy._pyroRelease()
    raise RuntimeError("the camera did not come back within 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--restarts", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="facade-"))
    systems = {"device server": MicroscopeServer(folder), "labctl facade": FacadeLab(folder)}
    figures: dict[tuple[str, str], list[float]] = {}
    try:
        for name, system in systems.items():
            system.start()
        for round_ in range(1, args.rounds + 1):
            for name, system in systems.items():
                for measure in (lambda: system.call(args.calls), lambda: system.pull(args.frames),
                                lambda: push(system, args.frames)):
                    try:
                        for metric, value in measure().items():
                            figures.setdefault((name, metric), []).append(value)
                    except Exception as exc:
                        print(f"round {round_} {name}: n/a ({short(exc)})")
            print(f"round {round_}/{args.rounds} done", flush=True)
        for name, system in systems.items():
            for _ in range(args.restarts):
                try:
                    figures.setdefault((name, "restart_s"), []).append(restart(system))
                except Exception as exc:
                    print(f"{name} restart: n/a ({short(exc)})")
                system.camera._pyroReconnect()
                system.camera.enable()
    finally:
        for system in systems.values():
            try:
                system.stop()
            except Exception as exc:
                print(f"stopping: {short(exc)}", file=sys.stderr)
        shutil.rmtree(folder, ignore_errors=True)
    for name, system in systems.items():
        if system.stop_s is not None:
            figures[(name, "stop_s")] = [system.stop_s]

    def median(name: str, metric: str) -> float | None:
        values = figures.get((name, metric))
        return statistics.median(values) if values else None

    rows = [("trivial call p50, ms", "call_p50", ".3f", "low"), ("trivial call p99, ms", "call_p99", ".3f", "low"),
            ("8 MiB pull, MB/s", "pull_mbs", ".0f", "high"), ("8 MiB push, MB/s", "push_mbs", ".0f", "high"),
            ("restart after SIGKILL, s", "restart_s", ".3f", "low"), ("stop, s", "stop_s", ".3f", "low")]
    names = list(systems)
    print(f"\n{'medians':28}" + "".join(f"{n:>16}" for n in names) + f"{'facade/server':>16}")
    for label, metric, fmt, better in rows:
        a, b = median(names[0], metric), median(names[1], metric)
        ratio = f"{b / a:.2f}" if a and b is not None else "n/a"
        print(f"{label:28}" + "".join(f"{format(v, fmt) if v is not None else 'n/a':>16}" for v in (a, b))
              + f"{ratio:>16}")
    print("\ngoals: facade within 10% of the device server on calls and frames (ratio <= 1.10 for times, "
          ">= 0.90 for MB/s); restart and stop at least 10x faster (ratio <= 0.10)")


if __name__ == "__main__":
    main()
