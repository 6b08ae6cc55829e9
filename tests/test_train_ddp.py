"""Training under torchrun (unet_core.training.distributed): two gloo processes on the CPU train
the weights one process trains on the same global batch, a kill -9 of the whole job followed by
``--resume`` replays exactly, also on another number of processes; the torchrun environment is
checked, the batch shared evenly and each tile's dropout mask the one-process one.

Tiny runs (width 4, 36 px tiles, batch 2, 72 px synthetic images). Every process a test starts
is killed with its children at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from unet_core.checkpoint import read_checkpoint
from unet_core.config import TrainConfig, TrainError
from unet_core.runlog import STOP_FILE, read_log
from unet_core.studio.processes import kill_tree
from unet_core.training.data import StepTiles, TrainImage
from unet_core.training.distributed import ShardDropout2d, World, detect_world

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
STEPS = 24
# lr 0.001: at the default 0.01 these tiny nets train chaotically, and the float sums that two
# processes add up in another order (1e-8 after a step) grow past 1e-6 within a few steps. fp32
# (--amp none): in bf16, which --amp auto picks on a CPU that has it, each process's half of the
# batch rounds apart from the whole batch's (1e-4 in the loss after one step).
ARGS = ["--data", "synthetic", "--amp", "none", "--width", "4", "--tile", "36", "--batch", "2", "--steps", str(STEPS),
        "--synth-n", "4", "--synth-size", "72", "--lr", "0.001", "--checkpoint-every", "2", "--val-every", "0",
        "--no-export", "--workers", "0", "--threads", "1", "--seed", "5", "--quiet"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL the process, if it still runs, and every process under it (torchrun starts each
    worker in a session of its own, so a process group kill would miss them): the app's own
    :func:`~unet_core.studio.processes.kill_tree`."""
    if proc.poll() is None:  # a launcher that ended has waited for its workers; its pid may be reused
        kill_tree(proc.pid)
    proc.wait()


def _train(out: Path, *args: str, processes: int = 1, timeout: float = 300) -> str:
    """Run ``train --out out ARGS args`` in ``processes`` processes to its end; its stdout."""
    launcher = TORCHRUN[:-1] + [str(processes)] if processes > 1 else [sys.executable]
    proc = subprocess.Popen([*launcher, "-m", "unet_core", "train", "--out", str(out), *args], cwd=REPO_ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    finally:
        _kill_job(proc)
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_log(run / "log.jsonl") if "loss" in r}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "last.pt")["model"]  # weights_only=True


