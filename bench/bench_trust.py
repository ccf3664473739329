"""Benchmark: what the lab key's MAC costs. Prints figures; asserts nothing.

    python bench/bench_trust.py [--rounds 5] [--calls 2000] [--frames 30] [--port 23950]

Each round runs two labs in fresh processes, one after the other, started as `labctl up` starts
them (a keeper, its admin, a supervisor, a light source and a 2048x2048 camera), one with the
seal (every packet HMAC-SHA256'd and checked before unpickling) and one with the seal left out.
Each measures from a client: a trivial labctl request (`send(light, GetStatus())`, p50/p99), an
8 MiB frame (`Acquire`), and, underneath, a bare Thespian ask to an echo actor and an 8 MiB frame
from it. Prints medians over the rounds and the ratio sealed/plain.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(call, n: int) -> list[float]:
    """Seconds each of `n` calls took, sorted."""
    times = []
    for _ in range(n):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return sorted(times)


def figures(prefix: str, times: list[float]) -> dict:
    return {f"{prefix} p50": times[len(times) // 2] * 1e3, f"{prefix} p99": times[int(len(times) * 0.99)] * 1e3}


def measure(mode: str, port: int, calls: int, frames: int) -> dict:
    """One lab, sealed or not: request and frame figures (runs in its own process)."""
    from echo_actor import Echo
    from labctl.actors import actorsystem
    from labctl.actors.client import connect
    from labctl.actors.keeper import Keeper
    from labctl.actors.messages import Acquire, GetStatus
    from labctl.config.load import parse

    folder = tempfile.mkdtemp(prefix="bench-trust-")
    os.environ["LABCTL_RUN_DIR"] = os.path.join(folder, "run")
    if mode == "plain":
        actorsystem._seal_transport = lambda: None  # everything else as a lab has it: the MAC alone differs
    lab = parse({"lab": {"name": "bench", "port": port, "log_dir": os.path.join(folder, "logs")},
                 "devices": {"light": {"driver": "sim-light"},
                             "camera": {"driver": "sim-camera", "conf": {"shape": [2048, 2048],
                                                                         "simulate_exposure": False}}}},
                file=os.path.join(folder, "bench.toml"))
    keeper = Keeper(lab)
    keeper.start()
    try:
        client = connect(port)
        deadline = time.monotonic() + 30
        while not all(d.state == "running" for d in client.status().devices) and time.monotonic() < deadline:
            time.sleep(0.05)
        results = {}
        for _ in range(200):
            client.send("light", GetStatus())
        results.update(figures("request", timed(lambda: client.send("light", GetStatus()), calls)))
        client.send("camera", Acquire())
        results["frame"] = statistics.median(timed(lambda: client.send("camera", Acquire()), frames)) * 1e3
        echo = keeper.system.createActor(Echo)
        for _ in range(200):
            keeper.system.ask(echo, "ping", 5)
        results.update(figures("ask", timed(lambda: keeper.system.ask(echo, "ping", 5), calls)))
        keeper.system.ask(echo, ("frame", (2048, 2048)), 10)
        results["ask frame"] = statistics.median(
            timed(lambda: keeper.system.ask(echo, ("frame", (2048, 2048)), 10), frames)) * 1e3
        client.close()
        return results
    finally:
        keeper.stop()


def run_child(mode: str, port: int, calls: int, frames: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--port", str(port), "--calls", str(calls),
                          "--frames", str(frames)], env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--port", type=int, default=23950)
    parser.add_argument("--child", choices=("plain", "sealed"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.port, args.calls, args.frames)))
        return
    results = {"plain": [], "sealed": []}
    for round_ in range(args.rounds):
        for mode in (("plain", "sealed") if round_ % 2 == 0 else ("sealed", "plain")):  # interleaved
            results[mode].append(run_child(mode, args.port, args.calls, args.frames))
    print(f"{args.rounds} rounds of {args.calls} calls and {args.frames} 8 MiB frames each; medians over rounds, ms")
    medians = {mode: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for mode, runs in results.items()}
    keys = list(medians["plain"])
    print(f"{'':8}" + "".join(f"{key:>14}" for key in keys))
    for mode in ("plain", "sealed"):
        print(f"{mode:8}" + "".join(f"{medians[mode][key]:14.3f}" for key in keys))
    print(f"{'ratio':8}" + "".join(f"{medians['sealed'][key] / medians['plain'][key]:13.3f}x" for key in keys)
          + "   (sealed / plain)")


if __name__ == "__main__":
    main()
