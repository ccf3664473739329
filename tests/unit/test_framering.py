"""Frames in shared memory: a reader gets its own copy, and a slot overwritten before or while it is
read is refused, never returned torn."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from labctl.actors import framering
from labctl.actors.framering import FrameOverwritten, FrameRing, RingReader

PORT = 60000 + random.randrange(5000)   # segment names only: no socket is opened


@pytest.fixture
def ring():
    ring = FrameRing(PORT, "cam", slots=4)
    yield ring
    ring.close()
    framering.remove_segments(PORT)


def frame(n: int, shape=(64, 64)) -> np.ndarray:
    return np.full(shape, n, dtype=np.uint16)


def test_a_reader_gets_its_own_copy(ring):
    reader = RingReader()
    ref = ring.put(frame(1), 1, 0.0)
    data = reader.read(ref)
    for n in range(2, 10):
        ring.put(frame(n), n, 0.0)   # round the ring twice
    assert (data == 1).all()
    assert (reader.read(ring.put(frame(10), 10, 0.0)) == 10).all()
    reader.close()


def test_a_frame_the_ring_went_past_is_refused(ring):
    reader = RingReader()
    ref = ring.put(frame(1), 1, 0.0)
    for n in range(2, 6):            # 4 slots: frame 5 takes frame 1's
        ring.put(frame(n), n, 0.0)
    with pytest.raises(FrameOverwritten):
        reader.read(ref)
    reader.close()


def test_a_frame_overwritten_while_it_is_copied_is_refused(ring, monkeypatch):
    reader = RingReader()
    ref = ring.put(frame(1), 1, 0.0)
    for n in range(2, 5):
        ring.put(frame(n), n, 0.0)
    copyto = np.copyto

    def copy_then_overwrite(dst, src, **kwargs):
        copyto(dst, src, **kwargs)
        ring.put(frame(5), 5, 0.0)   # the writer comes round to this slot mid-read

    monkeypatch.setattr(np, "copyto", copy_then_overwrite)
    with pytest.raises(FrameOverwritten):
        reader.read(ref)
    reader.close()


def test_larger_frames_get_a_new_segment_and_the_old_one_is_unlinked(ring):
    reader = RingReader()
    small = ring.put(frame(1), 1, 0.0)
    first = small.segment
    big = ring.put(frame(2, (256, 256)), 2, 0.0)
    assert big.segment != first and not os.path.exists(os.path.join(framering.SHM_DIR, first))
    assert reader.read(big).shape == (256, 256)
    with pytest.raises(FrameOverwritten):
        RingReader().read(small)
    reader.close()


def test_segments_are_private_and_removed_by_port_and_pid(ring):
    ref = ring.put(frame(1), 1, 0.0)
    path = os.path.join(framering.SHM_DIR, ref.segment)
    assert os.stat(path).st_mode & 0o077 == 0
    assert framering.remove_segments(PORT, os.getpid() + 1) == 0
    assert framering.remove_segments(PORT, os.getpid()) == 1
    assert not os.path.exists(path)
