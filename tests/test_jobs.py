"""unet_core.studio.jobs: one training at a time (the lock, stale locks, command-line runs), real tiny runs
started in the background, their progress read back, stop (SIGTERM) and resume, crashed runs.

Every run here is tiny (width 2, 20 px tiles, 64 px synthetic images) and lives in a private runs
folder; the lock and the process scan only look at that folder, so trainings running elsewhere on the
machine are neither seen nor touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from unet_core.checkpoint import read_checkpoint
from unet_core.datasets import SplitRule
from unet_core.runlog import LOG_NAME
from unet_core.studio import jobs, processes, registry, runlock, runs, visualize
from unet_core.studio.sources import DataSource

TINY = {"width": 2, "tile": 20, "synth_n": 4, "synth_size": 64, "workers": 0, "threads": 1}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "runs"
    folder.mkdir()
    return folder


@pytest.fixture
def sleeper():
    """Start a harmless process that looks like ``python -m unet_core train --out ...`` (or not)."""
    started: list[subprocess.Popen] = []

    def start(*argv: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", *argv])
        started.append(proc)
        return proc

    yield start
    for proc in started:  # only the processes this fixture started
        proc.kill()
        proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def wait_for(predicate, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- the lock


def test_a_second_start_is_refused_and_told_who_holds_the_machine(root: Path, sleeper) -> None:
    holder = sleeper()
    runlock.acquire_lock("alpha", holder.pid, root)
    with pytest.raises(runlock.RunBusy) as refused:
        jobs.start_run("beta", "synthetic", TINY, root=root)
    assert refused.value.holder.run == "alpha" and refused.value.holder.pid == holder.pid
    assert "**alpha**" in str(refused.value) and "one training runs at a time" in str(refused.value)
    assert not (root / "beta").exists()  # nothing was started or created
    with pytest.raises(runlock.RunBusy):
        runlock.acquire_lock("gamma", os.getpid(), root)
    assert runlock.busy(root).run == "alpha"

    holder.kill()
    holder.wait()
    assert runlock.read_lock(root) is None  # its process is gone: the lock was stale, and is removed
    assert not runlock.lock_path(root).exists()
    assert runlock.acquire_lock("beta", os.getpid(), root).run == "beta"
    runlock.release_lock(root, os.getpid())
    assert not runlock.lock_path(root).exists()


def test_stale_locks_are_cleared(root: Path) -> None:
    path = runlock.lock_path(root)
    path.write_text(json.dumps({"run": "old", "pid": dead_pid(), "time": 0}))
    assert runlock.busy(root) is None and not path.exists()

    # A pid that now belongs to another process (this one) started at another time: stale too.
    started = processes.process_started(os.getpid())
    assert started is not None
    path.write_text(json.dumps({"run": "reused", "pid": os.getpid(), "started": started + 1}))
    assert runlock.read_lock(root) is None and not path.exists()
    path.write_text(json.dumps({"run": "me", "pid": os.getpid(), "started": started}))
    assert runlock.read_lock(root).run == "me"  # the same process: a live lock
    path.unlink()

    # A lock that cannot be read is excused while it is being written, not later.
    path.write_text("{half")
    assert runlock.read_lock(root).run == "(starting)"
    os.utime(path, (time.time() - 60, time.time() - 60))
    assert runlock.read_lock(root) is None and not path.exists()


@pytest.mark.slow
def test_two_sessions_racing_past_a_stale_lock_never_both_hold_it(root: Path, monkeypatch) -> None:
    import threading

    read = runlock._read_lock_file

    def slow_read(path: Path):  # widens the window between looking at the lock and acting on it
        found = read(path)
        time.sleep(0.0005)
        return found

    monkeypatch.setattr(runlock, "_read_lock_file", slow_read)
    path, dead = runlock.lock_path(root), dead_pid()
    doubles = 0
    for trial in range(1000):
        path.write_text(json.dumps({"run": "old", "pid": dead, "time": 0}))
        barrier, won = threading.Barrier(2), []

        def take(name: str, barrier: threading.Barrier = barrier, won: list = won) -> None:
            barrier.wait()
            try:
                won.append(runlock.acquire_lock(name, os.getpid(), root))
            except runlock.RunBusy:
                pass

        threads = [threading.Thread(target=take, args=(f"s{k}-{trial}",)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        doubles += len(won) != 1
        assert runlock.read_lock(root, clean=False).run == won[0].run  # the lock names the one winner
        runlock.release_lock(root)
    assert doubles == 0


def test_a_command_line_training_in_the_runs_folder_counts_as_busy(root: Path, sleeper) -> None:
    sleeper("unet_core", "train", "--out", str(root.parent / "other-runs" / "x"))  # another runs folder
    sleeper("-m", "unet_core", "predict", "--out", str(root / "x"))  # not a training
    assert runlock.busy(root) is None
    proc = sleeper("-m", "unet_core", "train", "--data", "synthetic", "--out", str(root / "cli-run"))
    wait_for(lambda: processes.training_processes(root), 10, "the process to show among the processes")
    holder = runlock.busy(root)
    assert holder.external and holder.run == "cli-run" and holder.pid == proc.pid
    with pytest.raises(runlock.RunBusy, match="started from the command line"):
        jobs.start_run("mine", "synthetic", TINY, root=root)
    with pytest.raises(runlock.JobError, match="stop it there"):  # never signalled from the app
        jobs.stop_run("cli-run", root)
    assert proc.poll() is None


# --------------------------------------------------------------------------- settings


def test_settings_become_the_trainers_config_and_bad_ones_are_refused(tmp_path: Path) -> None:
    cfg = jobs.new_run_config(tmp_path / "r", "synthetic", {"width": 16, "lr": 0.001, "augment": False,
                                                            "momentum": None, "synth_mode": "phase"})
    assert (cfg.width, cfg.lr, cfg.augment.enabled, cfg.momentum, cfg.synth) == (16, 0.001, False, 0.99,
                                                                                  {"mode": "phase"})
    assert cfg.out == str((tmp_path / "r").resolve())
    with pytest.raises(runlock.JobError, match="colour"):
        jobs.new_run_config(tmp_path / "r", "synthetic", {"colour": "red"})
    with pytest.raises(runlock.JobError, match="use 388 or 404"):
        jobs.new_run_config(tmp_path / "r", "synthetic", {"tile": 390})
    with pytest.raises(runlock.JobError, match="momentum"):
        jobs.new_run_config(tmp_path / "r", "synthetic", {"momentum": 1.5})
    with pytest.raises(runlock.JobError, match="not there any more"):
        jobs.new_run_config(tmp_path / "r", "synthetic", {"init": str(tmp_path / "gone.onnx")})
    for bad in ("", "../up", "a b", "-x", "x" * 65):
        with pytest.raises(runlock.JobError, match="cannot be a run name"):
            jobs.check_name(bad)
    assert jobs.check_name(" unet-2.b_c ") == "unet-2.b_c"
    (tmp_path / "unet-my-data-0314").mkdir()
    when = __import__("datetime").datetime(2026, 3, 14)
    assert jobs.suggest_name("my data!", tmp_path, when) == "unet-my-data-0314-2"
    assert jobs.training_data(DataSource(n=5, seed=2, mode="phase", size=64)) == (
        "synthetic", {"synth_n": 5, "synth_seed": 2, "synth_mode": "phase", "synth_size": 64})


def test_the_models_own_split_is_used_only_on_its_own_data(tmp_path: Path) -> None:
    folder = tmp_path / "cells"
    folder.mkdir()
    training = {"data": str(folder), "split_rule": {"kind": "last_n", "k": 2}}
    own, default = SplitRule("last_n", 2), SplitRule("every_kth", 5)
    assert registry.split_for(training, DataSource("folder", path=str(folder)), 10, default) == (own, True)
    assert registry.split_for(training, DataSource("folder", path=str(tmp_path)), 10, default) == (default, False)
    assert registry.split_for({}, DataSource(), 10, default) == (default, False)
    synth = {"data": "synthetic", "split_rule": {"kind": "every_kth", "k": 3},
             "config": {"synth_n": 8, "synth_seed": 0, "synth": {"height": 64, "width": 64}}}
    assert registry.split_for(synth, DataSource(n=8, size=64), 8, default)[1]
    assert not registry.split_for(synth, DataSource(n=8, size=512), 8, default)[1]  # other images
    assert not registry.split_for(synth, DataSource(n=8, seed=1, size=64), 8, default)[1]


# --------------------------------------------------------------------------- reading runs


def test_the_log_is_read_incrementally_and_a_half_written_line_waits(tmp_path: Path) -> None:
    log = tmp_path / LOG_NAME
    log.write_text('{"event": "start", "step": 0}\n{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    assert [r.get("step") for r in runs.cached_log(tmp_path)] == [0, 1]
    with open(log, "a") as fh:
        fh.write('ss": 0.4}\n')
    assert [r.get("loss") for r in runs.cached_log(tmp_path)] == [None, 0.5, 0.4]
    tmp = tmp_path / "new"
    tmp.write_text('{"step": 1, "loss": 0.9}\n')
    os.replace(tmp, log)  # what a resume does when it truncates the log
    assert runs.cached_log(tmp_path) == [{"step": 1, "loss": 0.9}]


def test_small_helpers() -> None:
    assert visualize.smooth([1.0, 3.0, 5.0], window=2) == [1.0, 2.0, 4.0]
    assert visualize.thin(10, 4)[-1] == 9 and len(visualize.thin(10, 4)) <= 5 and visualize.thin(3, 4) == [0, 1, 2]
    assert [visualize.duration_text(s) for s in (None, 40, 600, 3725)] == ["–", "40 s", "10 min", "1 h 02 min"]
    assert runs.error_line("step 1\nerror: /x: no such folder\n") == "/x: no such folder"
    assert runs.error_line("Traceback (most recent call last):\n  File x\nRuntimeError: out of memory") == \
        "RuntimeError: out of memory"
    assert runs.error_line("all fine") is None


def test_the_curves_show_the_metric_the_best_model_is_chosen_by_first() -> None:
    def info(val: list[dict[str, float | None]], best: dict | None = None) -> runs.RunInfo:
        return runs.RunInfo("r", Path("r"), runs.FINISHED, val_steps=list(range(len(val))), val=val, best=best)

    assert info([]).curve_metrics == []
    nuclei = [{"dsb_ap": 0.4, "foreground_iou": 0.8, "seg": 0.6, "pixel_error": 0.1}]
    assert info(nuclei).curve_metrics == ["dsb_ap", "foreground_iou", "seg"]
    em = [{"rand_error": 0.1, "warping_error": 0.001, "foreground_iou": 0.9}]
    assert info(em).curve_metrics == ["rand_error", "foreground_iou"]
    assert info(nuclei, {"metric": "seg", "value": 0.6, "step": 0}).curve_metrics == ["seg", "foreground_iou"]


# --------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_a_tiny_run_in_the_background_is_followed_to_its_model(root: Path) -> None:
    held = jobs.start_run("tiny", "synthetic", {**TINY, "steps": 6, "val_every": 3}, root=root)
    assert runlock.busy(root).run == "tiny" and held.pid > 0
    assert runs.run_info("tiny", root).live
    assert jobs.wait("tiny", 180, root), "the tiny run did not end"

    info = runs.run_info("tiny", root)
    assert info.state == runs.FINISHED, info.console_tail
    assert info.steps == [1, 2, 3, 4, 5, 6] and info.total == 6 and info.step == 6
    assert info.val_steps == [3, 6] and info.best["metric"] == "dsb_ap"
    assert info.n_train == 3 and info.n_val == 1 and info.elapsed > 0
    assert info.device == "cpu" and info.seconds_per_step > 0  # what the next run's estimate comes from
    assert len(runs.train_speeds([info], "cpu")) == 1 and not runs.train_speeds([info], "cuda")
    assert info.model == root / "tiny" / "model.onnx" and info.model.is_file()
    assert runs.read_job(info.folder)["returncode"] == 0
    assert "--config" in (root / "tiny" / runs.CONSOLE_NAME).read_text()  # the settings went as config.json
    assert json.loads((root / "tiny" / "config.json").read_text())["width"] == 2
    assert runlock.busy(root) is None and not runlock.lock_path(root).exists()
    assert [r.name for r in runs.list_runs(root)] == ["tiny"]
    with pytest.raises(runlock.JobError, match="exists already"):
        jobs.start_run("tiny", "synthetic", TINY, root=root)


@pytest.mark.slow
def test_stop_saves_a_checkpoint_and_resume_continues(root: Path) -> None:
    settings = {**TINY, "steps": 5000, "val_every": 0, "checkpoint_every": 5, "export": False}
    jobs.start_run("long", "synthetic", settings, root=root)
    wait_for(lambda: runs.run_info("long", root).step >= 12, 120, "12 steps")
    pid = runs.read_job(root / "long")["pid"]
    assert jobs.stop_run("long", root)
    assert not processes.pid_alive(pid) and runlock.busy(root) is None
    info = runs.run_info("long", root)
    assert info.state == runs.STOPPED and info.resumable and 12 <= info.step < 5000
    saved = read_checkpoint(root / "long" / "last.pt")
    assert saved["step"] == info.step, "Stop saves a checkpoint at the step it stopped after"
    assert not jobs.stop_run("long", root)  # not running any more

    target = saved["step"] + 8
    jobs.resume_run("long", {"steps": target, "width": 64}, root=root)  # width cannot change: dropped
    assert jobs.wait("long", 180, root), "the resumed run did not end"
    info = runs.run_info("long", root)
    assert info.state == runs.FINISHED, info.console_tail
    assert info.steps == list(range(1, target + 1)) and info.total == target
    assert "resumed:" in (root / "long" / runs.CONSOLE_NAME).read_text()
    assert json.loads((root / "long" / "config.json").read_text())["width"] == 2


@pytest.mark.slow
def test_a_run_killed_before_its_first_step_resumes_with_its_settings(root: Path) -> None:
    import signal

    held = jobs.start_run("early", "synthetic", {**TINY, "steps": 4}, root=root)
    os.killpg(held.pid, signal.SIGKILL)  # within milliseconds: the trainer is still importing torch
    wait_for(lambda: not processes.pid_alive(held.pid, held.started), 30, "the kill")
    assert json.loads((root / "early" / "config.json").read_text())["steps"] == 4  # written by the launcher
    info = runs.run_info("early", root)
    assert info.state != runs.FINISHED and info.resumable and not info.has_checkpoint
    held = jobs.finish_run("early", root)  # nothing to make a model from: the trainer says so
    assert jobs.wait("early", 120, root)
    assert "no checkpoint (last.pt) to make a model from" in runs.run_info("early", root).console_tail
    jobs.resume_run("early", root=root)  # from scratch, with the saved settings
    assert jobs.wait("early", 180, root), "the resumed run did not end"
    info = runs.run_info("early", root)
    assert info.state == runs.FINISHED and info.step == 4, info.console_tail


@pytest.mark.slow
def test_a_stopped_run_becomes_a_model_and_runs_are_renamed_and_deleted(root: Path, sleeper) -> None:
    settings = {**TINY, "steps": 5000, "val_every": 0, "checkpoint_every": 5, "export": False}
    jobs.start_run("long", "synthetic", settings, root=root)
    wait_for(lambda: runs.run_info("long", root).step >= 6, 120, "6 steps")
    with pytest.raises(runlock.JobError, match="training now"):
        jobs.delete_run("long", root)
    assert jobs.stop_run("long", root)
    stopped_at = read_checkpoint(root / "long" / "last.pt")["step"]

    jobs.finish_run("long", root)  # export off at the start: finishing exports anyway
    assert jobs.wait("long", 180, root), "the export did not end"
    info = runs.run_info("long", root)
    assert info.state == runs.FINISHED, info.console_tail
    assert info.step == info.total == stopped_at and info.model == root / "long" / "model.onnx"
    assert "--finish" in (root / "long" / runs.CONSOLE_NAME).read_text()

    assert jobs.rename_run("long", " short ", root) == "short"
    assert not (root / "long").exists() and (root / "short" / "model.onnx").is_file()
    config = json.loads((root / "short" / "config.json").read_text())
    assert config["out"] == str(root / "short") and config.get("name") in (None, "short")  # None: the folder's name
    assert [r.name for r in runs.list_runs(root)] == ["short"]
    (root / "other").mkdir()
    with pytest.raises(runlock.JobError, match="exists already"):
        jobs.rename_run("short", "other", root)
    with pytest.raises(runlock.JobError, match="cannot be a run name"):
        jobs.rename_run("short", "../escape", root)
    with pytest.raises(runlock.JobError, match="no run called"):
        jobs.delete_run("missing", root)
    sleeper("-m", "unet_core", "train", "--out", str(root / "other"))  # a command-line run in that folder
    wait_for(lambda: "other" in processes.training_processes(root), 30, "the command-line run to show")
    with pytest.raises(runlock.JobError, match="training now"):
        jobs.delete_run("other", root)
    jobs.delete_run("short", root)
    assert not (root / "short").exists() and (root / "other").is_dir()


@pytest.mark.slow
def test_a_run_that_fails_is_shown_as_crashed_with_the_trainers_message(root: Path, tmp_path: Path) -> None:
    jobs.start_run("bad", str(tmp_path / "missing"), TINY, root=root)
    assert jobs.wait("bad", 120, root)
    info = runs.run_info("bad", root)
    assert info.state == runs.CRASHED
    assert "no such folder" in info.error and "missing" in info.console_tail
    assert runlock.busy(root) is None
    # Its settings were saved before the data was opened: once the folder is there, Resume retries.
    assert info.resumable and (root / "bad" / "config.json").is_file()
    jobs.resume_run("bad", root=root)
    assert jobs.wait("bad", 120, root)
    info = runs.run_info("bad", root)
    assert info.state == runs.CRASHED and "no such folder" in info.error  # still missing


# --------------------------------------------------------------------------- several GPUs


def test_gpus_are_counted_from_the_driver_and_a_run_on_several_is_a_torchrun_command(
        root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    listing = "GPU 0: NVIDIA H100 (UUID: GPU-1)\\nGPU 1: NVIDIA H100 (UUID: GPU-2)\\n  MIG 3g.40gb Device 0: (UUID: x)\\n"
    for script, found in ((f"#!/bin/sh\nprintf '{listing}'\n", 2), ("#!/bin/sh\nexit 9\n", 0), (None, 0)):
        if script is None:
            smi.unlink()  # no driver at all
        else:
            smi.write_text(script)
            smi.chmod(0o755)
        monkeypatch.setenv("PATH", str(bin_dir))
        jobs.gpu_count.cache_clear()
        try:
            assert jobs.gpu_count() == found, script
        finally:
            jobs.gpu_count.cache_clear()

    folder = root / "r"
    assert jobs.train_command("py", folder, ["--resume"], 2) == [
        "py", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "unet_core", "train",
        "--out", str(folder.resolve()), "--resume"]
    assert jobs.train_command("py", folder, ["--resume"]) == [
        "py", "-m", "unet_core", "train", "--out", str(folder.resolve()), "--resume"]
    monkeypatch.setattr(jobs, "gpu_count", lambda: 1)
    with pytest.raises(runlock.JobError, match="a run on 2 processes needs one GPU for each; this computer has 1"):
        jobs.start_run("r", "synthetic", TINY, root=root, processes=2)
    monkeypatch.setattr(jobs, "gpu_count", lambda: 2)
    with pytest.raises(runlock.JobError, match="a batch of 3 tiles cannot be shared evenly by 2 processes"):
        jobs.start_run("r", "synthetic", {**TINY, "batch": 3}, root=root, processes=2)
    assert not folder.exists() and runlock.busy(root) is None  # nothing was started or created


@pytest.mark.slow
def test_a_run_on_two_processes_is_started_followed_and_resumed_on_as_many(root: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "gpu_count", lambda: 2)  # two "GPUs"; the run itself trains on the CPU (gloo)
    jobs.start_run("duo", "synthetic", {**TINY, "steps": 4, "val_every": 2, "device": "cpu"}, root=root,
                   processes=2)
    assert jobs.wait("duo", 180, root), "the run did not end"
    info = runs.run_info("duo", root)
    assert info.state == runs.FINISHED and info.steps == [1, 2, 3, 4] and info.model.is_file(), info.console_tail
    assert runs.read_job(info.folder)["processes"] == 2
    assert "torch.distributed.run --standalone --nproc_per_node 2" in (root / "duo" / runs.CONSOLE_NAME).read_text()
    assert json.loads((root / "duo" / "config.json").read_text())["batch"] == 2  # one tile a step per process
    assert [r["world_size"] for r in runs.cached_log(info.folder) if r.get("event") == "start"] == [2]
    assert jobs._processes(info.folder, True, None) == 2  # a resume runs on as many, while the GPUs are there
    monkeypatch.setattr(jobs, "gpu_count", lambda: 1)
    assert jobs._processes(info.folder, True, None) == 1
