"""The files through which a trainer and the app talk: the run log, ``log.jsonl`` (one JSON object
per line, appended by the trainer and read by the trainer on resume, the app's job manager and the
Train page), and the stop request.

Kept apart from both so that neither the trainer (torch) nor the app (no torch) imports the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The log's file name inside a run folder.
LOG_NAME = "log.jsonl"
#: A file the app writes into a run folder to ask its trainer to stop after the current step (a
#: signal does that on POSIX; on Windows terminating a process kills it, so the file is the way).
STOP_FILE = "stop.request"


def parse_log_lines(data: bytes) -> list[dict[str, Any]]:
    """The JSON records in ``log.jsonl`` bytes; unparsable lines (a half-written last one) are skipped."""
    rows = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of the log file ``path``, read afresh ([] when there is none yet)."""
    try:
        return parse_log_lines(Path(path).read_bytes())
    except FileNotFoundError:
        return []
