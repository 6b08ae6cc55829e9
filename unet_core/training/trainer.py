"""The training loop as a :class:`Trainer` of small steps that a subclass may override
(nnU-Net style): :meth:`~Trainer.setup` (run folder, resume check, data, model, optimiser),
:meth:`~Trainer.train_step`, :meth:`~Trainer.validate`, :meth:`~Trainer.save_last`,
:meth:`~Trainer.stopped` and :meth:`~Trainer.export`. :func:`train` runs one, in one process or
as one of several under ``torchrun`` (:mod:`.distributed`: only the first process writes).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_json
from ..checkpoint import atomic_save, read_checkpoint
from ..config import TrainConfig, TrainError
from ..evaluate import EvalOptions, evaluate
from ..metrics import LOWER_IS_BETTER, PRIMARY_METRIC
from ..model import UNet
from ..runlog import LOG_NAME, STOP_FILE
from ..runtime import TorchPredictor, autocast_dtype
from .card import export_run
from .data import (
    StepTiles,
    TrainData,
    category_pools,
    default_class_names,
    dropout_seed,
    open_training_data,
    prepare_image,
    prepare_pool,
)
from .distributed import any_rank, check_same, data_parallel, detect_world, join, leave, sum_over_ranks
from .finetune import add_border_class, apply_init, load_init_weights, widen_input
from .loss import learning_rate, weighted_cross_entropy
from .progress import TrainProgress
from .record import make_meta, manifest, training_record, truncate_log, versions

log = logging.getLogger(__name__)

#: Settings a resumed run must share with its checkpoint: the replayed steps depend on them.
RESUME_FIXED = ("width", "depth", "in_channels", "tile", "seed", "data", "batch")


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    out: Path
    step: int
    losses: list[float]
    best: dict[str, Any] | None
    onnx: Path | None
    card: Path | None
    elapsed: float
    data_wait: float  # fraction of step time spent waiting for data, over this process's steps
    main: bool = True  # False in the other processes of a multi-process run: they wrote nothing


class _StopRequest:
    """A stop asked for by SIGTERM (the app's Stop on POSIX, ``kill``) or by the stop request file
    (:data:`~unet_core.runlog.STOP_FILE`, the app's Stop everywhere) ends the run after the
    current step, checkpoint saved.

    Without it a stop would lose every step since the last periodic checkpoint. The signal handler
    is installed only in the main thread (Python delivers signals there); SIGKILL still relies on
    the atomic checkpoints. A request left from an earlier stop is cleared when the run starts
    (:meth:`Trainer.open_folder`).

    In a run of several processes each has the handler (torchrun passes a SIGTERM on to every
    process), only the first watches the file (``watch_file``), and :meth:`agree` makes them all
    stop after the same step.
    """

    def __init__(self, folder: Path, watch_file: bool = True) -> None:
        self.file = folder / STOP_FILE if watch_file else None
        self.signalled = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    @property
    def requested(self) -> bool:
        if not self.signalled and self.file is not None and self.file.exists():
            self.signalled = True  # latched: the file is removed when the run ends
        return self.signalled

    def agree(self, device: torch.device) -> bool:
        """Whether any process of the run was asked to stop: the same answer in all (latched)."""
        self.signalled = any_rank(self.requested, device)
        return self.signalled

    def _handle(self, signum: int, frame: Any) -> None:
        self.signalled = True

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        if self.file is not None:
            self.file.unlink(missing_ok=True)


def _leave_sigterm_to_the_trainer(worker_id: int) -> None:
    """A DataLoader worker ignores SIGTERM: torchrun stops a process by signalling its whole
    process group, workers included, and a worker killed under a running DataLoader would crash
    the trainer instead of letting it stop after its step. (The trainer shuts its workers down;
    they also end when it dies.)"""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def resolve_device(cfg: TrainConfig) -> torch.device:
    """The device of ``cfg.device`` (``auto``: CUDA when PyTorch sees a GPU)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise TrainError("device 'cuda' requested, but PyTorch sees no GPU; use --device cpu")
    use_cuda = cfg.device in ("auto", "cuda") and torch.cuda.is_available()
    if cfg.amp == "fp16" and not use_cuda:
        raise TrainError("fp16 autocast needs a GPU; use --amp bf16 or none on CPU")
    if cfg.device == "auto" and not use_cuda:
        log.info("no GPU that PyTorch can use: training on the CPU")
    return torch.device("cuda" if use_cuda else "cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively: a CUDA GPU that supports it, or a CPU with AMX
    or AVX512_BF16 (oneDNN's bf16 kernels; without them it converts to fp32 and back)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # Private but stable since torch 2.2; a torch without them is treated as a CPU without bf16.
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_amx_tile_supported",
                                                                       "_is_avx512_bf16_supported"))


def resolve_precision(amp: str, device: torch.device) -> str:
    """The autocast precision a run uses: ``amp`` as given, or for ``"auto"`` bf16 where
    :func:`native_bf16`, else ``"none"`` (fp32). Measured on a 2-core Xeon with AMX (``python
    bench/train.py --precision --width 24 --tile 244``): bf16 2.05x the fp32 step, 2.75x with
    channels_last (which the trainer then uses), the loss after 11 steps alike (0.6088 vs 0.6100);
    the shipped nuclei model was trained in bf16."""
    if amp != "auto":
        return amp
    return "bf16" if native_bf16(device) else "none"


class Trainer:
    """One run of the paper's recipe in the run folder ``cfg.out`` (see :mod:`unet_core.training`).

    Args:
        cfg: the run's config.
        resume: continue from ``cfg.out/last.pt`` (replaying exactly; from scratch if the run
            never reached a checkpoint). Without it, a folder that already holds a checkpoint is
            refused rather than overwritten.
        progress: show a progress line on stderr.
        on_step: called with each step's log record (the app, tests).
        finish: with ``resume``, end the run at its last checkpoint: no more steps, and the model
            is exported (even if the run was started with export off). How a stopped run
            becomes a model.

    Under ``torchrun`` it is one process of several (:mod:`.distributed`, from the environment):
    each trains on its share of every step's tiles, and only the first (:attr:`main`) writes the
    run folder, shows progress and validates.
    """

    def __init__(self, cfg: TrainConfig, resume: bool = False, progress: bool = True,
                 on_step: Callable[[dict[str, Any]], None] | None = None, finish: bool = False) -> None:
        self.cfg, self.resume, self.finish, self.on_step = cfg, resume, finish, on_step
        self.out = Path(cfg.out)
        self.last_path, self.best_path, self.log_path = self.out / "last.pt", self.out / "best.pt", self.out / LOG_NAME
        self.world = detect_world()
        self.main = self.world.is_main
        self.bar = TrainProgress(cfg.steps, enabled=progress and self.main)
        self.ckpt: dict[str, Any] | None = None
        self.start, self.elapsed_before, self.best = 0, 0.0, None
        self.losses: list[float] = []
        self.skipped: list[str] = []  # training images left out, with their problems
        self.wait_total = self.step_total = 0.0
        self.session_start = time.perf_counter()

    # ------------------------------------------------------------------ set-up

    def setup(self) -> None:
        """Everything before the first step, in the order that keeps a killed run resumable."""
        self.cfg.check_processes(self.world.size)  # before anything is written
        self.open_folder()
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
        self.device = join(self.world, resolve_device(self.cfg))
        self.precision = resolve_precision(self.cfg.amp, self.device)
        self.autocast = autocast_dtype(self.precision)
        # oneDNN's bf16 convolutions run fastest on channels-last tensors (x1.34 over bf16 alone).
        self.memory_format = (torch.channels_last if self.precision == "bf16" and self.device.type == "cpu"
                              else torch.contiguous_format)
        self.data = self.open_data()
        self.write_records()
        self.pools, self.probs, prep_s = self.prepare_images()
        self.model, self.opt, self.scaler = self.build_model()
        self.restore()
        check_same(self.start, "checkpoint step")  # a resumed run goes on from one step in every process
        self.net = data_parallel(self.model, self.world, self.device)
        cfg, data = self.cfg, self.data
        self.val_metric = PRIMARY_METRIC[data.kind] if cfg.val_metric == "auto" else cfg.val_metric
        self.val_indices = data.val_indices[: cfg.val_max_images] if cfg.val_max_images else data.val_indices
        event = {"event": "resume" if self.ckpt is not None else "start", "step": self.start,
                 "device": str(self.device), "precision": self.precision, "world_size": self.world.size,
                 "prepare_s": round(prep_s, 2), "n_train": len(data.train_indices), "n_val": len(self.val_indices)}
        before = int(self.ckpt.get("world_size", 1)) if self.ckpt is not None else self.world.size
        if before != self.world.size:
            # Allowed: every step trains on the same tiles with the same dropout masks (only the
            # order of float sums changes), so the run goes on as it would have.
            event["world_size_before"] = before
            self.bar.message(f"resuming on {self.world.size} processes; the run was started on {before}")
        self.log_line(event)
        for problem in self.skipped:
            self.log_line({"event": "skipped", "step": self.start, "problem": problem})
        if self.start >= cfg.steps:
            self.bar.message(f"the run already reached step {self.start} of {cfg.steps}")

    def open_folder(self) -> None:
        """The run folder and its checkpoint; ``config.json`` first of all, so that a run killed
        from here on still resumes with its settings."""
        if not (self.resume and self.last_path.exists()):
            self.cfg = apply_init(self.cfg)  # a resumed run's config already holds the init model's architecture
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in glob.glob(str(self.out / ".*.tmp")):  # a write killed half-way
                Path(stale).unlink(missing_ok=True)
            (self.out / STOP_FILE).unlink(missing_ok=True)  # an earlier stop's request: this run goes on
        if self.last_path.exists():
            if not self.resume:
                raise TrainError(f"{self.out} already holds a training run (last.pt); pass --resume to continue "
                                 "it or choose another --out")
            self.ckpt = read_checkpoint(self.last_path)
        if self.ckpt is None and self.main:
            write_json(self.out / "config.json", self.cfg.to_dict())
        if self.finish:
            if self.ckpt is None or not self.resume:
                raise TrainError(f"{self.out} has no checkpoint (last.pt) to make a model from; train it first")
            self.cfg = dataclasses.replace(self.cfg, steps=int(self.ckpt["step"]), export=True)

    def open_data(self) -> TrainData:
        """The data set and its split; the class names of a new run from its layout."""
        cfg = self.cfg
        data = open_training_data(cfg)
        if cfg.border_width and (data.dataset.n_classes > 2 or data.dataset.mask_encoding == "class_indexes"):
            raise TrainError(f"{data.dataset.root}: a border class needs instance masks of one foreground class")
        if cfg.class_names is None:
            names = default_class_names(data.dataset.layout, bool(cfg.border_width))
            self.cfg = dataclasses.replace(cfg, class_names=names)
        return data

    def write_records(self) -> None:
        """A new run's config, manifest and versions; a resumed run's settings checked against
        its checkpoint (steps or validation may have been extended)."""
        cfg = self.cfg
        if self.ckpt is None:
            if self.main:
                write_json(self.out / "config.json", cfg.to_dict())
                write_json(self.out / "manifest.json", manifest(cfg, self.data))
                write_json(self.out / "versions.json", versions())
                self.log_path.unlink(missing_ok=True)
            return
        saved = self.ckpt.get("config", {})
        for key in RESUME_FIXED:
            if saved.get(key) != getattr(cfg, key):
                raise TrainError(f"{self.out}: cannot resume with {key}={getattr(cfg, key)!r}; the run was "
                                 f"started with {saved.get(key)!r}")
        if self.main:
            write_json(self.out / "config.json", cfg.to_dict())

    def prepare_images(self) -> tuple[list[list[Any]], list[float], float]:
        """Every training image once (and the synthetic mix): normalised, rescaled, weight maps."""
        cfg, data = self.cfg, self.data
        self.bar.message(f"data {data.dataset.root} ({data.dataset.layout}, {len(data.train_indices)} train / "
                         f"{len(data.val_indices)} val, split {data.rule.to_dict()}); preparing weight maps ...")
        t0 = time.perf_counter()
        pool, problems = prepare_pool(data.dataset, data.train_indices, cfg)
        self.skipped = problems
        for problem in problems:  # each unusable image is named (and in the run's log, by setup)
            self.bar.message(f"left out: {problem}")
        category = {data.dataset.samples[i].name: data.dataset.samples[i].category for i in data.train_indices}
        share = 1.0 - cfg.synth_mix if data.synthetic is not None else 1.0
        pools, probs = category_pools(pool, [category[item.name] for item in pool], cfg.category_power, share)
        if len(pools) > 1:
            self.bar.message("tiles per image category: " + ", ".join(
                f"{category[p[0].name] or 'none'} {100 * q:.0f} % ({len(p)} image{'s' * (len(p) != 1)})"
                for p, q in zip(pools, probs, strict=True)))
        if data.synthetic is not None:
            pools.append([prepare_image(data.synthetic, i, cfg) for i in range(len(data.synthetic))])
            probs.append(cfg.synth_mix)
        return pools, probs, time.perf_counter() - t0

    def build_model(self) -> tuple[UNet, torch.optim.Optimizer, torch.amp.GradScaler]:
        """The network (He initialisation from the seed, or the init model's weights) and its optimiser."""
        cfg = self.cfg
        torch.manual_seed(dropout_seed(cfg.seed, 0))  # He initialisation: a function of the seed
        model = UNet.from_config(make_meta(cfg, self.data, {}).unet)
        if cfg.init and self.ckpt is None:
            state, _ = load_init_weights(cfg.init)
            try:
                model.load_state_dict(add_border_class(widen_input(state, cfg.in_channels), cfg.n_classes))
            except RuntimeError as exc:
                raise TrainError(f"{cfg.init}: weights do not fit the network ({exc})") from exc
        model.to(self.device, memory_format=self.memory_format)
        if cfg.optimizer == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                                         weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        return model, opt, torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")

    def restore(self) -> None:
        """A resumed run's weights, optimiser state, step and best value; its log cut back to the
        checkpoint (the steps after it are replayed)."""
        ckpt = self.ckpt
        if ckpt is None:
            return
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start, self.elapsed_before, self.best = int(ckpt["step"]), float(ckpt["elapsed"]), ckpt.get("best")
        if self.main:
            truncate_log(self.log_path, self.start)

    def batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """The remaining steps' batches (this process's share of them), cut in DataLoader workers
        ahead of the model."""
        cfg, world = self.cfg, self.world
        # Automatic: half the cores, shared among the processes on this node.
        n_workers = cfg.workers if cfg.workers is not None else min(
            4, max(1, (os.cpu_count() or 2) // (2 * world.local_size)))
        loader = torch.utils.data.DataLoader(
            StepTiles(self.pools, self.probs, cfg, world.rank, world.size),
            sampler=range(self.start + 1, cfg.steps + 1), batch_size=None,
            num_workers=n_workers, prefetch_factor=4 if n_workers else None,
            multiprocessing_context="fork" if n_workers else None, pin_memory=self.device.type == "cuda",
            worker_init_fn=_leave_sigterm_to_the_trainer,
        )
        return iter(loader)

    # ------------------------------------------------------------------ steps

    @property
    def elapsed(self) -> float:
        """Seconds of training so far, across resumes."""
        return self.elapsed_before + time.perf_counter() - self.session_start

    def log_line(self, record: dict[str, Any]) -> None:
        """Append one line to ``log.jsonl`` (flushed: the app reads it while the run goes on); the
        first process of a multi-process run writes it."""
        if not self.main:
            return
        with open(self.log_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def train_step(self, batch: dict[str, torch.Tensor]) -> tuple[int, float, float]:
        """One optimiser step on ``batch`` (this process's share of the step's tiles): its step
        number, the loss of the whole batch and the learning rate."""
        cfg, device = self.cfg, self.device
        step = int(batch["step"])
        lr = learning_rate(cfg, step)
        for group in self.opt.param_groups:
            group["lr"] = lr
        torch.manual_seed(dropout_seed(cfg.seed, step))
        x, y, w = (batch[k].to(device, non_blocking=True) for k in ("x", "y", "w"))
        x = x.contiguous(memory_format=self.memory_format)
        # Normalised by the pixels of the whole batch, this share's loss is its part of the batch's;
        # times the number of processes, since DistributedDataParallel averages the gradients, the
        # update is the one-process update of the batch (in one process: unchanged).
        pixels = sum_over_ranks((w > 0).sum())
        with torch.autocast(device.type, dtype=self.autocast, enabled=self.autocast is not None):
            logits = self.net(x)
        loss = weighted_cross_entropy(logits, y, w, pixels)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss * self.world.size).backward()
        if cfg.clip_grad:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
        self.scaler.step(self.opt)
        self.scaler.update()
        value = float(sum_over_ranks(loss.detach()))
        if not math.isfinite(value):
            raise TrainError(f"the loss became {value} at step {step}; lower the learning rate (now {lr:g}) "
                             "or use --clip-grad")
        return step, value, lr

    def due(self, step: int, every: int) -> bool:
        """Whether something done every ``every`` steps (and at the last) is due at ``step``."""
        return bool(every) and (step % every == 0 or step == self.cfg.steps)

    def validate(self, step: int) -> tuple[dict[str, Any], str]:
        """Score the validation images with the real inference path; keep ``best.pt``. The log
        fields and the progress note."""
        cfg, data = self.cfg, self.data
        predictor = TorchPredictor(self.model, make_meta(cfg, data, {}), self.device.type, self.precision)
        report = evaluate(predictor, data.dataset, self.val_indices,
                          EvalOptions(tile=cfg.val_tile or cfg.tile, kind=data.kind))
        self.model.train()
        metric = self.val_metric
        value = report.means.get(metric, math.nan)
        better = math.isfinite(value) and (
            self.best is None or (value < self.best["value"] if metric in LOWER_IS_BETTER else value > self.best["value"]))
        if better:
            self.best = {"metric": metric, "value": value, "step": step, "metrics": report.means}
            meta = make_meta(cfg, data, training_record(cfg, data, step, self.elapsed, self.best))
            atomic_save({"model": self.model.state_dict(), "meta": meta.to_dict(), "step": step,
                         "metrics": report.means}, self.best_path)
        fields = {"val": {k: (v if math.isfinite(v) else None) for k, v in report.means.items()},
                  "val_s": round(report.seconds, 2), "best": bool(better)}
        return fields, f"val {metric} {value:.4f}" + (" (best)" if better else "")

    def save_last(self, step: int) -> None:
        """``last.pt``, atomically: weights, optimiser, step, best, and the training record (the
        split rule above all, so a checkpoint evaluated mid-run scores the right images)."""
        cfg, data = self.cfg, self.data
        meta = make_meta(cfg, data, training_record(cfg, data, step, self.elapsed, self.best))
        atomic_save({
            "model": self.model.state_dict(), "meta": meta.to_dict(), "optimizer": self.opt.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {}, "step": step, "best": self.best,
            "elapsed": self.elapsed, "config": cfg.to_dict(), "world_size": self.world.size,
        }, self.last_path)

    # ------------------------------------------------------------------ the loop

    def run(self) -> TrainResult:
        """Set up, train the remaining steps, then export (or stop with a checkpoint)."""
        finished = False
        try:
            self.setup()
            stop = _StopRequest(self.out, watch_file=self.main)
            try:
                step = self.loop(stop)
            finally:
                stop.restore()
                self.bar.close()
            result = self.stopped(step) if stop.requested and step < self.cfg.steps else self.export(step)
            finished = True
            return result
        finally:
            leave(finished)

    def loop(self, stop: _StopRequest) -> int:
        """The steps from the checkpoint to ``cfg.steps`` (or to a stop request); the last step."""
        cfg = self.cfg
        px_per_step = cfg.batch * cfg.tile * cfg.tile
        self.model.train()
        step = self.start
        batches = self.batches()
        try:
            t_end = time.perf_counter()
            # One answer per step, the same in every process: whether to stop after it (saved).
            stopping = stop.agree(self.device)
            while step < cfg.steps and not stopping:
                t0 = time.perf_counter()
                batch = next(batches)
                wait = time.perf_counter() - t0
                step, loss, lr = self.train_step(batch)
                stopping = stop.agree(self.device)
                step_s = time.perf_counter() - t_end  # from the end of the previous step (its logging) to now
                self.wait_total += wait
                self.step_total += step_s
                self.losses.append(loss)
                record: dict[str, Any] = {"step": step, "loss": loss, "lr": lr,
                                          "px_per_s": round(px_per_step / step_s, 1),
                                          "data_wait": round(wait / step_s, 4), "step_s": round(step_s, 4)}
                note = ""
                if self.main and self.due(step, cfg.val_every) and self.val_indices:  # the others wait
                    fields, note = self.validate(step)
                    record.update(fields)
                record["elapsed"] = round(self.elapsed, 2)
                self.log_line(record)
                if self.on_step and self.main:
                    self.on_step(record)
                self.bar.update(step, loss, step_s, wait / step_s, note)
                if self.main and (self.due(step, cfg.checkpoint_every) or step == cfg.steps or stopping):
                    self.save_last(step)
                t_end = time.perf_counter()  # validation and checkpoints are not step time
        finally:
            del batches  # shuts the DataLoader workers down
        if step == self.start and self.start < cfg.steps and not stop.requested:
            raise TrainError("no training step ran")
        return step

    def result(self, step: int, elapsed: float, onnx: Path | None = None, card: Path | None = None) -> TrainResult:
        return TrainResult(self.out, step, self.losses, self.best, onnx, card, elapsed,
                           self.wait_total / self.step_total if self.step_total else 0.0, self.main)

    def stopped(self, step: int) -> TrainResult:
        """A stop request ended the run before its last step: the checkpoint is saved."""
        self.bar.message(f"stopped at step {step}; the checkpoint is saved: resume with --resume")
        self.log_line({"event": "stopped", "step": step})
        return self.result(step, self.elapsed)

    def export(self, step: int) -> TrainResult:
        """The run reached its last step: export the best checkpoint and write the card."""
        onnx_path = card_path = None
        elapsed = self.elapsed  # training time: the export is not part of it
        if self.cfg.export and self.main:
            self.bar.message("exporting the " + ("best" if self.best_path.exists() else "last")
                             + " checkpoint to ONNX ...")
            onnx_path, card_path = export_run(self.cfg, self.data, step, elapsed, self.best, self.precision)
        self.log_line({"event": "done", "step": step, "elapsed": round(elapsed, 2), "best": self.best,
                       "onnx": str(onnx_path) if onnx_path else None,
                       "data_wait": round(self.wait_total / self.step_total, 4) if self.step_total else None})
        return self.result(step, elapsed, onnx_path, card_path)


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True,
          on_step: Callable[[dict[str, Any]], None] | None = None, finish: bool = False) -> TrainResult:
    """Run (or continue) the training described by ``cfg`` in its run folder ``cfg.out`` (see
    :class:`Trainer` for the arguments).

    Raises:
        TrainError: a problem the user can fix (data, folder, options); the message says which.
    """
    return Trainer(cfg, resume, progress, on_step, finish).run()
