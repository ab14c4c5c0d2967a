"""An advisory lock on an output folder: one run writes into a folder at a time. A second run
into the same folder fails at once with a message naming the holder (its pid, host and start
time, read from the lock file), instead of mixing its files with the first run's. The lock is
re-entrant within a process (a command that runs several drivers into one folder takes it once)
and released when the process ends, however it ends."""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"
_held: dict[str, list] = {}          # lock path -> [fd, depth]


class OutputInUse(OSError):
    """The output folder is locked by another run."""


@contextmanager
def locked(folder, *, suffix: str = ""):
    """Hold the lock of `folder` (created if needed) for the block."""
    path = str((Path(folder) / (LOCK_FILE + suffix)).resolve())
    if path in _held:
        _held[path][1] += 1
        try:
            yield
        finally:
            _held[path][1] -= 1
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = Path(path).read_text(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OutputInUse(f"{folder} is in use by another run ({holder}); wait for it to finish or "
                          "write into another folder") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:200]}".encode())
    _held[path] = [fd, 1]
    try:
        yield
    finally:
        if _held[path][1] == 1:
            del _held[path]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        else:
            _held[path][1] -= 1
