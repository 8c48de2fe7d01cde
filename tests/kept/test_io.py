"""kept.io: atomic files and folders (permissions, stale temps of killed processes, what may be replaced)."""

import os
import stat

import pytest

from kept.io import atomic_dir, atomic_write


def test_atomic_write_replaces_only_on_success(tmp_path):
    f = tmp_path / "a.txt"
    with atomic_write(f) as fh:
        fh.write("one")
    with pytest.raises(RuntimeError):
        with atomic_write(f) as fh:
            fh.write("two")
            raise RuntimeError
    assert f.read_text() == "one" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_finished_files_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.txt") as fh:
            fh.write("x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_atomic_dir_refuses_a_folder_it_did_not_write(tmp_path):
    from kept.errors import KeptError

    user = tmp_path / "d"
    user.mkdir()
    (user / "mine.txt").write_text("x")
    with pytest.raises(KeptError, match="not written by kept"):
        with atomic_dir(user):
            raise AssertionError("the work must not start")
    with atomic_dir(user, force=True) as d:
        (d / "f").write_text("y")
    assert sorted(p.name for p in user.iterdir()) == [".kept", "f"]


def test_stale_temps_of_a_killed_writer_are_cleared(tmp_path):
    import subprocess
    import sys

    # a process that died: its pid no longer runs
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)
    stale_dir = tmp_path / f".d.{dead}.abc123.tmp"
    stale_dir.mkdir()
    (stale_dir / "half").write_text("x")
    stale_file = tmp_path / f".a.txt.{dead}.xyz.tmp"
    stale_file.write_text("x")
    other = tmp_path / f".other.{dead}.q.tmp"  # another target's temp is left alone
    other.mkdir()
    with atomic_dir(tmp_path / "d") as d:
        (d / "f").write_text("y")
    with atomic_write(tmp_path / "a.txt") as fh:
        fh.write("z")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "a.txt", "d"]
