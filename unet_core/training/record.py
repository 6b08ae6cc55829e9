"""What a run writes about itself in its folder besides checkpoints: ``config.json``,
``manifest.json`` (the files and the split), ``versions.json`` (software and hardware), the
``log.jsonl`` it appends to, and the metadata that travels in its checkpoints and model."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from ..atomic import write_text
from ..config import TrainConfig
from ..metadata import ModelMeta
from ..runlog import read_log
from .data import TrainData, default_class_names, synth_config


def versions() -> dict[str, Any]:
    """Software and hardware this run used (versions.json)."""
    import importlib.metadata as md

    def version(pkg: str) -> str | None:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return None

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for pkg in ("numpy", "scipy", "scikit-image", "onnx", "onnxruntime-gpu", "onnxruntime", "onnxscript", "pillow",
                "tifffile"):
        v = version(pkg)
        if v:
            info[pkg] = v
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        info["unet_studio_commit"] = commit + ("+dirty" if dirty else "") if commit else None
    except (OSError, subprocess.SubprocessError):
        info["unet_studio_commit"] = None
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def manifest(cfg: TrainConfig, data: TrainData) -> dict[str, Any]:
    """Which files were used and how they were split (manifest.json)."""
    ds = data.dataset
    val = set(data.val_indices)
    d: dict[str, Any] = {
        "data": cfg.data if cfg.data == "synthetic" else str(Path(cfg.data).resolve()),
        "layout": ds.layout,
        "mask_encoding": ds.mask_encoding,
        "split_rule": data.rule.to_dict(),
        "n_samples": len(ds),
        "n_train": len(data.train_indices),
        "n_val": len(data.val_indices),
        "problems": list(ds.problems),
        "samples": [
            {
                "index": i,
                "name": s.name,
                "image": str(s.image_path),
                "mask": str(s.mask_path) if s.mask_path else None,
                "slice": s.slice_index,
                "part": "val" if i in val else "train",
            }
            for i, s in enumerate(ds.samples)
        ],
    }
    if cfg.data == "synthetic" or data.synthetic is not None:
        d["synthetic"] = {"n": cfg.synth_n, "seed": cfg.synth_seed, "config": synth_config(cfg).to_dict(),
                          "mix": cfg.synth_mix if cfg.data != "synthetic" else 1.0}
    return d


def truncate_log(path: Path, step: int) -> None:
    """Keep the log lines up to ``step`` (those after the last checkpoint will be replayed)."""
    if not path.exists():
        return
    kept = [r for r in read_log(path) if r.get("step", 0) <= step and r.get("event") != "done"]
    write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


def make_meta(cfg: TrainConfig, data: TrainData, training: dict[str, Any]) -> ModelMeta:
    names = list(cfg.class_names or default_class_names(data.dataset.layout, bool(cfg.border_width)))
    unet = dataclasses.replace(cfg.unet, n_classes=len(names))
    border = cfg.border_class
    return ModelMeta(name=cfg.run_name, unet=unet, class_names=names,
                     foreground_classes=[1] if border is None else [1, border], border_class=border,
                     normalisation=cfg.normalisation, training=training, diameter=cfg.diameter)


def training_record(cfg: TrainConfig, data: TrainData, step: int, elapsed: float,
                     best: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "data": cfg.data if cfg.data == "synthetic" else str(Path(cfg.data).resolve()),
        "layout": data.dataset.layout,
        "split_rule": data.rule.to_dict(),
        "n_train": len(data.train_indices),
        "n_val": len(data.val_indices),
        "steps": step,
        "seconds": round(elapsed, 1),
        "best": best,
        "config": cfg.to_dict(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
