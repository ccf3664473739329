"""Starting and attaching to Thespian actor systems, with labctl's fixes to Thespian's defaults.

This is the one module that patches Thespian. THESPIAN.md lists what the fixes are for: every
packet would be an unauthenticated pickle (anyone who reaches a port runs code), every actor and
admin port would listen on 0.0.0.0, actor processes would outlive their parents (holding serial
ports), a client could start a stray admin where it only meant to attach, any admin holding the key
could join as any host, members would rejoin a restarted leader after minutes, and sends to a host
whose link is down would hold up every other message and be retried for minutes. `harden()` must
run before a process's first `ActorSystem()`; forked actors inherit it, the lab key included.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import select
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

from thespian.actors import Actor, ActorSystem, InvalidActorAddress

from . import logs, processes
from .seal import MAX_PACKET_BYTES, SEAL, Seal
from .errors import LabNotRunning

BASE = "multiprocTCPBase"
SUPERVISOR_NAME = "labctl.supervisor"
# Clients name the class rather than import it: a client must not load the actor runtime to attach.
SUPERVISOR_CLASS = "labctl.actors.supervisor.Supervisor"
HOST_CAPABILITY = "labctl.host"
LAB_CAPABILITY = "labctl.lab"
CONVENTION_CAPABILITY = "Convention Address.IPv4"
MEMBERS_CAPABILITY = "labctl.members"   # a leader's: {host name: declared address} of the hosts it accepts
# A member checks in with its leader this often, and looks for a lost leader again after as long
# (Thespian: 7 min 22 s and 3 min 22 s): a node rejoins a restarted leader within a few seconds.
# The leader's own view of its members is the supervisor's host heartbeats, not this.
CONVENTION_PERIOD = timedelta(seconds=2)
# Sends in flight at once per process before Thespian queues the rest behind them, for every
# destination (its default: 20). A send to a host whose link is down stays in flight for minutes
# (its TCP connect): a few dozen such would hold up every other message of the supervisor.
PENDING_SENDS = 1000
# A connect to a host whose link is down gives up after one SYN retry (~3 s; the kernel's default
# keeps trying for ~2 min, on a growing schedule), and a failed send is tried again after attempts x
# RESEND_AFTER (Thespian: 35 s). Every later send to the same actor waits behind that one: without
# this, a host back from an outage was heard from only at its connect's next SYN retry, seconds later.
CONNECT_SYN_RETRIES = 1
RESEND_AFTER = timedelta(seconds=0.2)
RESEND_MAX = timedelta(seconds=2)   # the longest a member waits between tries to reach its leader (Thespian: 45 s)
ADMIN_SHUTDOWN_S = 2.0
MAX_HEADER_BYTES = 16     # "<decimal length>>": 12 digits already say more than any limit
INCOMING_PACKET_S = 30.0  # a packet still not whole after this is dropped (Thespian: 7 minutes)

# pid -> exit code of this process's children that Thespian has reaped; the supervisor reads it to
# say how a device's process ended ("killed by SIGKILL").
EXIT_CODES: dict[int, int | None] = {}

_hardened = False
_attach_only = threading.local()
_attach_lock = threading.Lock()
_close_in_children: set[int] = set()


class _admin_ends_with:
    """The process whose end ends this host's admin (a node's), or 0: the admin outlives its starter."""

    pid = 0


def _end_with(pid: int) -> None:
    """End this process (and, by their parent-death signal, its children) when process `pid` ends."""
    def watch() -> None:
        try:
            fd = os.pidfd_open(pid)
            select.select([fd], [], [])
        except ProcessLookupError:
            pass  # already gone
        except OSError:   # no pidfd (a kernel before 5.3): look twice a second
            while processes.is_alive(pid):
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="labctl-ends-with", daemon=True).start()


def keep_out_of_children(*fds: int) -> None:
    """Close these descriptors in every process Thespian forks from now on (admin, logger, actors).

    A forked actor inherits every open descriptor; a pipe end kept open in an actor would, for one,
    stop its reader from ever seeing end-of-file."""
    _close_in_children.update(fds)


def _close_inherited() -> None:
    for fd in _close_in_children:
        try:
            os.close(fd)
        except OSError:
            pass


def _seal_transport() -> None:
    """Make Thespian's TCP transport send and accept only sealed packets, of a bounded size."""
    from thespian.system.transport import TCPTransport as tcp
    from thespian.system.transport import streamBuffer

    class BoundedBuffer(streamBuffer.ReceiveBuffer):
        """A packet buffer that unseals what it receives and refuses a length header above the lab's
        maximum before reading on: nothing is allocated for a length the MAC has not vouched for."""

        sock = None  # the connection it reads, to name the peer of a packet that is refused

        def __init__(self, serializer=None):
            super().__init__(self.unseal)

        def unseal(self, packet):
            return SEAL.loads(packet, self)

        def peer(self) -> str:
            try:
                return "%s:%d" % self.sock.getpeername()[:2]
            except (AttributeError, OSError, TypeError):
                return "an unknown peer"

        def addMore(self, buf, _add=streamBuffer.ReceiveBuffer.addMore):
            _add(self, buf)
            if self._size is None and len(self._buf) > MAX_HEADER_BYTES:  # a header that never ends
                raise ValueError("packet length header is too long")
            if self._size is not None and not 0 < self._size <= SEAL.max_packet + Seal.MAC_BYTES:
                raise ValueError(f"packet length {self._size} is over the limit")

    tcp.serializer = SEAL
    tcp.ReceiveBuffer = BoundedBuffer
    # The two ACK packets are pre-serialized at import; they must be sealed too, or every send
    # waits for an ACK it cannot verify. A packet is ACKed right after it is unpickled, on the same
    # thread: seal the ACK with the key that verified the packet (a client may talk to several labs).
    acks: dict[bytes, tuple[bytes, bytes]] = {}

    def seal_acks(key: bytes) -> None:
        if key not in acks:
            saved, SEAL.key = SEAL.key, key
            acks[key] = (streamBuffer.toSendBuffer(streamBuffer.ackPacket, SEAL.dumps),
                         streamBuffer.toSendBuffer(streamBuffer.ackDataErrPacket, SEAL.dumps))
            SEAL.key = saved
        tcp.ackMsg, tcp.ackDataErrMsg = acks[key]

    if SEAL.key is not None:
        seal_acks(SEAL.key)
    SEAL.on_verified = seal_acks
    tcp.MAX_INCOMING_SOCKET_PERIOD = timedelta(seconds=INCOMING_PACKET_S)
    original_init = tcp.TCPIncoming_Common.__init__

    def incoming_init(self, rmtAddr, baseSock, rcvBuf=None):
        original_init(self, rmtAddr, baseSock, rcvBuf)
        self._rData.sock = baseSock

    tcp.TCPIncoming_Common.__init__ = incoming_init
    from thespian.system.transport import asyncTransportBase

    asyncTransportBase.MAX_PENDING_TRANSMITS = PENDING_SENDS
    _fail_fast_connects(tcp)


