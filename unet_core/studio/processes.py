"""Processes of training runs, the same way on Linux, macOS and Windows (through psutil): whether
a process is still the one that was started (a pid can be reused), the trainers writing into a
runs folder, and stopping a trainer with its data-loader workers."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

#: Two create times of one process, as psutil reports them, differ by less than this (seconds).
_SAME_START = 0.05


def process_started(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), to tell a reused pid apart; None if gone."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None


def pid_alive(pid: int, started: float | None = None) -> bool:
    """Whether ``pid`` is a running process (not a zombie) and, when given, the one that started
    at ``started`` (:func:`process_started`)."""
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(proc.create_time() - float(started)) < _SAME_START
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return started is None
    except (TypeError, ValueError):  # a start time of another format (an older job file)
        return True


def run_folder_of(argv: Sequence[str], cwd: str | Path) -> Path | None:
    """The run folder (``--out``) of a ``unet_core train`` command line, or None for other commands."""
    if "unet_core" not in argv or "train" not in argv:
        return None
    for i, arg in enumerate(argv):
        value = None
        if arg == "--out" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--out="):
            value = arg[len("--out="):]
        if value:
            path = Path(value)
            return (path if path.is_absolute() else Path(cwd) / path).resolve()
    return None


def training_processes(root: Path) -> dict[str, int]:
    """Training processes writing into the runs folder ``root``: run name -> lowest pid.

    Runs started from the command line are seen too; the data-loader workers share their
    trainer's command line and are folded into it.
    """
    root = root.resolve()
    found: dict[str, int] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        argv = proc.info.get("cmdline") or []
        if "unet_core" not in argv or proc.info.get("status") == psutil.STATUS_ZOMBIE or not proc.info.get("cwd"):
            continue
        out = run_folder_of(argv, proc.info["cwd"])
        if out is not None and out.parent == root:
            found[out.name] = min(proc.info["pid"], found.get(out.name, proc.info["pid"]))
    return found


def detached() -> dict[str, Any]:
    """``subprocess.Popen`` options that let a trainer outlive the app server (its own session
    on POSIX, its own process group on Windows)."""
    if os.name == "nt":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    return {"start_new_session": True}


def ask_to_stop(pid: int) -> None:
    """Ask the trainer to stop: SIGTERM on POSIX (it finishes its step and saves); on Windows,
    where a terminate is a kill, the stop request file alone does it (see ``jobs.stop_run``)."""
    if os.name == "nt" or pid == os.getpid():
        return
    try:
        psutil.Process(pid).terminate()
    except psutil.Error:
        pass


def kill_tree(pid: int) -> None:
    """Kill the trainer and its workers (checkpoints are atomic: nothing half-written survives)."""
    if pid == os.getpid():
        return  # the lock names this server while it starts a process: never kill ourselves
    try:
        parent = psutil.Process(pid)
        procs = [*parent.children(recursive=True), parent]
    except psutil.Error:
        return
    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)
