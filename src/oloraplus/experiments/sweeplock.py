"""One driver per sweep directory: DIR/sweep.lock names the host and pid of the process that drives it.

The sweep directory is the one source of truth (on a shared filesystem when runs go to Ray or Slurm): workers
write their own run directories, the driver alone writes results.csv, sweep.json and the report. A second
driver would rewrite those files under the first one's feet and train the same runs twice, so it is refused.
A lock left by a driver that died (SIGKILL, a lost node) is taken over when its pid is gone on this host;
one from another host cannot be checked from here and is refused with the path to delete.

Both steps are atomic, so two drivers that find the same dead lock never both hold it: a lock is created whole
(written aside, then hard-linked into place, which fails if one exists), and a dead one is first renamed aside;
a driver that finds it has moved a live lock instead (another driver took over in between) links it back and
is refused.
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


def _create(path: Path, mine: dict[str, Any]) -> bool:
    """Put a lock holding `mine` at `path` in one step (never an empty or half-written lock); False if one exists."""
    staged = path.with_name(f".{path.name}.{os.getpid()}.new")
    staged.write_text(json.dumps(mine), encoding="utf-8")
    try:
        os.link(staged, path)
        return True
    except FileExistsError:
        return False
    finally:
        staged.unlink(missing_ok=True)


def _remove_dead(path: Path, dead: dict[str, Any]) -> bool:
    """Remove the lock of the dead holder `dead`; False (the lock left in place) if it is another driver's by now."""
    aside = path.with_name(f".{path.name}.{os.getpid()}.dead")
    try:
        os.rename(path, aside)  # atomic: of two drivers taking over, one moves the dead lock, the other nothing
    except FileNotFoundError:
        return True  # another driver removed it first: try to create ours
    if _read(aside) == dead:
        aside.unlink(missing_ok=True)
        return True
    with contextlib.suppress(FileExistsError):
        os.link(aside, path)  # it was a live driver's new lock: back where it was
    aside.unlink(missing_ok=True)
    return False


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
    while not _create(path, mine):
        holder = _read(path)
        if holder is None:
            if not path.exists():
                continue  # removed between our attempt and the read: try again
            raise ConfigError(f"{path}: unreadable lock of another {what} driver; delete it if none runs")
        if holder.get("host") != mine["host"]:
            raise ConfigError(f"{directory}: another {what} driver holds it ({_describe(holder)}); wait for it, "
                              f"or delete {path} if that process is gone")
        if holder_alive(holder):
            raise ConfigError(f"{directory}: another {what} driver runs on it ({_describe(holder)}); "
                              "wait for it to finish")
        if _remove_dead(path, holder):
            print(f"{path}: the {what} driver that held it ({_describe(holder)}) is gone; taking over",
                  file=sys.stderr, flush=True)
    try:
        yield path
    finally:
        if _read(path) == mine:  # never remove a lock that another driver took over meanwhile
            path.unlink(missing_ok=True)
        if created and not any(directory.iterdir()):
            directory.rmdir()
