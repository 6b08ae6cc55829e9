"""Every folder U-Net Studio reads or writes outside the files a user names, and the environment
variables that move each one (tests point them at temporary folders).

=====================  ============================  =============================================
folder                 variable                      default
=====================  ============================  =============================================
data sets              ``UNET_STUDIO_DATA``          ``../shared/data`` beside the repository if
                                                     it exists, else ``data/`` in it
shipped models         ``UNET_STUDIO_MODELS``        ``models/`` of the repository
training runs          ``UNET_STUDIO_RUNS``          ``runs/`` in the user's data folder
                                                     (:func:`user_data_dir`), outside the source tree
extracted uploads      ``UNET_STUDIO_UPLOADS``       ``unet-studio-uploads-<user>`` in the temp folder
caches (tile timings)  ``UNET_STUDIO_CACHE``         the user's cache folder
=====================  ============================  =============================================
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

DATA_ENV = "UNET_STUDIO_DATA"
MODELS_ENV = "UNET_STUDIO_MODELS"
RUNS_ENV = "UNET_STUDIO_RUNS"
UPLOADS_ENV = "UNET_STUDIO_UPLOADS"
CACHE_ENV = "UNET_STUDIO_CACHE"

#: The repository (the folder holding ``unet_core``, ``models`` and ``app.py``).
REPO_ROOT = Path(__file__).resolve().parent.parent
APP_NAME = "unet-studio"


def _from_env(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def user_data_dir() -> Path:
    """This user's data folder for U-Net Studio: ``$XDG_DATA_HOME/unet-studio`` (default
    ``~/.local/share``) on Linux, ``~/Library/Application Support/unet-studio`` on macOS,
    ``%LOCALAPPDATA%\\unet-studio`` on Windows."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / APP_NAME


def user_cache_dir() -> Path:
    """This user's cache folder for U-Net Studio (``$XDG_CACHE_HOME``, ``~/Library/Caches``,
    ``%LOCALAPPDATA%\\unet-studio\\cache``)."""
    if sys.platform == "win32":
        return user_data_dir() / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / APP_NAME
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / APP_NAME


def data_root() -> Path:
    """The folder whose sub-folders are the data sets the app and CLI offer."""
    env = _from_env(DATA_ENV)
    if env is not None:
        return env
    shared = REPO_ROOT.parent / "shared" / "data"
    return shared if shared.is_dir() else REPO_ROOT / "data"


def models_dir() -> Path:
    """The folder of shipped models."""
    return _from_env(MODELS_ENV) or REPO_ROOT / "models"


def runs_dir() -> Path:
    """The folder of training runs (the app's Train page starts them here)."""
    return _from_env(RUNS_ENV) or user_data_dir() / "runs"


def uploads_root() -> Path:
    """Where uploaded zips are extracted: a folder of this user's own (on a shared machine, users
    do not share it)."""
    env = _from_env(UPLOADS_ENV)
    if env is not None:
        return env
    user = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
    return Path(tempfile.gettempdir()) / f"unet-studio-uploads-{user}"


def cache_dir() -> Path:
    """Where machine-local caches live (created if missing)."""
    path = _from_env(CACHE_ENV) or user_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path
