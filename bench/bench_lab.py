"""Benchmark: a lab of N simulated devices. Prints figures; asserts nothing.

    python bench/bench_lab.py [--devices 20] [--runs 5] [--port 23900]

Measures, as medians over repeated runs:
  up        `labctl up --detach` until every device runs
  restart   SIGKILL of a device -> that device answering a request again
  down      `labctl down` -> every process of the lab gone and the port free
  request   one request/reply through the client (client -> supervisor -> device -> client)
  frame     one 2048x2048 uint16 image (8 MiB) acquired through the client
Reference points (this kind of machine): python-microscope restarts a killed device after ~3.9 s and
stops in ~4.7 s; Thespian reports a child's death in 2-4 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labctl.actors import processes
from labctl.actors.client import connect
from labctl.actors.errors import DeviceUnavailable
from labctl.actors.messages import Acquire, GetStatus

KINDS = [("sim-valves", ""), ("sim-furnace", ""), ("sim-filterwheel", ""), ("sim-stage", ""), ("sim-light", ""),
         ("sim-camera", "conf = { shape = [64, 64], simulate_exposure = false }")]


def lab_file(folder: Path, port: int, devices: int) -> Path:
    lines = [f'[lab]\nname = "bench"\nport = {port}\nlog_dir = "{folder / "logs"}"\n']
    for i in range(devices):
        driver, conf = KINDS[i % len(KINDS)]
        lines.append(f'[devices.d{i:02d}]\ndriver = "{driver}"\n{conf}\n')
    lines.append('[devices.bigcam]\ndriver = "sim-camera"\nconf = { shape = [2048, 2048], simulate_exposure = false }\n')
    path = folder / "bench.toml"
    path.write_text("\n".join(lines))
    return path


def labctl(*args, env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labctl.bin.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, check=True)


def median_ms(values: list[float]) -> str:
    return f"median {statistics.median(values) * 1000:8.1f} ms  (min {min(values) * 1000:.1f}, " \
           f"max {max(values) * 1000:.1f}, n={len(values)})"


def measure(port: int, restarts: list, requests: list, frames: list) -> None:
    """Restart latency of a few devices, request round trips, 8 MiB frames."""
    lab = connect(port, timeout=10)
    try:
        names = [d.name for d in lab.status().devices if d.name != "bigcam"]
        for name in names[:4]:
            pid = next(d.pid for d in lab.status().devices if d.name == name)
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            while True:
                try:
                    lab.send(name, GetStatus(), timeout=5)
                    break
                except DeviceUnavailable:
                    lab.events(lab.events().last_seq, wait_s=0.2)  # wait for the next event, no sleep
            restarts.append(time.monotonic() - killed)
        for _ in range(200):
            began = time.perf_counter()
            lab.send("d00", GetStatus())
            requests.append(time.perf_counter() - began)
        for _ in range(10):
            began = time.perf_counter()
            lab.send("bigcam", Acquire())
            frames.append(time.perf_counter() - began)
    finally:
        lab.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--port", type=int, default=23900)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="labctl-bench-"))
    env = {**os.environ, "LABCTL_RUN_DIR": str(folder / "run")}
    config = lab_file(folder, args.port, args.devices)
    ups, downs, restarts, requests, frames = [], [], [], [], []
    for run in range(args.runs):
        began = time.monotonic()
        labctl("up", config, "--detach", env=env)
        ups.append(time.monotonic() - began)
        record = json.loads((folder / "run" / f"lab-{args.port}.json").read_text())
        try:
            measure(args.port, restarts, requests, frames)
        finally:  # never leave a lab behind, even when a measurement fails
            pids = processes.session_members(record["session"]) + [record["keeper_pid"]]
            began = time.monotonic()
            labctl("down", "--port", args.port, env=env)
            processes.wait_gone(pids, 10)
            processes.wait_port_free(args.port)
            downs.append(time.monotonic() - began)
    print(f"lab of {args.devices} simulated devices + one 2048x2048 camera, {args.runs} runs")
    print(f"up (all running)      {median_ms(ups)}")
    print(f"restart after SIGKILL {median_ms(restarts)}")
    print(f"down (all gone)       {median_ms(downs)}")
    print(f"request round trip    {median_ms(requests)}")
    print(f"8 MiB frame           {median_ms(frames)}  "
          f"({8 / statistics.median(frames):.0f} MiB/s)")


if __name__ == "__main__":
    main()
