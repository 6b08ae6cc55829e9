"""Training runs as background processes: start, stop, resume, finish, rename and delete them.

The app's Train page starts ``python -m unet_core train ...`` with :func:`start_run`; the process
is detached (:func:`~unet_core.studio.processes.detached`), so it outlives page reruns, browser
reloads and even the app server. Everything the page shows is read back from the run folder
(:mod:`unet_core.studio.runs`), so a reload (or another browser) picks a run up from disk:

``runs/NAME/``
    The trainer's files (``config.json``, ``log.jsonl``, ``last.pt``, ``best.pt``, ``model.onnx``,
    ``model.md``; see :mod:`unet_core.training`), plus two written here: ``console.log`` (the
    process's stdout and stderr) and ``job.json`` (how and when it was started, its process id and
    create time, whether a stop was asked for, and its exit status when this server saw it end).
    ``config.json`` is written here first, before the trainer starts (``train --config``), so that
    a run killed at any moment resumes with its settings.

``runs/.lock``
    One training at a time on the machine (:mod:`unet_core.studio.runlock`).

On a computer with several GPUs (:func:`gpu_count`) a run may train on N of them: ``python -m
torch.distributed.run --standalone --nproc_per_node N -m unet_core train ...``, one process per
GPU, each step's tiles shared among them (:mod:`unet_core.training.distributed`). torchrun passes
Stop's SIGTERM on to every process; the first one writes the run folder as a single process does.

Stopping writes the stop request (:data:`~unet_core.runlog.STOP_FILE`) that the trainer
checks after every step, and on POSIX also sends SIGTERM; the trainer finishes its step, saves and
shuts its data-loader workers down. Only if it does not end in time are it and its workers killed.
The trainer writes ``last.pt`` atomically every ``checkpoint_every`` steps and when stopped, so a
run resumes from its last checkpoint (``--resume``) and replays the steps after it exactly.

Nothing here imports torch: the app server stays light, the trainer does the heavy work.
"""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..config import TrainConfig, TrainError, config_from_settings, init_recipe, resume_args
from ..metadata import UNetConfig
from ..paths import runs_dir
from ..runlog import STOP_FILE
from ..workload import RunEstimate, estimate_run, train_step_flops
from .processes import ask_to_stop, detached, kill_tree, pid_alive, process_started, training_processes
from .runlock import JobError, LockInfo, acquire_lock, lock_path, read_lock, release_lock, write_lock
from .runs import CONSOLE_NAME, JOB_NAME, RunInfo, load_config, read_job, run_folder, train_speeds

log = logging.getLogger(__name__)

#: The folder the trainer runs in (and finds the package from).
REPO_ROOT = Path(__file__).resolve().parents[2]

#: Run names: what a folder name may safely be on every system.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
#: Training FLOP/s assumed (fp32) until a run on this computer has measured its own: a 2-core Zen 4
#: CPU trains the paper's net at about 64 GFLOP/s (14 s a step), a mid-range GPU at about 10 TFLOP/s.
TYPICAL_SPEED = {"cpu": 60e9, "cuda": 10e12}
#: A run estimated to take longer than this (seconds) starts only once the user has confirmed it.
LONG_RUN_S = 15 * 60
#: How a run on several GPUs is started: torchrun on this computer, followed by the number of processes.
TORCHRUN = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node")


# --------------------------------------------------------------------------- starting and stopping


def estimate_new_run(options: dict[str, Any], earlier: list[RunInfo], gpu: bool,
                     init_width: int | None = None) -> RunEstimate:
    """About how long a new run with the page's ``options`` (width, tile, steps, border_width)
    takes here: at the speed earlier runs on this device reached, else at :data:`TYPICAL_SPEED`
    (``basis`` says which). ``init_width``: the width of the model a fine-tuning starts from."""
    device = "cuda" if gpu else "cpu"
    unet = UNetConfig(width=int(options.get("width") or init_width or 64),
                      n_classes=3 if options.get("border_width") else 2)
    tile, steps = int(options["tile"]), int(options["steps"])
    found = estimate_run(unet, tile, steps, 1, train_speeds(earlier, device))
    if found is not None:
        return found
    step = train_step_flops(unet, tile) / TYPICAL_SPEED[device]
    kind = "computer with a GPU" if gpu else "computer without a GPU"
    return RunEstimate(step * steps, step, f"a typical {kind}; the first run here measures this one")


