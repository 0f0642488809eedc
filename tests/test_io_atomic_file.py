"""io.atomic_file: the target appears whole on success and is untouched on failure."""

import os

import pytest

from oloraplus.io import atomic_file


def test_renamed_over_the_target_on_success(tmp_path):
    target = tmp_path / "out" / "f.bin"
    with atomic_file(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["f.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not mkstemp's private 0600


def test_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
