"""Files written so that a reader, or a process killed mid-write, sees either the old file or the
whole new one: the content goes to a temporary file beside the target (``.NAME.XXXX.tmp``, which
a run folder's owner may sweep up) and is then renamed over it."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomically(path: str | Path, write: Callable[[IO[bytes]], Any], fsync: bool = False) -> None:
    """Write ``path`` through ``write(file)``, atomically.

    The new file gets the permissions a plain ``open`` would give it (the umask's), or those of the
    file it replaces: a model or a run folder shared by a lab stays readable by the lab.

    Args:
        path: the file to write (its folder is created if missing).
        write: writes the content to the binary file it is given.
        fsync: flush the content to the disk before the rename (checkpoints: a machine that
            loses power keeps the old or the new one, never an empty file).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # Opened by name with "x" (not mkstemp, whose files are private to their owner): the umask
        # decides, and fh.name is the path, which onnx.save_model needs for external data.
        with open(tmp, "xb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_atomically(path, lambda fh: fh.write(text.encode("utf-8")))


def write_json(path: str | Path, obj: Any, indent: int = 2, sort_keys: bool = True) -> None:
    """Write ``obj`` as JSON (one trailing newline) to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
