"""The layers point one way, checked two ways.

Statically (every ``import`` statement, also those inside functions): the engine (``unet_core``
outside ``unet_core/studio``) never imports app support (``unet_core.studio``) or the pages; app
support, the pages and ``app.py`` never import torch or an engine module built on it (training,
model, export, checkpoint). In fresh interpreters (so no other test's imports count): inference
and everything the app runs leave torch unloaded, and the trainer loads no app support.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Engine modules that import torch at their top: only a training process and export use them.
TORCH_MODULES = ("torch", "unet_core.training", "unet_core.model", "unet_core.export", "unet_core.checkpoint")


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


ENGINE = sorted(p for p in (REPO_ROOT / "unet_core").rglob("*.py") if "studio" not in p.parts)
APP_SIDE = sorted([*(REPO_ROOT / "unet_core" / "studio").glob("*.py"), *(REPO_ROOT / "pages").glob("*.py"),
                   REPO_ROOT / "app.py"])


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_the_engine_never_imports_app_support_or_pages(path: Path) -> None:
    bad = {n for n in imports_of(path) if _under(n, ("unet_core.studio", "pages", "streamlit"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", APP_SIDE, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_app_support_and_pages_never_import_torch(path: Path) -> None:
    bad = {n for n in imports_of(path) if _under(n, TORCH_MODULES)}
    assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "unet_core" / "studio").glob("*.py")),
                         ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_app_support_never_imports_streamlit_or_the_pages(path: Path) -> None:
    """What the pages compute lives in app support and is testable without a page: only pages
    and app.py draw."""
    bad = {n for n in imports_of(path) if _under(n, ("streamlit", "pages"))}
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_import_check_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    probe = REPO_ROOT / "unet_core" / "studio" / "_probe_for_test.py"
    probe.write_text("def f():\n    from ..training import train\n    import torch.nn\n")
    try:
        assert {"unet_core.training", "unet_core.training.train", "torch.nn"} <= imports_of(probe)
    finally:
        probe.unlink()


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=300, check=False)


@pytest.mark.slow
def test_inference_and_the_apps_engine_side_run_without_torch() -> None:
    code = """
import sys
import numpy as np
from unet_core import baseline, config, evaluate, inference, instances, io, predict, scale
from unet_core.studio import browse, jobs, processes, registry, runlock, runs, sources, uploads, visualize
from unet_core.studio.registry import list_models, ModelEntry, read_card
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


@pytest.mark.slow
def test_the_trainer_loads_no_app_support() -> None:
    code = ("import sys, unet_core.training, unet_core.cli; "
            "loaded = [m for m in sys.modules if m.startswith('unet_core.studio')]; assert not loaded, loaded")
    result = _run(code)
    assert result.returncode == 0, result.stderr
