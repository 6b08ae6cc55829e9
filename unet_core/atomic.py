"""Files written so that a reader, or a process killed mid-write, sees either the old file or the
whole new one: the content goes to a temporary file beside the target (``.NAME.XXXX.tmp``, which
a run folder's owner may sweep up) and is then renamed over it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], Any], fsync: bool = False) -> None:
    """Write ``path`` through ``write(file)``, atomically.

    Args:
        path: the file to write (its folder is created if missing).
        write: writes the content to the binary file it is given.
        fsync: flush the content to the disk before the rename (checkpoints: a machine that
            loses power keeps the old or the new one, never an empty file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        # Opened by name (not from the descriptor) so that fh.name is the path: onnx.save_model
        # derives the folder of external data from it.
        with open(tmp, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_atomically(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: str | Path, obj: Any, indent: int = 2, sort_keys: bool = True) -> None:
    """Write ``obj`` as JSON (one trailing newline) to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
