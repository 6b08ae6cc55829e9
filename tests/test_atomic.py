"""The one atomic-write helper: a reader, or a write that fails half-way, sees the old file or the
whole new one, and no temporary file is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unet_core.atomic import write_atomically, write_json, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    write_json(path, {"steps": 1})

    def half_then_fail(fh) -> None:
        fh.write(b'{"steps": ')
        raise KeyboardInterrupt  # a BaseException, as a kill between writes raises

    with pytest.raises(KeyboardInterrupt):
        write_atomically(path, half_then_fail, fsync=True)
    assert json.loads(path.read_text()) == {"steps": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_writes_create_the_folder_and_replace_the_content(tmp_path: Path) -> None:
    path = tmp_path / "run" / "log.txt"
    write_text(path, "first\n")
    write_text(path, "sécond\n")
    assert path.read_text(encoding="utf-8") == "sécond\n"
    write_json(tmp_path / "b.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "b.json").read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'


def test_new_files_follow_the_umask_and_replaced_files_keep_their_mode(tmp_path: Path) -> None:
    import os
    import stat

    fresh = tmp_path / "model.onnx"
    old_umask = os.umask(0o022)
    try:
        write_text(fresh, "x")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644  # readable by the lab, not private to its writer
    kept = tmp_path / "private.json"
    kept.write_text("{}")
    kept.chmod(0o600)
    write_json(kept, {"a": 1})
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
