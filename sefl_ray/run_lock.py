"""One writer per run dir: a second `pipeline` or stage on a run dir in use stops at once and names the holder.

The lock is an `flock` on `RUN_DIR/.lock`, so the kernel drops it when its holder exits, however it exits: a lock
left by a killed process is simply free again, and there is no stale-pid guessing. The file also holds who took it
(pid, host, command, time), which is all the second writer needs to say. A run dir on a filesystem without
`flock` (some network mounts) is written without the lock, with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sefl_ray.errors import SeflError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunDirBusyError(SeflError):
    """Another process is writing this run dir."""


@contextmanager
def run_lock(run_dir: str | Path, command: str) -> Iterator[None]:
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SeflError(f"cannot write the run dir {run_dir}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise RunDirBusyError(f"{run_dir} is in use by {_holder(handle)}: wait for it to finish, or stop "
                                      "it, or use another run_dir") from None
            logger.warning("%s: no file locks on this filesystem (%s); make sure nothing else writes it", run_dir,
                           exc.strerror)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(handle, 0)
        os.pwrite(handle, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(handle)  # closing drops the flock


def _holder(handle: int) -> str:
    try:
        holder = json.loads(os.pread(handle, 4096, 0) or b"{}")
        return (f"pid {holder['pid']} on {holder['host']} (sefl-ray {holder['command']}, since "
                f"{holder['since']})")
    except (ValueError, KeyError, TypeError, OSError):
        return "another process"
