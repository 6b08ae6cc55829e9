"""The engine's layers point one way: inference and the app's engine side never import torch, and the
trainer never imports the app's job manager (checked in fresh interpreters, so no other test's
imports count)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=300, check=False)


def test_inference_and_the_apps_engine_side_run_without_torch() -> None:
    code = """
import sys
import numpy as np
from unet_core import baseline, browse, config, evaluate, inference, instances, io, jobs, predict, registry, scale
from unet_core.registry import ModelEntry, list_models, read_card
from unet_core.runtime import device_summary, load_predictor

entry = next(m for m in list_models() if m.name == "unet-nuclei")
read_card(ModelEntry(entry.name, entry.path, None, entry.source))  # the card from the file's metadata
device_summary()
predictor = load_predictor(entry.path, "cpu")
image = io.ImageFile("x.png", np.random.default_rng(0).integers(0, 255, (1, 96, 96, 1), dtype=np.uint8))
inference.segment_objects(image, predictor, inference.InferenceOptions(tile=100))
config.TrainConfig(width=8, tile=100)
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("torch modules:", loaded[:5])
assert not loaded
"""
    result = _run(code)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_trainer_does_not_import_the_apps_job_manager() -> None:
    result = _run("import sys, unet_core.training; assert 'unet_core.jobs' not in sys.modules, 'jobs imported'")
    assert result.returncode == 0, result.stderr
