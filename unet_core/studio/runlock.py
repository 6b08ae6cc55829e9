"""One training at a time on the machine: the lock file ``runs/.lock``.

It holds ``{"pid", "run", "started", "time"}`` of the process that holds it and is created
atomically (a hard link, which fails when the file exists; NTFS, APFS and every Linux file system
have them). A lock whose process is gone, or whose pid now belongs to another process (another
create time), is stale and is removed by the next reader. Training processes started from the
command line into the same runs folder hold no lock but are found among the processes
(:func:`~unet_core.studio.processes.training_processes`) and count as busy too.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..paths import runs_dir
from .processes import pid_alive, process_started, training_processes

LOCK_NAME = ".lock"


class JobError(UserError, RuntimeError):
    """A run that cannot be started, stopped or resumed; the message says what to do."""


class RunBusy(JobError):
    """Another training holds the machine; ``holder`` names it."""

    def __init__(self, holder: LockInfo) -> None:
        self.holder = holder
        how = " (started from the command line)" if holder.external else ""
        super().__init__(
            f"the training run **{holder.run}**{how} is running on this computer (process {holder.pid}); "
            "one training runs at a time. Wait until it ends or stop it, then start again.")


@dataclass(frozen=True)
class LockInfo:
    """Who holds the machine: the run, its process and when it started."""

    run: str
    pid: int
    time: float = 0.0
    started: float | None = None  # the process's create time (a reused pid is told apart)
    external: bool = False  # a command-line run found among the processes, holding no lock file

    @property
    def alive(self) -> bool:
        return pid_alive(self.pid, self.started)


def lock_path(root: str | Path | None = None) -> Path:
    return Path(root or runs_dir()) / LOCK_NAME


def _read_lock_file(path: Path) -> LockInfo | None | bool:
    """The lock's content; None when there is no lock, False when it cannot be parsed."""
    try:
        d = json.loads(path.read_text())
        return LockInfo(str(d["run"]), int(d["pid"]), float(d.get("time", 0.0)), d.get("started"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return False


def read_lock(root: str | Path | None = None, clean: bool = True) -> LockInfo | None:
    """The live holder of the lock, or None; a stale lock (dead process) is removed."""
    path = lock_path(root)
    info = _read_lock_file(path)
    if info is None:
        return None
    if info is not False and info.alive:
        return info
    if info is False:  # unreadable: only someone writing it right now is excused (a few seconds)
        try:
            if time.time() - path.stat().st_mtime < 10:
                return LockInfo("(starting)", 0, path.stat().st_mtime)
        except OSError:
            return None
    if clean:
        _remove_lock_if(path, info if info is not False else None)
    return None


def _remove_lock_if(path: Path, expected: LockInfo | None) -> None:
    """Remove the lock if it still holds ``expected`` (None: whatever unreadable content).

    Read-then-unlink would let two cleaners race: the slower one could delete the lock that the
    faster one took in between. Instead the lock is moved aside first (a rename: one mover wins),
    then checked; a lock that turns out to be someone's fresh one is put back.
    """
    grave = path.with_name(f"{LOCK_NAME}.{os.getpid()}.{threading.get_ident()}.stale")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return  # someone else cleared it
    current = _read_lock_file(grave)
    stale = (current is False) if expected is None else (
        current is not None and current is not False and (current.pid, current.run) == (expected.pid, expected.run))
    if not stale:
        try:
            os.link(grave, path)  # a live lock: back where it was (unless a new one was taken meanwhile)
        except FileExistsError:
            pass
    grave.unlink(missing_ok=True)


def busy(root: str | Path | None = None) -> LockInfo | None:
    """What holds the machine: the lock's run, else a command-line training in ``root``."""
    held = read_lock(root)
    if held is not None:
        return held
    for run, pid in sorted(training_processes(Path(root or runs_dir())).items()):
        return LockInfo(run, pid, external=True)
    return None


def write_lock(path: Path, info: LockInfo, exclusive: bool) -> None:
    """Write the lock's content: atomically, and with ``exclusive`` only if there is no lock."""
    tmp = path.with_name(f"{LOCK_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"run": info.run, "pid": info.pid, "time": info.time,
                               "started": info.started}))
    try:
        if exclusive:
            os.link(tmp, path)  # atomic, and fails if a lock exists
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_ACQUIRE = threading.Lock()


def acquire_lock(run: str, pid: int, root: str | Path | None = None) -> LockInfo:
    """Take the machine for ``run`` (held by ``pid``); raises :class:`RunBusy` naming the holder."""
    root = Path(root or runs_dir())
    root.mkdir(parents=True, exist_ok=True)
    path = lock_path(root)
    info = LockInfo(run, pid, time.time(), process_started(pid))
    with _ACQUIRE:  # the sessions of one server take turns; other processes are kept out by the link
        for _ in range(3):
            holder = busy(root)
            if holder is not None:
                raise RunBusy(holder)
            try:
                write_lock(path, info, exclusive=True)
                return info
            except FileExistsError:
                continue  # someone was faster, or a stale lock was just cleared: look again
        holder = read_lock(root, clean=False)
    raise RunBusy(holder or LockInfo("(unknown)", 0))


def release_lock(root: str | Path | None = None, pid: int | None = None) -> None:
    """Remove the lock (only if ``pid``, when given, holds it)."""
    path = lock_path(root)
    current = _read_lock_file(path)
    if current is None or (pid is not None and (current is False or current.pid != pid)):
        return
    path.unlink(missing_ok=True)
