"""Training runs as background processes: start, stop, resume, one at a time, and their progress.

The app's Train page starts ``python -m unet_core train ...`` with :func:`start_run`; the process
lives in its own session (``start_new_session=True``), so it outlives page reruns, browser reloads
and even the app server. Everything the page shows is read back from the run folder, so a reload
(or another browser) picks a run up from disk:

``runs/NAME/``
    The trainer's files (``config.json``, ``log.jsonl``, ``last.pt``, ``best.pt``, ``model.onnx``,
    ``model.md``; see :mod:`unet_core.training`), plus two written here: ``console.log`` (the
    process's stdout and stderr) and ``job.json`` (how and when it was started, its process id,
    whether a stop was asked for, and its exit status when this server saw it end).

``runs/.lock``
    One training at a time on the machine: ``{"pid", "run", "start_ticks", "time"}`` of the
    process that holds it, created atomically (a hard link, which fails when the file exists).
    A lock whose process is gone (or whose pid now belongs to another process) is stale and is
    removed by the next reader. Training processes started from the command line into the same
    runs folder hold no lock but are found through ``/proc`` and count as busy too.

Stopping sends SIGTERM to the trainer, which finishes its step, saves and shuts its data-loader
workers down (SIGKILL to the whole process group only if it does not end in time). The trainer writes ``last.pt`` atomically every ``checkpoint_every`` steps and when stopped, so a run resumes
from its last checkpoint (``--resume``) and replays the steps after it exactly.

Nothing here imports torch: the app server stays light, the trainer does the heavy work.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrainConfig, TrainError, config_from_settings, resume_args
from .errors import UserError
from .metrics import LOWER_IS_BETTER, PRIMARY_METRIC
from .registry import RUN_MODEL_FILE, runs_dir
from .runlog import LOG_NAME, parse_log_lines

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCK_NAME = ".lock"
CONSOLE_NAME = "console.log"
JOB_NAME = "job.json"

#: States of a run (see :func:`run_info`).
STARTING, RUNNING, FINISHED, STOPPED, CRASHED, UNFINISHED = (
    "starting", "running", "finished", "stopped", "crashed", "unfinished")
LIVE_STATES = (STARTING, RUNNING)

#: Run names: what a folder name may safely be on every system.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

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


# --------------------------------------------------------------------------- processes


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (index 0 = state), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; Linux), to tell a reused pid apart."""
    fields = _proc_stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def pid_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Whether ``pid`` is a running process (not a zombie) and, when given, the one started at
    ``start_ticks``."""
    if pid <= 0:
        return False
    proc = _PROCS.get(pid)
    if proc is not None and proc.poll() is not None:  # ours, and it ended: reaped now
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields is None:
        return not Path("/proc/self/stat").exists()  # no /proc on this system: trust os.kill
    if fields[0] in ("Z", "X"):
        return False
    if start_ticks is not None:
        try:
            return int(fields[19]) == start_ticks
        except (IndexError, ValueError):
            return True
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def _out_of(argv: Sequence[str], cwd: Path) -> Path | None:
    """The run folder of a ``unet_core train`` command line, or None for other commands."""
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
            return (path if path.is_absolute() else cwd / path).resolve()
    return None


def training_processes(root: str | Path | None = None) -> dict[str, int]:
    """Training processes writing into the runs folder ``root``: run name -> lowest pid.

    Found through ``/proc`` (Linux), so runs started from the command line are seen too; the
    data-loader workers share their trainer's command line and are folded into it.
    """
    root = Path(root or runs_dir()).resolve()
    found: dict[str, int] = {}
    try:
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        argv = _cmdline(pid)
        if "unet_core" not in argv:
            continue
        try:
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        out = _out_of(argv, cwd)
        if out is None or out.parent != root or not pid_alive(pid):
            continue
        found[out.name] = min(pid, found.get(out.name, pid))
    return found


# --------------------------------------------------------------------------- the lock


@dataclass(frozen=True)
class LockInfo:
    """Who holds the machine: the run, its process and when it started."""

    run: str
    pid: int
    time: float = 0.0
    start_ticks: int | None = None
    external: bool = False  # a command-line run found through /proc, holding no lock file

    @property
    def alive(self) -> bool:
        return pid_alive(self.pid, self.start_ticks)


def lock_path(root: str | Path | None = None) -> Path:
    return Path(root or runs_dir()) / LOCK_NAME


def _read_lock_file(path: Path) -> LockInfo | None | bool:
    """The lock's content; None when there is no lock, False when it cannot be parsed."""
    try:
        d = json.loads(path.read_text())
        return LockInfo(str(d["run"]), int(d["pid"]), float(d.get("time", 0.0)), d.get("start_ticks"))
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
    for run, pid in sorted(training_processes(root).items()):
        return LockInfo(run, pid, external=True)
    return None


