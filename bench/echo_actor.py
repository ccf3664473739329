"""A bare actor for transport benchmarks: answers "ping" with "pong" and ("frame", shape) with an array."""

from __future__ import annotations

import numpy as np
from thespian.actors import Actor


class Echo(Actor):
    """Replies at once; frames are made once and wrapped (a bare array as a message is dropped)."""

    frame = None

    def receiveMessage(self, message, sender):
        if message == "ping":
            self.send(sender, "pong")
        elif isinstance(message, tuple) and message[0] == "frame":
            if self.frame is None or self.frame.shape != message[1]:
                self.frame = np.arange(int(np.prod(message[1])), dtype=np.uint16).reshape(message[1])
            self.send(sender, ("frame", self.frame))
