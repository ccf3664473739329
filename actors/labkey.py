"""The lab key: one shared secret per lab, like Erlang's cookie. Every packet of the lab's actor
system carries a MAC under it (see actorsystem.seal), so only holders of the key can talk to the lab.

`labctl up` makes a new random key for each lab (or takes `[lab] key_file`) and keeps it, mode
0600, in the user's private run folder, where the lab's clients on this machine find it. A member
host (`labctl node`) or a remote client is given a copy of the file, as one copies an SSH key.
"""

from __future__ import annotations

import os
import secrets
import stat
import tempfile
from pathlib import Path

from . import runstate
from .errors import NotAuthorised

KEY_BYTES = 32
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 64   # keyed BLAKE2b's limit
KEY_FILE_ENV = "LABCTL_KEY_FILE"


def path_for(port: int) -> Path:
    """Where the key of the lab on `port` is kept on this machine."""
    return runstate.base_dir() / f"lab-{port}.key"


def generate() -> bytes:
    """A new random key."""
    return secrets.token_bytes(KEY_BYTES)


def read_key_file(path: str | os.PathLike) -> bytes:
    """The key in a key file (hex text); NotAuthorised saying why when it is missing, unsafe or malformed."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NotAuthorised(f"no key file {path}") from None
    except OSError as exc:
        raise NotAuthorised(f"cannot read key file {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise NotAuthorised(f"key file {path} is not a regular file")
        if info.st_uid != os.getuid():
            raise NotAuthorised(f"key file {path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()})")
        if info.st_mode & 0o077:
            raise NotAuthorised(f"key file {path} can be read by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                                f"make it private: chmod 600 {path}")
        text = file.read(4096)
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise NotAuthorised(f"key file {path} does not hold a key (expected hex text)") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise NotAuthorised(f"the key in {path} is {len(key)} bytes; it must have {MIN_KEY_BYTES} to "
                            f"{MAX_KEY_BYTES}")
    return key


def write_key_file(path: str | os.PathLike, key: bytes) -> Path:
    """Save `key` as hex text, mode 0600, replacing the file atomically (a planted link is replaced, not followed)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # O_EXCL, mode 0600
    try:
        with os.fdopen(fd, "w") as file:
            file.write(key.hex() + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def install(port: int, key: bytes) -> Path:
    """Keep the key of the lab on `port` where this machine's clients look for it."""
    return write_key_file(path_for(port), key)


def for_lab(port: int, key_file: str | os.PathLike | None = None) -> bytes:
    """The key to talk to the lab on `port`: from `key_file`, else $LABCTL_KEY_FILE, else the run folder.

    NotAuthorised when there is none: a client without the key is refused before it sends anything."""
    chosen = key_file or os.environ.get(KEY_FILE_ENV) or None
    path = Path(chosen) if chosen else path_for(port)
    try:
        return read_key_file(path)
    except NotAuthorised as exc:
        if chosen or path.exists():
            raise NotAuthorised(f"not authorised for lab on port {port}: {exc}") from None
        raise NotAuthorised(f"not authorised for lab on port {port}: no key (none at {path}; a lab started by "
                            f"another user, or elsewhere, needs its key file: --key-file or ${KEY_FILE_ENV})") from None