def _fail_fast_connects(tcp) -> None:
    """Outgoing connects that give up soon, and failed sends tried again soon (see CONNECT_SYN_RETRIES)."""
    import socket

    from thespian.system import transport as transports

    original_new_socket = tcp.TCPTransport.new_socket

    def new_socket(self, op, *args, **kwargs):
        made = original_new_socket(self, op, *args, **kwargs)
        if op is socket.socket and hasattr(socket, "TCP_SYNCNT"):
            made.setsockopt(socket.IPPROTO_TCP, socket.TCP_SYNCNT, CONNECT_SYN_RETRIES)
        return made

    tcp.TCPTransport.new_socket = new_socket
    original_intent = transports.TransmitIntent.__init__

    def intent_init(self, *args, **kwargs):
        original_intent(self, *args, **kwargs)
        self.transmit_retry_period = min(self.transmit_retry_period, RESEND_AFTER)

    transports.TransmitIntent.__init__ = intent_init


def _admit_declared_members() -> None:
    """Make convention admins rejoin in seconds, and a leader accept a member only as a host the lab
    file declares, from that host's declared address (the MAC already proves it holds the lab key)."""
    import logging

    import thespian.system.admin.convention as convention
    from thespian.system.transport import hysteresis

    convention.CONVENTION_REREGISTRATION_PERIOD = CONVENTION_PERIOD
    convention.CONVENTION_RESTART_PERIOD = CONVENTION_PERIOD
    original_resend = hysteresis.HysteresisDelaySender.__init__

    def resend_init(self, *args, **kwargs):
        original_resend(self, *args, **kwargs)
        self._hysteresis_max_period = min(self._hysteresis_max_period, RESEND_MAX)

    hysteresis.HysteresisDelaySender.__init__ = resend_init
    original_register = convention.ConventioneerAdmin.h_ConventionRegister
    refused: set[tuple] = set()

    def register(self, envelope):
        members = self.capabilities.get(MEMBERS_CAPABILITY)
        if members is not None:
            message = envelope.message
            name = (message.capabilities or {}).get(HOST_CAPABILITY)
            address = message.adminAddress.addressDetails.sockname
            why = refusal(members, name, address)
            if why:
                if (name, address) not in refused and len(refused) < 1000:  # logged once, not every 2 s
                    refused.add((name, address))
                    logging.getLogger("labctl.trust").warning("refused a node at %s:%d: %s", *address, why)
                return True
        return original_register(self, envelope)

    convention.ConventioneerAdmin.h_ConventionRegister = register


