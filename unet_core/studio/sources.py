"""Where the images a page works on come from: :class:`DataSource` (the synthetic generator, a
folder under the data root, or an extracted upload) and :func:`open_source`, which turns one into
a :class:`~unet_core.datasets.Dataset`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..datasets import Dataset, open_dataset
from ..paths import data_root

SOURCE_KINDS = ("synthetic", "folder", "upload")


@dataclass(frozen=True)
class DataSource:
    """Where a data set comes from; hashable, so it can key caches.

    Attributes:
        kind: ``"synthetic"``, ``"folder"`` (under the data root) or ``"upload"`` (extracted zip).
        path: the folder (folder and upload kinds).
        label: how the page names it (the folder name, the zip's name).
        mode, n, seed, size: the synthetic generator's look, image count, seed and image edge.
        version: changes when the folder's contents may have changed (see :func:`folder_version`).
    """

    kind: str = "synthetic"
    path: str = ""
    label: str = ""
    mode: str = "fluorescence"
    n: int = 8
    seed: int = 0
    size: int = 512
    version: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"kind must be one of {SOURCE_KINDS}, not {self.kind!r}")

    @property
    def title(self) -> str:
        if self.kind == "synthetic":
            return f"synthetic {self.mode} images (seed {self.seed})"
        return self.label or Path(self.path).name


def folder_version(path: str | Path) -> float:
    """A number that changes when files are added to, removed from or replaced in the data set
    folder or its direct sub-folders (their modification times; files edited in place keep it)."""
    path = Path(path)
    try:
        times = [path.stat().st_mtime]
        times += [p.stat().st_mtime for p in path.iterdir() if p.is_dir()]
    except OSError:
        return 0.0
    return max(times)


def open_source(source: DataSource) -> Dataset:
    """The data set of ``source``.

    Raises:
        DatasetError: the folder matches no layout (the message names what was expected).
    """
    if source.kind == "synthetic":
        from ..synthetic import SynthConfig, synthetic_dataset

        cfg = SynthConfig(height=source.size, width=source.size, mode=source.mode)
        return synthetic_dataset(source.n, cfg, seed=source.seed)
    # A data-root folder: every file must lie under the root, links included (the typed folder
    # was checked already, its images/ and masks/ are checked here).
    return open_dataset(source.path, confine=data_root() if source.kind == "folder" else None)
