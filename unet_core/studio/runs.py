"""Reading a training run back from its folder, as the Train page shows it: its state, its loss
and validation curves, the time left, its console and the error that ended it.

Everything is read from disk (``log.jsonl``, ``config.json``, ``job.json``, ``console.log``), so a
browser reload, another browser or a restarted app server picks a run up where it is.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..metadata import UNetConfig
from ..metrics import LOWER_IS_BETTER, PRIMARY_METRIC
from ..paths import runs_dir
from ..runlog import LOG_NAME, parse_log_lines
from ..workload import train_speed
from .processes import pid_alive, training_processes
from .registry import RUN_MODEL_FILE
from .runlock import LockInfo, read_lock

CONSOLE_NAME = "console.log"


JOB_NAME = "job.json"


def run_folder(name: str, root: str | Path | None = None) -> Path:
    """The folder of run ``name`` in the runs folder ``root`` (default: the app's)."""
    return Path(root or runs_dir()) / name


def read_job(folder: Path) -> dict[str, Any]:
    """``job.json`` of a run folder ({} when the run was not started by the app)."""
    try:
        d = json.loads((folder / JOB_NAME).read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}

#: States of a run (see :func:`run_info`).
STARTING, RUNNING, FINISHED, STOPPED, CRASHED, UNFINISHED = (
    "starting", "running", "finished", "stopped", "crashed", "unfinished")


LIVE_STATES = (STARTING, RUNNING)


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


def cached_log(folder: str | Path) -> list[dict[str, Any]]:
    """The records of a run folder's ``log.jsonl`` (without a half-written last line), re-read only
    where the file grew (the Train page asks every second)."""
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
        device: where it trained (``"cpu"``, ``"cuda"``; from its last start), None before it started.
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
    device: str | None = None

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / self.total) if self.total else 0.0

    @property
    def curve_metrics(self) -> list[str]:
        """The validation metrics worth a curve: the one the best model is chosen by, then overlap."""
        keys = set().union(*(v.keys() for v in self.val)) if self.val else set()
        primary = (self.best or {}).get("metric") or ("rand_error" if "warping_error" in keys else "dsb_ap")
        return [k for k in dict.fromkeys((primary, "foreground_iou", "seg")) if k in keys]

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


def load_config(folder: Path) -> dict[str, Any]:
    """The run's ``config.json`` as a dict ({} when missing or unreadable)."""
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

    ``held`` and ``external`` let :func:`list_runs` look up the lock and the processes once for all runs.
    """
    root = Path(root or runs_dir())
    folder = run_folder(name, root)
    rows = cached_log(folder)
    config = load_config(folder)
    job = read_job(folder)
    info = RunInfo(name, folder, UNFINISHED, config=config, total=int(config.get("steps") or 0))
    try:
        info.updated = max(p.stat().st_mtime for p in (folder / LOG_NAME, folder / JOB_NAME, folder)
                           if p.exists())
    except (OSError, ValueError):
        info.updated = 0.0
    last_event, step_s, val_s = _read_rows(info, rows)
    info.best = info.best or _best_from_log(info, config)
    model = folder / RUN_MODEL_FILE
    info.model = model if model.is_file() else None
    info.pid, info.external = _process_of(name, root, job, held, external)
    info.state = _state(info, rows, last_event, job)
    info.seconds_per_step = _median(step_s[-50:])
    info.eta = _eta(info, config, val_s)
    if info.state in (CRASHED, UNFINISHED, STOPPED) or not info.live:
        info.console_tail = console_tail(folder)
        if info.state in (CRASHED, UNFINISHED):
            info.error = error_line(info.console_tail)
    return info


def _read_rows(info: RunInfo, rows: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, list[float], list[float]]:
    """Fill the curves of ``info`` from the log; the last event line and the step and validation times."""
    last_event = None
    step_s: list[float] = []
    val_s: list[float] = []
    for row in rows:
        if "event" in row:
            last_event = row
            if row["event"] in ("start", "resume"):
                info.n_train, info.n_val = row.get("n_train", info.n_train), row.get("n_val", info.n_val)
                info.device = str(row.get("device") or "").split(":")[0] or info.device
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
    return last_event, step_s, val_s


def _process_of(name: str, root: Path, job: dict[str, Any], held: LockInfo | None | bool,
                external: dict[str, int] | None) -> tuple[int | None, bool]:
    """The live process of the run (the lock's, the job file's, or a command-line one) and whether
    it was started from the command line."""
    if held is True:
        held = read_lock(root)
    if held and held.run == name and held.pid:
        return held.pid, False
    if isinstance(job.get("pid"), int) and pid_alive(job["pid"], job.get("started_at")):
        return job["pid"], False
    external = training_processes(root) if external is None else external
    if name in external:
        return external[name], True
    return None, False


def _state(info: RunInfo, rows: list[dict[str, Any]], last_event: dict[str, Any] | None,
           job: dict[str, Any]) -> str:
    """The run's state (see :class:`RunInfo`)."""
    if last_event is not None and last_event.get("event") == "done":
        return FINISHED  # the model is exported; a live process is only exiting
    if info.pid is not None:
        preparing = not info.steps or (last_event is not None and rows[-1] is last_event)
        return STARTING if preparing else RUNNING  # (after a resume: preparing the data again)
    if job:
        stop = job.get("stop_requested")
        return STOPPED if stop and stop >= (job.get("started") or 0) else CRASHED
    return UNFINISHED


def _eta(info: RunInfo, config: dict[str, Any], val_s: list[float]) -> float | None:
    """Seconds left of a live run: its steps at the recent pace, and the validations still due."""
    recent = info.seconds_per_step
    if not info.live or recent is None or not info.total:
        return None
    left = max(0, info.total - info.step)
    every = int(config.get("val_every") or 0)
    n_val = 0
    if every and left:  # validations at multiples of val_every and at the last step
        n_val = info.total // every - info.step // every + (1 if info.total % every else 0)
    return left * recent + n_val * (_median(val_s[-3:]) or 0.0)


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


def train_speeds(runs: Iterable[RunInfo], device: str, amp: str = "auto") -> list[float]:
    """The training FLOP/s that earlier runs on ``device`` (``"cpu"`` or ``"cuda"``) with the
    autocast setting ``amp`` reached (default: the trainer's, ``auto``, which the Train page's runs
    use; a config from before that setting existed trained in fp32, ``none``), one per run with a
    measured step time: what a new run's time is estimated from (:func:`unet_core.workload.estimate_run`)."""
    speeds = []
    for run in runs:
        cfg = run.config
        if run.seconds_per_step is None or run.device != device or (cfg.get("amp") or "none") != amp:
            continue
        try:
            unet = UNetConfig(in_channels=int(cfg.get("in_channels", 1)), width=int(cfg["width"]),
                              depth=int(cfg.get("depth", 4)), n_classes=len(cfg.get("class_names") or [0, 1]))
            speeds.append(train_speed(unet, int(cfg["tile"]), int(cfg.get("batch", 1)), run.seconds_per_step))
        except (KeyError, TypeError, ValueError):  # a config from another version: no speed from it
            continue
    return speeds