def _assert_same_run(got: Path, expected: Path, what: str = "") -> None:
    """The same losses step by step and the same final weights, to 1e-6."""
    a, b = _losses(got), _losses(expected)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1)), what
    for s in a:
        assert abs(a[s] - b[s]) <= 1e-6, (what, s, a[s], b[s])
    wa, wb = _weights(got), _weights(expected)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=1e-6), (what, k, (wa[k] - wb[k]).abs().max().item())


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same run in one process and, uninterrupted, in two."""
    root = tmp_path_factory.mktemp("ddp")
    _train(root / "one", *ARGS)
    stdout = _train(root / "two", *ARGS, processes=2)
    assert json.loads(stdout)["step"] == STEPS  # one summary: the other process reports nothing
    return {"one": root / "one", "two": root / "two"}


# --------------------------------------------------------------------------- the parts


def test_the_torchrun_environment_is_read_and_a_half_set_one_refused() -> None:
    assert detect_world({}) == World() and World().is_main and not World().distributed
    full = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "node0",
            "MASTER_PORT": "29500"}
    world = detect_world(full)
    assert world == World(rank=3, size=4, local_rank=1, local_size=2) and world.distributed and not world.is_main
    assert detect_world({**full, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}).distributed is False
    with pytest.raises(TrainError, match="LOCAL_RANK is set but not RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT: "
                                         "start a multi-process training with torchrun"):
        detect_world({"LOCAL_RANK": "0"})
    half = {k: v for k, v in full.items() if k != "MASTER_PORT"}
    with pytest.raises(TrainError, match="set but not MASTER_PORT"):
        detect_world(half)
    with pytest.raises(TrainError, match="RANK='x' is not a whole number"):
        detect_world({**full, "RANK": "x"})
    with pytest.raises(TrainError, match="do not fit together"):
        detect_world({**full, "RANK": "4"})
    with pytest.raises(TrainError, match="do not fit together"):
        detect_world({**full, "LOCAL_RANK": "2"})


def test_each_process_gets_its_share_of_the_tiles_and_the_batch_must_divide() -> None:
    rng = np.random.default_rng(0)
    img = TrainImage("a", rng.random((60, 70, 1), dtype=np.float32), (rng.random((60, 70)) > 0.5).astype(np.uint8),
                     np.ones((60, 70), np.float32))
    cfg = TrainConfig(data="x", tile=36, batch=6)
    whole = StepTiles([[img]], [1.0], cfg)[7]
    shares = [StepTiles([[img]], [1.0], cfg, rank, 3)[7] for rank in range(3)]
    for key in ("x", "y", "w"):
        for rank, share in enumerate(shares):
            assert torch.equal(share[key], whole[key][rank::3]), (key, rank)  # tiles rank, rank + 3
    cfg.check_processes(3)
    with pytest.raises(TrainError, match="a batch of 6 tiles cannot be shared evenly by 4 processes: use a --batch "
                                         "that is a multiple of 4"):
        cfg.check_processes(4)


def test_each_tile_gets_its_one_process_dropout_mask() -> None:
    x = torch.randn(6, 8, 5, 5)
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(11)
        whole = torch.nn.functional.dropout2d(x.to(dtype), 0.5, training=True)
        for rank in range(3):
            torch.manual_seed(11)  # as the trainer seeds every process before the step's forward pass
            share = ShardDropout2d(0.5, rank, 3)(x[rank::3].to(dtype))
            assert torch.equal(share, whole[rank::3]), (dtype, rank)
    assert torch.equal(ShardDropout2d(0.5, 0, 3).eval()(x), x)


# --------------------------------------------------------------------------- real runs


def test_two_processes_train_the_weights_of_one(runs: dict[str, Path]) -> None:
    _assert_same_run(runs["two"], runs["one"], "2 processes vs 1")
    rows = read_log(runs["two"] / "log.jsonl")
    starts = [r for r in rows if r.get("event") == "start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2  # only the first process writes the log
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, STEPS + 1))
    assert read_checkpoint(runs["two"] / "last.pt")["world_size"] == 2
    assert read_log(runs["one"] / "log.jsonl")[0]["world_size"] == 1


def test_a_killed_two_process_job_resumes_exactly_on_two_or_one(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "killed"
    # The kill moment varies from run to run but is reproducible: the seed is in the failure message.
    seed = int(os.environ.get("UNET_STUDIO_KILL_SEED") or time.time_ns() % 10**6)
    rng = random.Random(seed)
    kill_after = rng.randint(3, STEPS - 6)  # past the first checkpoint (every 2 steps)
    # One data-loader worker per process: they are killed with the job too.
    args = [*ARGS[:ARGS.index("--workers") + 1], "1", *ARGS[ARGS.index("--workers") + 2:]]
    proc = subprocess.Popen([*TORCHRUN, "-m", "unet_core", "train", "--out", str(run), *args], cwd=REPO_ROOT,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "log.jsonl").exists() and len(_losses(run)) >= kill_after:
                time.sleep(rng.uniform(0.0, 0.05))
                break
            time.sleep(0.002)
    finally:
        _kill_job(proc)  # kill -9 of the launcher, both trainers and their workers
    killed_at = len(_losses(run))
    assert killed_at < STEPS, f"the run finished before it could be killed (UNET_STUDIO_KILL_SEED={seed})"
    assert read_checkpoint(run / "last.pt")["step"] >= 2

    # The same run folder twice: resumed on two processes and (the world size changed) on one.
    on_one = tmp_path / "on-one"
    shutil.copytree(run, on_one)
    config = json.loads((on_one / "config.json").read_text())
    (on_one / "config.json").write_text(json.dumps({**config, "out": str(on_one)}))

    _train(run, "--resume", "--quiet", processes=2)
    _assert_same_run(run, runs["two"], f"resumed on 2 after step {killed_at} (UNET_STUDIO_KILL_SEED={seed})")
    assert not list(run.glob(".*.tmp"))

    _train(on_one, "--resume", "--quiet")
    _assert_same_run(on_one, runs["one"], f"resumed on 1 after step {killed_at} (UNET_STUDIO_KILL_SEED={seed})")
    resumed = [r for r in read_log(on_one / "log.jsonl") if r.get("event") == "resume"]
    assert resumed[-1]["world_size"] == 1 and resumed[-1]["world_size_before"] == 2


@pytest.mark.parametrize("how", ["sigterm to torchrun", "stop file"])
def test_a_stop_request_ends_every_process_after_the_same_step_with_its_checkpoint(tmp_path: Path,
                                                                                   how: str) -> None:
    """The app's Stop: the stop request file (watched by the first process) or a SIGTERM to the
    launcher (torchrun passes it on to each process's group, data-loader workers included)."""
    run = tmp_path / "stopped"
    args = [*ARGS[:ARGS.index("--steps") + 1], "3000", *ARGS[ARGS.index("--steps") + 2:]]
    args = [*args[:args.index("--workers") + 1], "1", *args[args.index("--workers") + 2:]]
    proc = subprocess.Popen([*TORCHRUN, "-m", "unet_core", "train", "--out", str(run), *args], cwd=REPO_ROOT,
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not ((run / "log.jsonl").exists() and len(_losses(run)) >= 5):
            time.sleep(0.01)
        if how == "stop file":
            (run / STOP_FILE).write_text("stop\n")
        else:
            proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        _kill_job(proc)
    if how == "stop file":  # (torchrun itself ends with an error when it was signalled)
        assert proc.returncode == 0, stderr[-3000:]
    assert "internal error" not in stderr and "DataLoader worker" not in stderr, stderr[-3000:]  # no trainer crashed
    logged = max(_losses(run))
    assert 5 <= logged < 3000
    assert read_checkpoint(run / "last.pt")["step"] == logged
    assert read_log(run / "log.jsonl")[-1] == {"event": "stopped", "step": logged}
    assert not (run / STOP_FILE).exists()
