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
