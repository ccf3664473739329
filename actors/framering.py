"""A camera's frames in shared memory: a ring of slots that clients on the same machine read without
the bytes crossing a socket.

The device process writes each frame into the next slot; a client is told (over its lane) which
frame is in which slot, and copies it out into an array of its own, so a later frame can never
change an array a client holds. A slot is a seqlock: the writer stamps the frame's number at the
slot's start before writing and at its end after; a reader copies, then checks that the start
stamp still names its frame. If the writer came round the ring meanwhile, the copy is refused
(FrameOverwritten), never returned torn. The stamps are read and written with pread/pwrite: system
calls order them around the bytes on any CPU.

The segments are POSIX shared memory (/dev/shm/labctl.<uid>.<port>.<pid>.<n>), mode 0600, made
directly rather than with multiprocessing.shared_memory: on Python 3.11 its resource tracker
unlinks a segment when any process that merely attached to it exits (bpo-39959), which would pull
a camera's ring from under its other clients. The device process unlinks its segments when it
ends; the supervisor and `labctl down` unlink those of a process that was killed.
"""

from __future__ import annotations

import glob
import mmap
import os
import struct

import attrs

SHM_DIR = "/dev/shm"
STAMP = struct.Struct("=Q")
SLOT_HEADER = 64           # the start stamp at 0; the end stamp sits after the frame's bytes
DEFAULT_SLOTS = 8


class FrameOverwritten(Exception):
    """The frame was overwritten in the ring before it could be read (the reader fell behind)."""


@attrs.frozen
class SharedFrame:
    """Where a frame lies in a camera's ring: what a client on the same machine is sent instead of its bytes."""
    segment: str
    slot: int
    seq: int
    shape: tuple
    dtype: str
    frame: int
    timestamp: float
    slots: int
    slot_bytes: int


def segment_prefix(port: int, pid: int | None = None) -> str:
    """The name shared by a lab's segments (on this machine), or by one process's."""
    return f"labctl.{os.getuid()}.{port}." + (f"{pid}." if pid is not None else "")


def remove_segments(port: int, pid: int | None = None) -> int:
    """Unlink the frame rings of the lab on `port` (or only those of process `pid`); how many there were."""
    removed = 0
    for path in glob.glob(os.path.join(SHM_DIR, glob.escape(segment_prefix(port, pid)) + "*")):
        try:
            os.unlink(path)
            removed += 1
        except FileNotFoundError:
            pass
    return removed


class FrameRing:
    """The writer's side: one camera's ring, made on the first frame and remade larger if frames grow."""

    def __init__(self, port: int, device: str, slots: int = DEFAULT_SLOTS) -> None:
        self.prefix = segment_prefix(port, os.getpid())
        self.device = device
        self.slots = max(2, slots)
        self.slot_bytes = 0
        self.name = ""
        self.fd = -1
        self.map: mmap.mmap | None = None
        self.generation = 0
        self.written = 0          # frames written so far
        self.failed = ""          # why shared memory could not be had (then it is not tried again)

    def put(self, data, frame: int, timestamp: float) -> SharedFrame:
        """Write one frame (a contiguous numpy array) into the next slot; where it lies."""
        nbytes = data.nbytes
        if self.failed:
            raise OSError(f"no shared memory for {self.device}'s frames: {self.failed}")
        if nbytes > self.slot_bytes:
            try:
                self._remake(nbytes)
            except OSError as exc:   # /dev/shm full, say: from now on frames travel as bytes
                self.failed = str(exc)
                raise
        self.written += 1
        seq = self.written
        slot = seq % self.slots
        at = slot * (SLOT_HEADER + self.slot_bytes + STAMP.size)
        os.pwrite(self.fd, STAMP.pack(seq), at)                       # start: being written
        view = memoryview(self.map)[at + SLOT_HEADER:at + SLOT_HEADER + nbytes]
        view[:] = memoryview(data).cast("B")
        view.release()
        os.pwrite(self.fd, STAMP.pack(seq), at + SLOT_HEADER + self.slot_bytes)   # end: complete
        return SharedFrame(self.name, slot, seq, tuple(data.shape), data.dtype.str, frame, timestamp, self.slots,
                           self.slot_bytes)

    def _remake(self, nbytes: int) -> None:
        self.close()
        self.generation += 1
        slot_bytes = -(-nbytes // 4096) * 4096
        name = f"{self.prefix}{self.device}.{self.generation}"
        path = os.path.join(SHM_DIR, name)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        size = self.slots * (SLOT_HEADER + slot_bytes + STAMP.size)
        try:
            # Reserved now: on a full tmpfs a write through the mapping would kill the process with
            # SIGBUS; this raises instead (the frame then travels as bytes).
            os.posix_fallocate(fd, 0, size)
            self.map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        self.fd, self.name, self.slot_bytes = fd, name, slot_bytes

    def close(self) -> None:
        """Unmap and unlink the segment (clients that have it open keep their mapping)."""
        if self.map is not None:
            self.map.close()
            self.map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            try:
                os.unlink(os.path.join(SHM_DIR, self.name))
            except FileNotFoundError:
                pass


class RingReader:
    """The client's side: copies frames out of the rings it has opened (kept open, one per segment)."""

    def __init__(self) -> None:
        self.open: dict[str, tuple[int, mmap.mmap]] = {}

    def read(self, ref: SharedFrame):
        """The frame `ref` names, as an array of the caller's own; FrameOverwritten if it is gone."""
        import numpy as np

        fd, mapped = self._open(ref)
        at = ref.slot * (SLOT_HEADER + ref.slot_bytes + STAMP.size)
        end_stamp = STAMP.unpack(os.pread(fd, STAMP.size, at + SLOT_HEADER + ref.slot_bytes))[0]
        if end_stamp != ref.seq:
            raise FrameOverwritten(f"frame {ref.frame} is no longer in the ring (the camera wrote "
                                   f"{max(0, end_stamp - ref.seq)} frames since; its ring holds {ref.slots})")
        dtype = np.dtype(ref.dtype)
        count = int(np.prod(ref.shape)) if ref.shape else 1
        data = np.empty(ref.shape, dtype)
        np.copyto(data.reshape(-1), np.frombuffer(mapped, dtype, count, at + SLOT_HEADER))
        start_stamp = STAMP.unpack(os.pread(fd, STAMP.size, at))[0]
        if start_stamp != ref.seq:
            raise FrameOverwritten(f"frame {ref.frame} was overwritten while it was read (the camera is "
                                   f"{start_stamp - ref.seq} frames ahead; its ring holds {ref.slots})")
        return data

    def _open(self, ref: SharedFrame):
        entry = self.open.get(ref.segment)
        if entry is None:
            try:
                fd = os.open(os.path.join(SHM_DIR, ref.segment), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                raise FrameOverwritten(f"frame {ref.frame}'s ring is gone (the camera's process ended or "
                                       f"its frames grew)") from None
            try:
                mapped = mmap.mmap(fd, 0, prot=mmap.PROT_READ)
            except BaseException:
                os.close(fd)
                raise
            for name in [n for n in self.open if n.rsplit(".", 1)[0] == ref.segment.rsplit(".", 1)[0]]:
                self._close(name)  # an older generation of the same camera's ring
            entry = self.open[ref.segment] = (fd, mapped)
        return entry

    def _close(self, name: str) -> None:
        fd, mapped = self.open.pop(name)
        mapped.close()
        os.close(fd)

    def close(self) -> None:
        """Unmap every ring."""
        for name in list(self.open):
            self._close(name)
