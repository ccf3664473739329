"""The seal on every packet of a lab's actor system: a MAC under the lab key, checked before a single
byte is unpickled, and the shape of Thespian's envelope, checked after. actorsystem installs it as
Thespian's serializer; nothing here patches Thespian."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pickle

from thespian.actors import ActorAddress
from thespian.system.transport.IPBase import TCPv4ActorAddress

from .errors import NotAuthorised

MAX_PACKET_BYTES = 64 * 1024 * 1024   # default; a lab sets its own ([lab] max_packet_mb)


class Seal:
    """Thespian's serializer with a MAC: every packet is MAC(key, pickle) + pickle, and a packet is
    unpickled only after its MAC checks out under a key this process holds.

    The MAC was chosen by measurement (bench/bench_trust.py): on a labctl request keyed BLAKE2b
    cost +1.9% (with ACKs checked by comparison) where HMAC-SHA256 cost +13%; on an 8 MiB frame
    HMAC-SHA256 (2 GB/s with this machine's SHA extensions) beats BLAKE2b (1.2 GB/s). So small
    packets get BLAKE2b and large ones HMAC-SHA256."""

    MAC_BYTES = 32

    def __init__(self) -> None:
        self.key: bytes | None = None      # signs what this process sends
        self.keys: tuple[bytes, ...] = ()  # verify what it receives (a client may have met several labs)
        self.max_packet = MAX_PACKET_BYTES
        self.rejected = 0                  # packets dropped, counted; each peer is logged once
        self._logged: set[str] = set()
        self.acks: dict[bytes, str] = {}   # sealed ACK packet (per key held) -> the ACK word
        self.on_verified = None            # called when another key than the last verifies a packet
        self.verified_by: bytes | None = None

    def use(self, key: bytes) -> None:
        """Sign with `key` from now on, and accept packets signed with it."""
        if not isinstance(key, bytes) or not 16 <= len(key) <= 64:
            raise NotAuthorised("a lab key must have 16 to 64 bytes")
        self.key = key
        if key not in self.keys:
            self.keys = (key, *self.keys)[:8]
            for word in ("ACK", "ACK+DATAERR"):
                data = pickle.dumps(word)
                self.acks[_mac(key, data) + data] = word

    def dumps(self, obj) -> bytes:
        """The sealed bytes of `obj`."""
        if self.key is None:
            raise NotAuthorised("this process holds no lab key: it cannot send to a lab")
        data = pickle.dumps(obj)
        return _mac(self.key, data) + data

    def loads(self, packet: bytes, source=None):
        """The object in a sealed packet; ValueError (Thespian drops the packet) if the MAC does not check out
        or the envelope is not what Thespian sends, so nothing a stranger sends is ever unpickled."""
        ack = self.acks.get(packet)
        if ack is not None:  # a sealed ACK is a constant per key: comparing its bytes verifies it
            return ack
        view = memoryview(packet)
        mac, data = view[:self.MAC_BYTES], view[self.MAC_BYTES:]
        key = next((key for key in self.keys if len(packet) > self.MAC_BYTES
                    and hmac.compare_digest(mac, _mac(key, data))), None)
        if key is None:
            self.reject(source, "its MAC does not check out under the lab key (a client without the key, or junk)")
            raise ValueError("packet refused: bad MAC")
        if key is not self.verified_by:
            self.verified_by = key
            if self.on_verified is not None:
                self.on_verified(key)
        obj = pickle.loads(data)
        if not _well_formed(obj):
            self.reject(source, f"a sealed packet of an unexpected shape ({type(obj).__name__})")
            raise ValueError("packet refused: not an envelope")
        return obj

    def reject(self, source, why: str) -> None:
        """Count a dropped packet; log the first from each peer (`source` tells the peer's address)."""
        self.rejected += 1
        peer = source.peer() if source is not None else "a peer"
        host = peer.rsplit(":", 1)[0]  # a peer is its address: each connection has a new port
        if host not in self._logged and len(self._logged) < 1000:
            self._logged.add(host)
            logging.getLogger("labctl.trust").warning(
                "dropped a packet from %s: %s; later ones from there are counted, not logged (pid %d, %d dropped "
                "so far)", peer, why, os.getpid(), self.rejected)


def _well_formed(obj) -> bool:
    # What Thespian sends: an ACK word, or (sender's TCP address, message). Anything else would
    # kill the receiver inside Thespian (its importAddr raises on a sender that is not an address).
    if type(obj) is tuple:
        return len(obj) == 2 and isinstance(obj[0], ActorAddress) and isinstance(obj[0].addressDetails, TCPv4ActorAddress)
    return obj in ("ACK", "ACK+DATAERR") if type(obj) is str else False


def _mac(key: bytes, data) -> bytes:
    """32 bytes of keyed BLAKE2b (a MAC in its own right) for a packet up to 64 KiB, HMAC-SHA256 above:
    sender and receiver choose alike by the packet's length. See Seal for the measurements."""
    if len(data) > 65536:
        return hmac.digest(key, data, "sha256")
    return hashlib.blake2b(data, key=key, digest_size=32).digest()


SEAL = Seal()