def _write_lock_content(path: Path, info: LockInfo, exclusive: bool) -> None:
    tmp = path.with_name(f"{LOCK_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps({"run": info.run, "pid": info.pid, "time": info.time,
                               "start_ticks": info.start_ticks}))
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
    info = LockInfo(run, pid, time.time(), process_start_ticks(pid))
    with _ACQUIRE:  # the sessions of one server take turns; other processes are kept out by the link
        for _ in range(3):
            holder = busy(root)
            if holder is not None:
                raise RunBusy(holder)
            try:
                _write_lock_content(path, info, exclusive=True)
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


# --------------------------------------------------------------------------- starting and stopping

#: Processes started by this server: pid -> Popen (so they are reaped and polled).
_PROCS: dict[int, subprocess.Popen] = {}
_JOB_LOCK = threading.Lock()


def run_folder(name: str, root: str | Path | None = None) -> Path:
    return Path(root or runs_dir()) / name


def check_name(name: str) -> str:
    """The run name, stripped; raises JobError when it cannot be a folder name."""
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise JobError(f"“{name}” cannot be a run name: use letters, digits, '-', '_' or '.' (at most 64, "
                       "starting with a letter or digit), e.g. unet-nuclei-2")
    return name


def suggest_name(base: str, root: str | Path | None = None, when: _dt.datetime | None = None) -> str:
    """A free run name such as ``unet-dsb2018-0314`` (base cleaned up, then month-day, then -2, -3…)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-._")[:40] or "run"
    stem = f"unet-{stem}-{(when or _dt.datetime.now()):%m%d}"
    root = Path(root or runs_dir())
    name, n = stem, 1
    while (root / name).exists():
        n += 1
        name = f"{stem}-{n}"
    return name


def new_run_config(folder: Path, data: str, options: dict[str, Any]) -> TrainConfig:
    """The checked config of a new run in ``folder`` from the page's settings (field names and
    :data:`~unet_core.config.SHORTHANDS`), refused with a message saying what to change."""
    try:
        cfg = config_from_settings({**options, "data": data, "out": str(folder.resolve())})
    except TrainError as exc:
        raise JobError(str(exc)) from None
    if cfg.init and not Path(cfg.init).is_file():
        raise JobError(f"the model to start from, {cfg.init}, is not there any more; choose another one")
    return cfg


def training_data(source: Any) -> tuple[str, dict[str, Any]]:
    """``--data`` and the synthetic options for a :class:`~unet_core.browse.DataSource`."""
    if source.kind == "synthetic":
        return "synthetic", {"synth_n": source.n, "synth_seed": source.seed, "synth_mode": source.mode,
                             "synth_size": source.size}
    return str(Path(source.path).resolve()), {}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def read_job(folder: Path) -> dict[str, Any]:
    """``job.json`` of a run folder ({} when the run was not started by the app)."""
    try:
        d = json.loads((folder / JOB_NAME).read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _update_job(folder: Path, **changes: Any) -> None:
    with _JOB_LOCK:
        job = read_job(folder)
        job.update(changes)
        _write_json(folder / JOB_NAME, job)


def _reap(proc: subprocess.Popen, folder: Path, root: Path) -> None:
    """Wait for the process (no zombie), record its exit status, free the lock."""
    code = proc.wait()
    _PROCS.pop(proc.pid, None)
    try:
        if read_job(folder).get("pid") == proc.pid:
            _update_job(folder, returncode=code, ended=time.time())
    except OSError:
        pass
    release_lock(root, proc.pid)


def start_run(name: str, data: str | None = None, options: dict[str, Any] | None = None, *,
              resume: bool = False, finish: bool = False, root: str | Path | None = None,
              python: str | None = None) -> LockInfo:
    """Start ``python -m unet_core train`` for the run ``name`` in the background.

    Args:
        name: the run (folder ``root/name``).
        data: a data set folder or ``"synthetic"`` (new runs; ignored when resuming).
        options: training settings by name (TrainConfig fields such as ``width``, ``tile``,
            ``optimizer``, and :data:`~unet_core.config.SHORTHANDS` such as ``augment``); when
            resuming only those that may change (:attr:`~unet_core.config.Setting.resume`) are
            passed on.
        resume: continue the run from its ``last.pt`` instead of starting a new one.
        finish: (implies ``resume``) end the run at its last checkpoint and export its model.
        root: the runs folder (default :func:`~unet_core.registry.runs_dir`).
        python: the interpreter (default: this one).

    Returns:
        The lock now held by the new process.

    Raises:
        RunBusy: another training is running (the message names it).
        JobError: bad name or settings, a folder in the way, or the process could not start.
    """
    root = Path(root or runs_dir())
    name = check_name(name)
    folder = run_folder(name, root)
    resume = resume or finish
    command = [python or sys.executable, "-m", "unet_core", "train", "--out", str(folder.resolve())]
    if resume:
        if not (folder / "config.json").is_file():
            raise JobError(f"the run {name} has no saved settings (config.json) to resume from; start a new run")
        command += ["--finish"] if finish else ["--resume", *resume_args(options or {})]
        cfg = None
    else:
        if not data:
            raise JobError("choose the images to train on (synthetic or a data folder)")
        if folder.exists() and any(folder.iterdir()):
            raise JobError(f"a run called {name} exists already: choose another name, or resume it")
        cfg = new_run_config(folder, data, dict(options or {}))
        # The settings go to the trainer as its config.json: written before it starts, so a run
        # killed at any moment resumes with them.
        command += ["--config", str(folder.resolve() / "config.json")]

    held = acquire_lock(name, os.getpid(), root)  # held by this server until the process exists
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if cfg is not None:
            _write_json(folder / "config.json", cfg.to_dict())
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
        with open(folder / CONSOLE_NAME, "a") as console:
            stamp = _dt.datetime.now().isoformat(timespec="seconds")
            console.write(f"# {stamp} {'resumed' if resume else 'started'}: {' '.join(command[1:])}\n")
            console.flush()
            proc = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=console,
                                    stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        release_lock(root, held.pid)
        raise JobError(f"the training process could not be started ({exc.strerror or exc}); check that "
                       f"{python or sys.executable} exists and that the folder {folder} is writable") from exc
    except BaseException:
        release_lock(root, held.pid)
        raise
    info = LockInfo(name, proc.pid, time.time(), process_start_ticks(proc.pid))
    _write_lock_content(lock_path(root), info, exclusive=False)
    _PROCS[proc.pid] = proc
    job = read_job(folder) if resume else {}
    job.update({"pid": proc.pid, "start_ticks": info.start_ticks, "command": command[1:],
                "started": info.time, "resumed": resume, "stop_requested": None, "returncode": None,
                "ended": None})
    job.setdefault("created", info.time)
    with _JOB_LOCK:
        _write_json(folder / JOB_NAME, job)
    threading.Thread(target=_reap, args=(proc, folder, root), daemon=True, name=f"reap-{name}").start()
    return info


def resume_run(name: str, options: dict[str, Any] | None = None, root: str | Path | None = None) -> LockInfo:
    """Continue a stopped or crashed run from its last checkpoint (``--resume``)."""
    return start_run(name, options=options, resume=True, root=root)


def finish_run(name: str, root: str | Path | None = None) -> LockInfo:
    """Turn a stopped (or crashed) run into a model: export its last checkpoint in the background
    (``train --finish``: the images are prepared again for the card, no step is trained)."""
    return start_run(name, finish=True, root=root)


def _idle_folder(name: str, root: Path) -> Path:
    """The folder of run ``name``, which must exist and not be training."""
    folder = run_folder(check_name(name), root)
    if not folder.is_dir():
        raise JobError(f"there is no run called {name}")
    if _run_pid(name, root) or name in training_processes(root):  # started here (lock, job file) or from a shell
        raise JobError(f"{name} is training now: stop it first")
    return folder


def delete_run(name: str, root: str | Path | None = None) -> None:
    """Delete run ``name``: its folder with checkpoints, log and model. Refused while it trains."""
    folder = _idle_folder(name, Path(root or runs_dir()))
    shutil.rmtree(folder)
    log.info("deleted the run %s (%s)", name, folder)


def rename_run(name: str, new_name: str, root: str | Path | None = None) -> str:
    """Rename run ``name`` (its folder, hence its model's name in the menu); returns the new name.

    The run's ``config.json`` is updated so that it resumes in its new folder. Refused while it
    trains or when the new name is taken.
    """
    root = Path(root or runs_dir())
    folder = _idle_folder(name, root)
    new_name = check_name(new_name)
    target = run_folder(new_name, root)
    if new_name != name and target.exists():
        raise JobError(f"a run called {new_name} exists already: choose another name")
    folder.rename(target)
    config = _load_config(target)
    if config:
        if config.get("name") == name:  # the default model name is the run's name
            config["name"] = new_name
        config["out"] = str(target)
        _write_json(target / "config.json", config)
    log.info("renamed the run %s to %s", name, new_name)
    return new_name


def _run_pid(name: str, root: Path) -> tuple[int, int | None] | None:
    """The live process of run ``name`` that this app started: (pid, start ticks), or None."""
    held = read_lock(root)
    if held is not None and held.run == name and held.pid:
        return held.pid, held.start_ticks
    job = read_job(run_folder(name, root))
    pid, ticks = job.get("pid"), job.get("start_ticks")
    if isinstance(pid, int) and pid_alive(pid, ticks):
        return pid, ticks
    return None


def stop_run(name: str, root: str | Path | None = None, timeout: float = 60.0) -> bool:
    """Stop run ``name``: SIGTERM to the trainer, SIGKILL to its process group after ``timeout`` s.

    The trainer answers SIGTERM by finishing its step, saving its checkpoint and shutting down its
    data workers, so nothing is lost; only the trainer is told (a worker killed under a running
    DataLoader would crash it instead).

    Only a process this app started for that run is signalled (its pid and start time are checked).
    Returns True when a process was stopped, False when the run was not running.
    """
    root = Path(root or runs_dir())
    found = _run_pid(name, root)
    if found is None:
        if name in training_processes(root):
            raise JobError(f"{name} was started from the command line; stop it there (Ctrl+C) or with "
                           f"kill {training_processes(root)[name]}")
        return False
    pid, ticks = found
    if pid == os.getpid():
        return False  # the lock names this server for the moment it takes to start the process
    _update_job(run_folder(name, root), stop_requested=time.time())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while pid_alive(pid, ticks) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid, ticks):
        _signal_group(pid, signal.SIGKILL)  # checkpoints are atomic: nothing half-written survives
        deadline = time.monotonic() + 5
        while pid_alive(pid, ticks) and time.monotonic() < deadline:
            time.sleep(0.1)
    release_lock(root, pid)
    return True


def _signal_group(pid: int, sig: int) -> None:
    """Signal the trainer and its workers: its process group, which it leads (start_new_session)."""
    if pid == os.getpid():
        return  # the lock names this server while it starts a process: never signal ourselves
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait(name: str, timeout: float, root: str | Path | None = None, poll: float = 0.2) -> bool:
    """Wait until run ``name`` is no longer running; True if it ended within ``timeout`` s."""
    root = Path(root or runs_dir())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _run_pid(name, root)
        if found is None:
            return True
        proc = _PROCS.get(found[0])
        if proc is not None:
            try:
                proc.wait(timeout=poll)
            except subprocess.TimeoutExpired:
                pass
        else:
            time.sleep(poll)
    return _run_pid(name, root) is None


# --------------------------------------------------------------------------- reading a run


class _LogCache:
    """Parsed ``log.jsonl`` files, read incrementally (only the bytes added since last time).

    A half-written last line is left for the next read; a file replaced (resume truncates the log
    with ``os.replace``) or shortened is read again from the start.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._files: dict[str, tuple[tuple[int, int], int, list[dict[str, Any]]]] = {}

    def rows(self, path: Path) -> list[dict[str, Any]]:
        key = str(path)
        try:
            st = path.stat()
        except OSError:
            with self._lock:
                self._files.pop(key, None)
            return []
        ident = (st.st_dev, st.st_ino)
        with self._lock:
            cached = self._files.get(key)
            if cached is None or cached[0] != ident or st.st_size < cached[1]:
                cached = (ident, 0, [])
            _, offset, rows = cached
            if st.st_size > offset:
                try:
                    with open(path, "rb") as fh:
                        fh.seek(offset)
                        chunk = fh.read(st.st_size - offset)
                except OSError:
                    return list(rows)
                end = chunk.rfind(b"\n") + 1
                rows = rows + parse_log_lines(chunk[:end])
                offset += end
            self._files[key] = (ident, offset, rows)
            return list(rows)


_LOGS = _LogCache()


def read_log(folder: str | Path) -> list[dict[str, Any]]:
    """The records of a run's ``log.jsonl`` (without a half-written last line)."""
    return _LOGS.rows(Path(folder) / LOG_NAME)


@dataclass
class RunInfo:
    """A training run as the Train page shows it, read from its folder.

    Attributes:
        name, folder: the run.
        state: ``"starting"`` (process up, no step yet), ``"running"``, ``"finished"`` (a ``done``
            event: the model is exported), ``"stopped"`` (stopped on request), ``"crashed"``
            (the process ended without finishing, unasked), ``"unfinished"`` (not running, not
            finished, started outside the app: stopped or crashed, nobody knows).
        step, total: the last logged step and the run's number of steps.
        steps, losses: the loss of every logged step.
        val_steps, val: the validation metrics, where validation ran.
        best: the best validation so far (``{"metric", "value", "step"}``) or None.
        elapsed: seconds of training so far; seconds_per_step: recent median; eta: seconds left
            (None when unknown).
        model: ``model.onnx`` once exported.
        pid: the running process; external: started from the command line.
        error: the trainer's last error line (crashed runs); console_tail: the last console lines.
        config: the run's ``config.json``; updated: when the log last changed (epoch seconds).
    """

    name: str
    folder: Path
    state: str
    step: int = 0
    total: int = 0
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val: list[dict[str, float | None]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    elapsed: float = 0.0
    seconds_per_step: float | None = None
    eta: float | None = None
    model: Path | None = None
    pid: int | None = None
    external: bool = False
    error: str | None = None
    console_tail: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0
    n_train: int | None = None
    n_val: int | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def has_checkpoint(self) -> bool:
        """Whether ``last.pt`` is there: resuming continues from it (else it starts again)."""
        return (self.folder / "last.pt").is_file()

    @property
    def resumable(self) -> bool:
        return self.state in (STOPPED, CRASHED, UNFINISHED) and (self.folder / "config.json").is_file()


def _console_path(folder: Path) -> Path | None:
    for path in (folder / CONSOLE_NAME, folder.parent / f"{folder.name}.out"):
        if path.is_file():
            return path
    return None


def console_tail(folder: Path, lines: int = 30, max_bytes: int = 16_384) -> str:
    """The last lines of the run's console output (``console.log``, else ``runs/NAME.out``)."""
    path = _console_path(folder)
    if path is None:
        return ""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    # A progress line redrawn with \r on a terminal: keep what was drawn last.
    kept = [line.split("\r")[-1] for line in text.replace("\r\n", "\n").split("\n")]
    while kept and not kept[-1].strip():
        kept.pop()
    if size > max_bytes and kept:
        kept = kept[1:]  # the first line was cut
    return "\n".join(kept[-lines:])


def error_line(tail: str) -> str | None:
    """The trainer's own error message (``error: ...``) or the last line of a traceback."""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    if any(line.startswith("Traceback") for line in lines):
        for line in reversed(lines):
            if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b", line):
                return line
    return None


def _load_config(folder: Path) -> dict[str, Any]:
    try:
        d = json.loads((folder / "config.json").read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _median(values: Iterable[float]) -> float | None:
    vals = sorted(v for v in values if isinstance(v, (int, float)) and math.isfinite(v))
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else 0.5 * (vals[mid - 1] + vals[mid])


def run_info(name: str, root: str | Path | None = None, *, held: LockInfo | None | bool = True,
             external: dict[str, int] | None = None) -> RunInfo:
    """Everything about run ``name`` from its folder and its process (see :class:`RunInfo`).

    ``held`` and ``external`` let :func:`list_runs` look up the lock and ``/proc`` once for all runs.
    """
    root = Path(root or runs_dir())
    folder = run_folder(name, root)
    rows = read_log(folder)
    config = _load_config(folder)
    job = read_job(folder)
    info = RunInfo(name, folder, UNFINISHED, config=config, total=int(config.get("steps") or 0))
    try:
        info.updated = max(p.stat().st_mtime for p in (folder / LOG_NAME, folder / JOB_NAME, folder)
                           if p.exists())
    except (OSError, ValueError):
        info.updated = 0.0

    last_event = None
    step_s: list[float] = []
    val_s: list[float] = []
    for row in rows:
        if "event" in row:
            last_event = row
            if row["event"] in ("start", "resume"):
                info.n_train, info.n_val = row.get("n_train", info.n_train), row.get("n_val", info.n_val)
            elif row["event"] == "done":
                info.best = row.get("best") or info.best
            continue
        if "loss" not in row:
            continue
        step = int(row.get("step", 0))
        info.steps.append(step)
        info.losses.append(float(row["loss"]))
        info.step = step
        info.elapsed = float(row.get("elapsed", info.elapsed))
        if "step_s" in row:
            step_s.append(float(row["step_s"]))
        if isinstance(row.get("val"), dict):
            info.val_steps.append(step)
            info.val.append(row["val"])
            if "val_s" in row:
                val_s.append(float(row["val_s"]))
    info.best = info.best or _best_from_log(info, config)
    model = folder / RUN_MODEL_FILE
    info.model = model if model.is_file() else None
    done = last_event is not None and last_event.get("event") == "done"

    if held is True:
        held = read_lock(root)
    if external is None:
        external = training_processes(root)
    pid = None
    if held and held.run == name and held.pid:
        pid = held.pid
    elif isinstance(job.get("pid"), int) and pid_alive(job["pid"], job.get("start_ticks")):
        pid = job["pid"]
    elif name in external:
        pid, info.external = external[name], True
    info.pid = pid

    if done:
        info.state = FINISHED  # the model is exported; a live process is only exiting
    elif pid is not None:
        preparing = not info.steps or (last_event is not None and rows[-1] is last_event)
        info.state = STARTING if preparing else RUNNING  # (after a resume: preparing the data again)
    elif job:
        started = job.get("started") or 0
        stop = job.get("stop_requested")
        info.state = STOPPED if stop and stop >= started else CRASHED
    else:
        info.state = UNFINISHED

    recent = _median(step_s[-50:])
    info.seconds_per_step = recent
    if info.live and recent is not None and info.total:
        left = max(0, info.total - info.step)
        every = int(config.get("val_every") or 0)
        n_val = 0
        if every and left:  # validations at multiples of val_every and at the last step
            n_val = info.total // every - info.step // every + (1 if info.total % every else 0)
        info.eta = left * recent + n_val * (_median(val_s[-3:]) or 0.0)
    if info.state in (CRASHED, UNFINISHED, STOPPED) or not info.live:
        info.console_tail = console_tail(folder)
        if info.state in (CRASHED, UNFINISHED):
            info.error = error_line(info.console_tail)
    return info


def _best_from_log(info: RunInfo, config: dict[str, Any]) -> dict[str, Any] | None:
    """The best validation so far, from the log lines the trainer marked ``best``."""
    rows = [(s, v) for s, v in zip(info.val_steps, info.val)]
    if not rows:
        return None
    metric = config.get("val_metric") or "auto"
    if metric == "auto":
        metric = PRIMARY_METRIC["semantic" if "warping_error" in rows[-1][1] else "instance"]
    lower = metric in LOWER_IS_BETTER
    scored = [(s, v.get(metric)) for s, v in rows if isinstance(v.get(metric), (int, float))]
    if not scored:
        return None
    step, value = (min if lower else max)(scored, key=lambda sv: sv[1])
    return {"metric": metric, "value": value, "step": step}


def list_runs(root: str | Path | None = None) -> list[RunInfo]:
    """The runs in the runs folder: running ones first, then the most recently changed."""
    root = Path(root or runs_dir())
    if not root.is_dir():
        return []
    held = read_lock(root)
    external = training_processes(root)
    runs = []
    for folder in root.iterdir():
        if folder.name.startswith(".") or not folder.is_dir():
            continue
        if not any((folder / m).exists() for m in ("config.json", LOG_NAME, JOB_NAME)):
            continue
        runs.append(run_info(folder.name, root, held=held, external=external))
    runs.sort(key=lambda r: (not r.live, -r.updated, r.name))
    return runs


def smooth(values: Sequence[float], window: int | None = None) -> list[float]:
    """A trailing moving average (window: about 4 % of the points, 5 to 200; 1 for very few points)."""
    n = len(values)
    if not n:
        return []
    window = window or (1 if n < 10 else max(5, min(200, n // 25)))
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def thin(n: int, max_points: int) -> list[int]:
    """Indexes of at most ``max_points`` of ``n`` points, evenly spread, the last one kept."""
    if n <= max_points:
        return list(range(n))
    step = n / max_points
    idx = sorted({int(i * step) for i in range(max_points)} | {n - 1})
    return idx


def duration_text(seconds: float | None) -> str:
    """``"4 h 05 min"``, ``"12 min"``, ``"40 s"``, or ``"–"``."""
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = round(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = (seconds + 30) // 60 if seconds < 3600 else seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


# --------------------------------------------------------------------------- which images a model saw


def split_for(training: dict[str, Any], source: Any, n_items: int, default_rule: Any) -> tuple[Any, bool]:
    """The split rule to evaluate a model with on a data set, and whether it is the model's own.

    When ``source`` (a :class:`~unet_core.browse.DataSource`) is the data the model was trained on
    (the same folder, or the same synthetic images: count, seed, look and size), the model's split
    rule from its metadata (``training["split_rule"]``) says which images it never saw; otherwise
    the data set's own rule ``default_rule`` is used (and every image is new to the model anyway).
    """
    from .datasets import SplitRule

    rule_dict = training.get("split_rule") if isinstance(training, dict) else None
    if not rule_dict or not trained_on(training, source):
        return default_rule, False
    try:
        return SplitRule.from_dict(rule_dict), True
    except (KeyError, TypeError, ValueError):
        return default_rule, False


def trained_on(training: dict[str, Any], source: Any) -> bool:
    """Whether a model's training record names the data of ``source``."""
    data = training.get("data") if isinstance(training, dict) else None
    if not data:
        return False
    if source.kind == "synthetic":
        if data != "synthetic":
            return False
        cfg = training.get("config") or {}
        synth = cfg.get("synth") or {}
        return (cfg.get("synth_n") == source.n and cfg.get("synth_seed") == source.seed
                and synth.get("mode", "fluorescence") == source.mode
                and synth.get("height", 512) == source.size and synth.get("width", 512) == source.size)
    if data == "synthetic" or not source.path:
        return False
    try:
        return Path(data).resolve() == Path(source.path).resolve()
    except OSError:
        return False
