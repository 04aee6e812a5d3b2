"""The one atomic writer: whole files or nothing, durable, no temporary left behind."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest

from geodns.fsutil import write_atomic, write_json_atomic


def test_text_and_bytes_replace_the_file_whole(tmp_path):
    path = tmp_path / "sub" / "zone.yaml"  # the directory is made
    write_atomic(path, "zone: a\n", mode=0o644)
    assert path.read_text() == "zone: a\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_atomic(str(path), "zone: é\n".encode())
    assert path.read_text(encoding="utf-8") == "zone: é\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the default: state files are private
    assert os.listdir(path.parent) == ["zone.yaml"]


def test_json_is_sorted_and_a_refused_document_changes_nothing(tmp_path):
    path = tmp_path / "state.json"
    write_json_atomic(path, {"b": 1, "a": [True, None]})
    assert path.read_text() == '{\n "a": [\n  true,\n  null\n ],\n "b": 1\n}\n'
    for bad in ({"x": math.nan}, {"x": object()}):
        with pytest.raises((ValueError, TypeError)):
            write_json_atomic(path, bad)
    assert json.loads(path.read_text()) == {"a": [True, None], "b": 1}
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "drains.json"
    write_atomic(path, "old")
    (tmp_path / "blocker").mkdir()
    with pytest.raises(OSError):
        write_atomic(tmp_path / "blocker", "a directory cannot be replaced by a file")
    assert path.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["blocker", "drains.json"]
