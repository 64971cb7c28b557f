"""One run per run directory: an exclusive lock on ``run_dir/.lock`` that the kernel releases when its holder dies.

Two trainings writing into the same run directory would interleave metrics and overwrite each other's
checkpoints (and one's cleanup of interrupted writes would delete the other's temporaries). ``RunLock`` takes
a non-blocking ``fcntl.flock`` on ``.lock``; a second holder, in another process or this one, gets
``RunDirectoryInUseError`` naming the holder's pid and start time, which the holder records in the file. A
flock belongs to the open file, so a killed run (even SIGKILL) never leaves a stale lock behind; the file itself
stays (deleting it would let two processes lock two different files of the same name). Forked children
(DataLoader workers) close their inherited copy of the descriptor at once, so a killed run's lingering workers
do not keep its run directory locked; exec'd ones never get it (close-on-exec).

This module imports nothing from ``wrc``, so that it loads fast in helper processes.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".lock"
_HELD: set[int] = set()  # descriptors of the locks this process holds


def _close_inherited() -> None:
    """In a forked child: drop the inherited descriptors (closing, not unlocking, leaves the parent's lock held)."""
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_inherited)


class RunDirectoryInUseError(RuntimeError):
    """Another live process holds the run directory's lock; the message says which and what to do."""


class RunLock:
    """``with RunLock(run_dir): ...`` holds the run directory for the block (``acquire``/``release`` also work).

    The lock file is created with the permissions the umask gives.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._pid = os.getpid()

    @property
    def held(self) -> bool:
        return self._fd is not None and self._pid == os.getpid()

    def acquire(self) -> RunLock:
        """Take the lock or raise ``RunDirectoryInUseError`` at once (never waits)."""
        if self.held:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunDirectoryInUseError(
                f"run directory {self.run_dir} is in use by another run ({_describe(holder)}); wait for it or "
                "choose another run_dir"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        _write_holder(fd)
        self._fd, self._pid = fd, os.getpid()
        _HELD.add(fd)
        return self

    def release(self) -> None:
        """Unlock (a no-op in a forked child, whose inherited copy is already closed)."""
        if not self.held:
            self._fd = None
            return
        _HELD.discard(self._fd)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def _write_holder(fd: int) -> None:
    """Record who holds the lock (pid, host, start time) for the message a second holder gets."""
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started_at": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime())}
    data = (json.dumps(info) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)


def _read_holder(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "pid unknown"
    host = holder.get("host")
    where = f" on {host}" if host and host != socket.gethostname() else ""
    return f"pid {holder.get('pid', 'unknown')}{where}, started at {holder.get('started_at', 'unknown')}"