@functools.cache
def gpu_count() -> int:
    """How many GPUs the NVIDIA driver lists (``nvidia-smi -L``; 0 without a driver), found
    without importing torch."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    if listed.returncode:
        return 0
    return sum(line.startswith("GPU ") for line in listed.stdout.splitlines())


def train_command(python: str, folder: Path, args: list[str], processes: int = 1) -> list[str]:
    """The trainer's command line: ``python -m unet_core train --out FOLDER ARGS``, under torchrun
    (one process per GPU) when ``processes`` > 1."""
    launcher = [python, *TORCHRUN, str(processes)] if processes > 1 else [python]
    return [*launcher, "-m", "unet_core", "train", "--out", str(folder.resolve()), *args]


def _processes(folder: Path, resume: bool, processes: int | None) -> int:
    """How many trainer processes a run starts with: ``processes`` (at most one per GPU), by default
    1 for a new run and a resumed run's own number while this computer has its GPUs (a run
    may resume on another number: every step trains on the same tiles)."""
    if processes is None:
        recorded = int(read_job(folder).get("processes") or 1) if resume else 1
        return recorded if recorded == 1 or recorded <= gpu_count() else 1
    if processes < 1 or (processes > 1 and processes > gpu_count()):
        raise JobError(f"a run on {processes} processes needs one GPU for each; this computer has {gpu_count()}")
    return processes


#: Processes started by this server: pid -> Popen (so they are reaped and polled).
_PROCS: dict[int, subprocess.Popen] = {}
_JOB_LOCK = threading.Lock()


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
        # Fine-tuning continues the model's recipe where the page does not say otherwise.
        cfg = config_from_settings({**options, "data": data, "out": str(folder.resolve())},
                                   init_recipe(options.get("init")))
    except TrainError as exc:
        raise JobError(str(exc)) from None
    if cfg.init and not Path(cfg.init).is_file():
        raise JobError(f"the model to start from, {cfg.init}, is not there any more; choose another one")
    return cfg


def training_data(source: Any) -> tuple[str, dict[str, Any]]:
    """``--data`` and the synthetic options for a :class:`~unet_core.studio.browse.DataSource`."""
    if source.kind == "synthetic":
        return "synthetic", {"synth_n": source.n, "synth_seed": source.seed, "synth_mode": source.mode,
                             "synth_size": source.size}
    return str(Path(source.path).resolve()), {}


def _update_job(folder: Path, **changes: Any) -> None:
    with _JOB_LOCK:
        job = read_job(folder)
        job.update(changes)
        write_json(folder / JOB_NAME, job)


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
              python: str | None = None, processes: int | None = None) -> LockInfo:
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
        root: the runs folder (default :func:`~unet_core.paths.runs_dir`).
        python: the interpreter (default: this one).
        processes: trainer processes, one per GPU (torchrun), that share each step's tiles; a new
            run's batch is then one tile per process unless ``options`` give one. Default: 1 for
            a new run, a resumed run's own number while this computer has that many GPUs.

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
    processes = _processes(folder, resume, processes)
    options = dict(options or {})
    if processes > 1 and options.get("batch") is None:
        options["batch"] = processes
    args, cfg = _train_args(name, folder, data, options, resume, finish)
    if processes > 1:
        try:
            (cfg or TrainConfig.load(folder / "config.json")).check_processes(processes)
        except TrainError as exc:
            raise JobError(str(exc)) from None
    command = train_command(python or sys.executable, folder, args, processes)
    held = acquire_lock(name, os.getpid(), root)  # held by this server until the process exists
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if cfg is not None:
            write_json(folder / "config.json", cfg.to_dict())
        proc = _spawn(command, folder, resume)
    except OSError as exc:
        release_lock(root, held.pid)
        raise JobError(f"the training process could not be started ({exc.strerror or exc}); check that "
                       f"{python or sys.executable} exists and that the folder {folder} is writable") from exc
    except BaseException:
        release_lock(root, held.pid)
        raise
    info = LockInfo(name, proc.pid, time.time(), process_started(proc.pid))
    write_lock(lock_path(root), info, exclusive=False)
    _record_start(proc, info, folder, command, resume, processes)
    threading.Thread(target=_reap, args=(proc, folder, root), daemon=True, name=f"reap-{name}").start()
    return info


def _record_start(proc: subprocess.Popen, info: LockInfo, folder: Path, command: list[str], resume: bool,
                  processes: int) -> None:
    """``job.json`` of a started process: how it was started, so that the page can follow, stop
    and resume it (a resumed run keeps its earlier record)."""
    _PROCS[proc.pid] = proc
    job = read_job(folder) if resume else {}
    job.update({"pid": proc.pid, "started_at": info.started, "command": command[1:],
                "started": info.time, "resumed": resume, "processes": processes, "stop_requested": None,
                "returncode": None, "ended": None})
    job.setdefault("created", info.time)
    with _JOB_LOCK:
        write_json(folder / JOB_NAME, job)


def _train_args(name: str, folder: Path, data: str | None, options: dict[str, Any], resume: bool,
                finish: bool) -> tuple[list[str], TrainConfig | None]:
    """The trainer's options after ``--out`` and, for a new run, its checked config."""
    if resume:
        if not (folder / "config.json").is_file():
            raise JobError(f"the run {name} has no saved settings (config.json) to resume from; start a new run")
        return (["--finish"] if finish else ["--resume", *resume_args(options)]), None
    if not data:
        raise JobError("choose the images to train on (synthetic or a data folder)")
    if folder.exists() and any(folder.iterdir()):
        raise JobError(f"a run called {name} exists already: choose another name, or resume it")
    # The settings go to the trainer as its config.json: written before it starts, so a run
    # killed at any moment resumes with them.
    return ["--config", str(folder.resolve() / "config.json")], new_run_config(folder, data, dict(options))


