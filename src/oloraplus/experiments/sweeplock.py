"""One driver per sweep directory: DIR/sweep.lock names the host and pid of the process that drives it.

The sweep directory is the one source of truth (on a shared filesystem when runs go to Ray or Slurm): workers
write their own run directories, the driver alone writes results.csv, sweep.json and the report. A second
driver would rewrite those files under the first one's feet and train the same runs twice, so it is refused.
A lock left by a driver that died (SIGKILL, a lost node) is taken over when its pid is gone on this host;
one from another host cannot be checked from here and is refused with the path to delete.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from oloraplus.errors import ConfigError

LOCK_FILE = "sweep.lock"


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not mistaken for the holder."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22 of proc(5); the name in (...) may hold spaces


def holder_alive(holder: dict[str, Any]) -> bool:
    """Whether the process a lock names still runs (only answerable on its own host)."""
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    recorded, now = holder.get("start_ticks"), _start_ticks(pid)
    return recorded is None or now is None or recorded == now


def _read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _describe(holder: dict[str, Any]) -> str:
    return f"host {holder.get('host')}, pid {holder.get('pid')}, since {holder.get('since')}"


@contextlib.contextmanager
def sweep_lock(directory: str | Path, what: str = "sweep") -> Iterator[Path]:
    """Hold DIR/sweep.lock while the block runs; refuse a live holder, take over a dead one's.

    Creates DIR, and removes it again if it is left empty (a refused sweep writes nothing).
    """
    directory = Path(directory)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "start_ticks": _start_ticks(os.getpid()),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:
                raise ConfigError(f"{path}: unreadable lock of another {what} driver; delete it if none runs") from None
            if holder.get("host") != mine["host"]:
                raise ConfigError(f"{directory}: another {what} driver holds it ({_describe(holder)}); wait for it, "
                                  f"or delete {path} if that process is gone") from None
            if holder_alive(holder):
                raise ConfigError(f"{directory}: another {what} driver runs on it ({_describe(holder)}); "
                                  "wait for it to finish") from None
            print(f"{path}: the {what} driver that held it ({_describe(holder)}) is gone; taking over",
                  file=sys.stderr, flush=True)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(mine, f)
        break
    try:
        yield path
    finally:
        if _read(path) == mine:  # never remove a lock that another driver took over meanwhile
            path.unlink(missing_ok=True)
        if created and not any(directory.iterdir()):
            directory.rmdir()
