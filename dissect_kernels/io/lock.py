"""An advisory lock on an output folder: one run writes into a folder at a time. A second run
into the same folder fails at once with a message naming the holder (its pid, host and start
time, read from the lock file), instead of mixing its files with the first run's. The lock is
re-entrant within a process (a command that runs several drivers into one folder takes it once),
its file is removed on release, and a killed process releases it too (the kernel drops flock
locks with the process)."""
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
    fd = _acquire(path, folder)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(sys.argv)[:200]}".encode())
    _held[path] = [fd, 1]
    try:
        yield
    finally:
        if _held[path][1] == 1:
            del _held[path]
            Path(path).unlink(missing_ok=True)        # nothing left behind; see _acquire
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        else:
            _held[path][1] -= 1


def _acquire(path: str, folder) -> int:
    """An fd holding the lock on the file at `path` (the file may be removed by its holder on
    release, so a lock won on a removed file does not count: try the new file)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for _ in range(8):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputInUse(f"{folder} is in use by another run ({holder}); wait for it to finish or "
                              "write into another folder") from None
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.ftruncate(fd, 0)
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)                                   # won a lock on a file since removed
    raise OutputInUse(f"{folder}: could not take its lock (another run keeps replacing it)")