def _spawn(command: list[str], folder: Path, resume: bool) -> subprocess.Popen:
    """Start the trainer detached, its output appended to the run's console log."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    with open(folder / CONSOLE_NAME, "a") as console:
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        console.write(f"# {stamp} {'resumed' if resume else 'started'}: {' '.join(command[1:])}\n")
        console.flush()
        return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=console,
                                stderr=subprocess.STDOUT, **detached())


def resume_run(name: str, options: dict[str, Any] | None = None, root: str | Path | None = None,
               processes: int | None = None) -> LockInfo:
    """Continue a stopped or crashed run from its last checkpoint (``--resume``), by default on
    as many processes as it ran on (see :func:`start_run`)."""
    return start_run(name, options=options, resume=True, root=root, processes=processes)


def finish_run(name: str, root: str | Path | None = None) -> LockInfo:
    """Turn a stopped (or crashed) run into a model: export its last checkpoint in the background
    (``train --finish``: the images are prepared again for the card, no step is trained)."""
    return start_run(name, finish=True, root=root, processes=1)


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
    config = load_config(target)
    if config:
        if config.get("name") == name:  # the default model name is the run's name
            config["name"] = new_name
        config["out"] = str(target)
        write_json(target / "config.json", config)
    log.info("renamed the run %s to %s", name, new_name)
    return new_name


def _run_pid(name: str, root: Path) -> tuple[int, float | None] | None:
    """The live process of run ``name`` that this app started: (pid, create time), or None."""
    held = read_lock(root)
    if held is not None and held.run == name and held.pid:
        return held.pid, held.started
    job = read_job(run_folder(name, root))
    pid, started = job.get("pid"), job.get("started_at")
    if isinstance(pid, int) and pid_alive(pid, started):
        return pid, started
    return None


def stop_run(name: str, root: str | Path | None = None, timeout: float = 60.0) -> bool:
    """Stop run ``name``: a stop request to the trainer, a kill of it and its workers after
    ``timeout`` s.

    The trainer answers by finishing its step, saving its checkpoint and shutting down its data
    workers, so nothing is lost; only the trainer is told (a worker killed under a running
    DataLoader would crash it instead).

    Only a process this app started for that run is stopped (its pid and create time are checked).
    Returns True when a process was stopped, False when the run was not running.
    """
    root = Path(root or runs_dir())
    found = _run_pid(name, root)
    if found is None:
        if name in training_processes(root):
            raise JobError(f"{name} was started from the command line; stop it there (Ctrl+C) or end the "
                           f"process {training_processes(root)[name]}")
        return False
    pid, started = found
    if pid == os.getpid():
        return False  # the lock names this server for the moment it takes to start the process
    folder = run_folder(name, root)
    _update_job(folder, stop_requested=time.time())
    (folder / STOP_FILE).write_text(f"{time.time()}\n")
    ask_to_stop(pid)
    if not _ended(pid, started, timeout):
        kill_tree(pid)
        _ended(pid, started, 5)
    release_lock(root, pid)
    return True


def _ended(pid: int, started: float | None, timeout: float) -> bool:
    """Wait up to ``timeout`` s for the process to end; whether it did."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid, started) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not pid_alive(pid, started)


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