def refusal(members: dict, name, address: tuple) -> str:
    """Why a node that says it is host `name`, at `address` (ip, port), may not join; '' if it may."""
    if name not in members:
        return f"it says it is host {name!r}, which the lab file does not declare ({', '.join(sorted(members)) or 'none'})"
    ip, port = members[name]
    if address[0] != ip or (port and address[1] != port):
        wanted = f"{ip}:{port}" if port else ip
        return f"host {name!r} is declared at {wanted}, not at {address[0]}:{address[1]}"
    return ""


def harden(bind: str = "127.0.0.1", key: bytes | None = None) -> None:
    """Install labctl's fixes to Thespian in this process (idempotent); `key` is the lab key to use."""
    global _hardened
    os.environ["THESPIAN_BASE_IPADDR"] = bind
    if key is not None:
        SEAL.use(key)
    if _hardened:
        return
    _hardened = True
    logs.remember_logging_manager()
    _seal_transport()
    _admit_declared_members()
    import thespian.system.systemBase as system_base

    # An admin shuts down in tens of milliseconds; one that does not (stopped, hung) is not waited
    # on for Thespian's 10 s: whoever stops a lab kills what is left afterwards anyway.
    system_base.MAX_SYSTEM_SHUTDOWN_DELAY = timedelta(seconds=ADMIN_SHUTDOWN_S)
    import thespian.system.multiprocCommon as multiproc
    from thespian.system.transport import IPBase

    original_address_init = IPBase.IPActorAddress.__init__

    def address_init(self, *args, **kwargs):
        original_address_init(self, *args, **kwargs)
        # Thespian binds '' (every interface) for addresses it advertises; bind the advertised one.
        if self.bindname[0] == "":
            self.bindname = (self.sockname[0], self.bindname[1])

    IPBase.IPActorAddress.__init__ = address_init

    def dying_with_parent(start):
        def run(*args, **kwargs):
            parent = multiprocessing.parent_process()
            processes.die_with_parent(parent.pid if parent is not None else None)
            _close_inherited()
            # startChild gives every signal a Python handler, SIGSEGV's too: a segfault in a driver's C
            # code would return to the faulting instruction forever (100% CPU, taken for a hang). In
            # this process (just forked) it sets them through this module global: keep the fatal
            # ones deadly, so the exit status says "killed by SIGSEGV".
            multiproc.set_signal_handler = processes.keep_fatal_signals_default
            # Thespian is about to replace logging's root and manager in this process, as it did in
            # each process above; loggers made before (a driver module's, imported in the keeper
            # to check the lab file) would keep pointing at an old root. See logs.adopt_inherited_loggers().
            logs.remember_logging_manager()
            return start(*args, **kwargs)
        return run

    def admin_start(start):
        def run(admin_class, *args, **kwargs):
            _close_inherited()
            # When its logger dies the admin starts another with `self.logDefs`, which Thespian never
            # sets: the admin crashed instead ('MultiProcAdmin' object has no attribute 'logDefs').
            # In this (the admin's own, just forked) process, give the class the lab's log config.
            admin_class.logDefs = args[5] if len(args) > 5 else kwargs.get("logDefs")
            if _admin_ends_with.pid:
                # A node's admin detaches itself like any admin, but must not outlive the node: killed,
                # the node would leave it running its devices, unsupervised. Watch from the admin's own
                # (double-forked) process, where Thespian constructs this class.
                starter, base = _admin_ends_with.pid, admin_class

                class EndsWithNode(base):
                    def __init__(self, *a, **k):
                        _end_with(starter)
                        super().__init__(*a, **k)

                EndsWithNode.__name__ = base.__name__  # its process title
                admin_class = EndsWithNode
            return start(admin_class, *args, **kwargs)
        return run

    # These are looked up as module globals when a process is forked, so wrapping them here reaches
    # every actor process and the logger (each dies with the process that forked it) and the admin
    # (which detaches itself on purpose: the keeper watches it instead).
    multiproc.startChild = dying_with_parent(multiproc.startChild)
    multiproc.startupASLogger = dying_with_parent(multiproc.startupASLogger)
    multiproc.startAdmin = admin_start(multiproc.startAdmin)

    check_liveness = multiproc.MultiProcReplicator._checkChildLiveness

    def record_exit(child_info):
        alive = check_liveness(child_info)
        if not alive:
            EXIT_CODES[child_info.childProc.pid] = child_info.childProc.exitcode
        return alive

    multiproc.MultiProcReplicator._checkChildLiveness = staticmethod(record_exit)

    original_start_admin = multiproc.multiprocessCommon._startAdmin

    def start_admin(self, *args, **kwargs):
        if getattr(_attach_only, "on", False):
            raise LabNotRunning("no lab is running on this port")
        return original_start_admin(self, *args, **kwargs)

    multiproc.multiprocessCommon._startAdmin = start_admin


