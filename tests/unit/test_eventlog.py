"""The durable event log: numbering, events and device records survive a reopen, a rotation and a
SIGKILL of the writer; torn and corrupt lines are skipped; any detail can be stored."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np

from labctl.actors import eventlog
from labctl.actors.eventlog import NAME, EventLog
from labctl.actors.messages import Event


def test_numbering_continues_after_a_reopen(tmp_path):
    log = EventLog(tmp_path)
    assert log.last_seq == 0
    assert [log.append("valves", "running", {}).seq for _ in range(3)] == [1, 2, 3]
    log.close()
    log = EventLog(tmp_path)
    assert log.last_seq == 3
    assert log.append("valves", "crashed", {}).seq == 4


def test_events_and_records_survive_a_reopen(tmp_path):
    log = EventLog(tmp_path)
    first = log.append("valves", "crashed", {"error": "EIO", "n": [1, 2.5, None, True]}, time=12.5)
    second = log.append("furnace", "running", {})
    log.record("valves", 2, "OSError: EIO")
    log.record("furnace", 0, None)
    log.close()
    log = EventLog(tmp_path)
    assert log.since(0) == (first, second)
    assert first == Event(1, 12.5, "valves", "crashed", {"error": "EIO", "n": [1, 2.5, None, True]})
    assert log.records() == {"valves": (2, "OSError: EIO"), "furnace": (0, None)}


def test_since_gives_the_newer_events_oldest_first(tmp_path):
    log = EventLog(tmp_path, memory=5)
    events = [log.append("stage", "moved", {"x": n}) for n in range(8)]
    assert log.since(5) == tuple(events[5:])
    assert log.since(8) == ()
    assert log.since(0) == tuple(events[3:])   # only the last 5 are in memory


def test_a_torn_last_line_and_garbage_lines_are_skipped(tmp_path):
    log = EventLog(tmp_path)
    kept = [log.append("valves", "running", {"n": n}) for n in range(3)]
    log.close()
    with open(tmp_path / NAME, "ab") as file:
        file.write(b"not json\n\x00\xff\xfe\n[1, 2]\n{\"seq\": \"x\"}\n\n")   # garbage of every shape
        file.write(json.dumps(kept[0].as_json()).encode() + b"\n")   # an old seq, written again
        file.write(b'{"seq":4,"time":1.0,"device":"valves","kind":"cra')   # the writer died here
    log = EventLog(tmp_path)
    assert log.since(0) == tuple(kept) and log.last_seq == 3
    # The next event starts on a line of its own, not after the torn one.
    log.append("valves", "recovered", {})
    log.close()
    assert [e.kind for e in EventLog(tmp_path).since(0)] == ["running"] * 3 + ["recovered"]


def test_a_failed_write_loses_only_its_own_line(tmp_path, monkeypatch):
    log = EventLog(tmp_path)
    log.append("valves", "running", {})
    real_write = os.write

    def disk_full(fd, data):   # writes part of the line, then fails
        real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(eventlog.os, "write", disk_full)
    assert log.append("valves", "crashed", {}).seq == 2   # no exception: supervision goes on
    monkeypatch.setattr(eventlog.os, "write", real_write)
    log.append("valves", "restarting", {})
    log.close()
    assert [(e.seq, e.kind) for e in EventLog(tmp_path).since(0)] == [(1, "running"), (3, "restarting")]


def test_rotation_keeps_numbering_and_records_and_at_most_keep_files(tmp_path):
    (tmp_path / f"{NAME}.7").write_text("left by a run with a larger keep\n")
    log = EventLog(tmp_path, max_bytes=2000, keep=2)
    log.record("valves", 3, "hung")
    for n in range(300):
        log.append("valves", "moved", {"n": n})
    log.record("furnace", 1, None)
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [NAME, f"{NAME}.1", f"{NAME}.2"]
    assert all(p.stat().st_size < 2600 for p in tmp_path.iterdir())
    # The newest file alone is enough.
    (tmp_path / f"{NAME}.1").unlink()
    (tmp_path / f"{NAME}.2").unlink()
    log = EventLog(tmp_path, max_bytes=2000, keep=2)
    assert log.last_seq == 300
    assert log.records() == {"valves": (3, "hung"), "furnace": (1, None)}
    assert log.append("valves", "moved", {}).seq == 301


def test_a_file_already_too_big_when_opened_rotates_at_the_next_write(tmp_path):
    log = EventLog(tmp_path, max_bytes=10**6)
    for n in range(50):
        log.append("valves", "moved", {"n": n})
    log.close()
    log = EventLog(tmp_path, max_bytes=2000)   # a supervisor restarted with a smaller limit
    log.append("valves", "moved", {})
    assert (tmp_path / f"{NAME}.1").exists() and (tmp_path / NAME).stat().st_size < 2000


def test_a_rotation_that_fails_loses_nothing_and_is_tried_again_only_later(tmp_path, monkeypatch):
    tries = []

    def refuse(source, target):
        tries.append(source)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(eventlog.os, "replace", refuse)
    log = EventLog(tmp_path, max_bytes=1000)
    for n in range(100):   # about 9,000 bytes
        log.append("valves", "moved", {"n": n})
    log.close()
    assert 5 <= len(tries) <= 10   # once per 1,000 bytes, not at every event past the first 1,000
    assert [e.seq for e in EventLog(tmp_path).since(0)] == list(range(1, 101))


def test_the_write_that_rotates_is_in_the_new_files_header(tmp_path):
    older = tmp_path / f"{NAME}.1"
    log = EventLog(tmp_path, max_bytes=1000)
    while not older.exists():
        last = log.append("valves", "moved", {})
    log.close()
    older.unlink()
    log = EventLog(tmp_path, max_bytes=1000)
    assert log.last_seq == last.seq
    restarts = 0
    while not older.exists():
        restarts += 1
        log.record("valves", restarts, "x" * 100)
    log.close()
    older.unlink()
    assert EventLog(tmp_path).records() == {"valves": (restarts, "x" * 100)}


def test_a_reopen_soon_after_a_rotation_still_shows_the_events_before_it(tmp_path):
    log = EventLog(tmp_path, max_bytes=2000, keep=3)
    events = [log.append("valves", "moved", {"n": n}) for n in range(100)]
    log.record("valves", 4, "boom")
    log.close()
    in_newest = (tmp_path / NAME).read_text().count('"seq"')
    assert len(EventLog(tmp_path, max_bytes=2000).since(0)) > in_newest   # the file before it is read too
    # Killed between renaming the full file and starting the next one.
    os.replace(tmp_path / f"{NAME}.2", tmp_path / f"{NAME}.3")
    os.replace(tmp_path / f"{NAME}.1", tmp_path / f"{NAME}.2")
    os.replace(tmp_path / NAME, tmp_path / f"{NAME}.1")
    log = EventLog(tmp_path, max_bytes=2000)
    assert log.last_seq == 100 and log.records() == {"valves": (4, "boom")}
    assert log.since(93) == tuple(events[93:])   # what the file it fell back on holds


class Unprintable:
    def __repr__(self):
        raise RuntimeError("no repr")


def test_details_json_cannot_encode_are_stored_as_their_repr(tmp_path):
    looped: list = [1]
    looped.append(looped)
    detail = {"when": object, "set": {1}, (1, 2): "tuple key", 3: "int key", "np": np.int64(7),
              "float": np.float32(0.5), "looped": looped, "bad": Unprintable(),
              "nested": {"e": ValueError("x")}}
    log = EventLog(tmp_path)
    event = log.append("camera", "error", detail)
    assert event.detail["when"] == "<class 'object'>" and event.detail["set"] == "{1}"
    assert event.detail["(1, 2)"] == "tuple key" and event.detail["3"] == "int key"
    assert event.detail["np"] == 7 and event.detail["float"] == 0.5
    assert event.detail["nested"] == {"e": "ValueError('x')"}
    assert event.detail["bad"] == "<Unprintable without repr>"
    assert log.append("camera", "odd", "not a dict").detail == {"detail": "not a dict"}
    log.close()
    assert EventLog(tmp_path).since(0)[0] == event   # what was stored is what was returned


CHILD = textwrap.dedent("""
    import sys
    from labctl.actors.eventlog import EventLog
    log = EventLog(sys.argv[1])
    print("open", flush=True)
    while True:
        event = log.append("valves", "moved", {"pad": "x" * (log.last_seq % 200)})
        log.record("valves", event.seq, None)
        print(event.seq, flush=True)
""")


def test_every_event_whose_append_returned_survives_a_sigkill_of_the_writer(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "open\n"
        printed = [int(child.stdout.readline()) for _ in range(2000)]
        child.send_signal(signal.SIGKILL)   # mid-stream: the child appends as fast as it can
        printed += [int(line) for line in child.stdout.read().split()]
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    log = EventLog(tmp_path, memory=10**6)
    returned = printed[-1]   # the last seq whose append returned
    assert printed == list(range(1, returned + 1))
    assert [e.seq for e in log.since(0)][:returned] == list(range(1, returned + 1))
    assert log.last_seq >= returned and log.records()["valves"][0] >= returned - 1
