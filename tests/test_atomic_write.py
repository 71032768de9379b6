"""model/checkpoint.py's write-then-swap helpers: the one way files and folders are replaced."""

import importlib
import os
import stat

import pytest

import model.checkpoint
from model.checkpoint import atomic_write, atomic_write_folder


@pytest.fixture
def umask_027():
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_neither_import_nor_writes_touch_the_process_umask(tmp_path, monkeypatch):
    """The umask is process-wide: setting it, even to read it back, races with every other thread."""
    calls = []
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask))
    importlib.reload(model.checkpoint)
    model.checkpoint.atomic_write(tmp_path / "a.txt", lambda tmp: open(tmp, "w").write("x"))
    model.checkpoint.atomic_write_folder(tmp_path / "b", lambda tmp: None)
    assert calls == []


def test_atomic_write_replaces_the_file_with_the_umask_permissions(tmp_path, umask_027):
    path = tmp_path / "sub" / "a.txt"
    atomic_write(path, lambda tmp: open(tmp, "w").write("one"))
    atomic_write(path, lambda tmp: open(tmp, "w").write("two"))
    assert path.read_text() == "two" and mode(path) == 0o640
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")

    def fail(tmp):
        open(tmp, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_write_folder_swaps_the_whole_folder(tmp_path, umask_027):
    out = tmp_path / "folder"
    out.mkdir()
    (out / "stale.bin").write_text("from the last run")
    atomic_write_folder(out, lambda tmp: (tmp / "new.bin").write_text("new"))
    assert [p.name for p in out.iterdir()] == ["new.bin"] and mode(out) == 0o750
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]  # no temporary or .old sibling left


def test_a_failed_folder_write_keeps_the_old_folder_and_no_temp(tmp_path):
    out = tmp_path / "folder"
    out.mkdir()
    (out / "kept.bin").write_text("old")

    def fail(tmp):
        (tmp / "half.bin").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write_folder(out, fail)
    assert [p.name for p in out.iterdir()] == ["kept.bin"]
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]