@contextlib.contextmanager
def never_starting_an_admin():
    """Within this block, this thread's Thespian calls never start an admin: one that finds the admin
    gone (a context made with `private()`, say) raises LabNotRunning instead of forking a stray one."""
    saved, _attach_only.on = getattr(_attach_only, "on", False), True
    try:
        yield
    finally:
        _attach_only.on = saved


def start_admin(port: int, bind: str, host: str, lab_name: str, log_dir: str, key: bytes,
                leader: tuple[str, int] | None = None, max_packet_bytes: int = MAX_PACKET_BYTES,
                members: dict[str, tuple[str, int]] | None = None) -> ActorSystem:
    """Start a new admin for a lab on this host (joining the `leader`'s convention if given), sealed
    with the lab `key`; a leader accepts only the `members` (host name -> declared (address, port)),
    a member's admin ends with the process that started it. The caller must have checked that the
    port is free."""
    harden(bind, key)
    SEAL.max_packet = max_packet_bytes
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    os.environ["THESPLOG_FILE"] = str(Path(log_dir) / "thespian.log")
    os.environ.setdefault("THESPLOG_FILE_MAXSIZE", str(1024 * 1024))
    capabilities = {"Admin Port": port, HOST_CAPABILITY: host, LAB_CAPABILITY: lab_name,
                    "Process Startup Method": "fork"}
    if leader is not None:
        capabilities[CONVENTION_CAPABILITY] = leader
        _admin_ends_with.pid = os.getpid()
    else:
        capabilities[MEMBERS_CAPABILITY] = dict(members or {})
    return ActorSystem(BASE, capabilities, logDefs=logs.log_config(log_dir), transientUnique=True)


def attach(port: int, address: str, timeout: float, key: bytes) -> ActorSystem:
    """Attach to the admin on `port` with the lab `key`, never starting one; LabNotRunning when none
    answers in time."""
    if not processes.port_answers(port, address):
        raise LabNotRunning(f"no lab is running on port {port}")
    harden(address, key)
    import thespian.system.systemBase as system_base

    # Thespian retries an admin that does not answer for ~11 s (MAX_SYSTEM_SHUTDOWN_DELAY + 1 s, in
    # steps of MAX_ADMIN_STATUS_REQ_DELAY); a client gives it its own timeout instead.
    with _attach_lock:
        saved = system_base.MAX_SYSTEM_SHUTDOWN_DELAY, system_base.MAX_ADMIN_STATUS_REQ_DELAY
        system_base.MAX_SYSTEM_SHUTDOWN_DELAY = timedelta(0)
        # It asks twice, with a 0.5 s pause: two asks of timeout/2.5 each fit the timeout.
        system_base.MAX_ADMIN_STATUS_REQ_DELAY = timedelta(seconds=max(0.2, min(timeout / 2.5, 2.0)))
        _attach_only.on = True
        try:
            return ActorSystem(BASE, {"Admin Port": port}, logDefs=QUIET_LOGS, transientUnique=True)
        except InvalidActorAddress:
            raise LabNotRunning(f"something listens on port {port} but no lab's admin answers with this key "
                                "(a lab with another key, a hung lab, or another program)") from None
        finally:
            _attach_only.on = False
            system_base.MAX_SYSTEM_SHUTDOWN_DELAY, system_base.MAX_ADMIN_STATUS_REQ_DELAY = saved


# Clients pass this when attaching; it is used only if Thespian had to start something itself.
QUIET_LOGS = {"version": 1, "disable_existing_loggers": False,
              "root": {"level": "WARNING", "handlers": []}}


class PlacedActor(Actor):
    """An actor that runs only on the host its creator names: targetActorRequirements={HOST_CAPABILITY: name}."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        logs.adopt_inherited_loggers()  # loggers its modules made in the processes it was forked from

    @staticmethod
    def actorSystemCapabilityCheck(capabilities, requirements):
        wanted = (requirements or {}).get(HOST_CAPABILITY)
        return wanted is None or capabilities.get(HOST_CAPABILITY) == wanted


def local_child_pid(actor, address) -> int | None:
    """The pid of a child that `actor` has just created in this host's process tree, when known.

    Thespian forks local children synchronously inside createActor but does not expose the pid;
    the supervisor needs it to kill a device that hangs before it could report itself."""
    for child in reversed(getattr(actor._myRef, "_child_procs", [])):
        if child.childAddr == address:
            return child.childProc.pid
    return None
