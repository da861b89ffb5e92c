import pytest

from common.atomic import atomic_path, atomic_write_text


def test_replaces_whole(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    atomic_write_text(p, "new", mode=0o400)
    assert p.read_text() == "new"
    assert (p.stat().st_mode & 0o777) == 0o400
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def test_failure_leaves_old_file_and_no_temp(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]
