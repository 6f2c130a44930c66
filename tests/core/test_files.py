"""Outputs are written whole or not at all, and readable like any file the user writes."""

from __future__ import annotations

import os
import stat

import pytest

from mgie_core.files import atomic_write


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_new_file_gets_the_mode_the_umask_gives_not_a_temporary_files_0600(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "out.bin") as handle:
            handle.write(b"abc")
    finally:
        os.umask(old)
    assert (tmp_path / "out.bin").read_bytes() == b"abc" and _mode(tmp_path / "out.bin") == mode


def test_a_replaced_file_keeps_its_mode(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"old")
    path.chmod(0o640)
    with atomic_write(path) as handle:
        handle.write(b"new")
    assert path.read_bytes() == b"new" and _mode(path) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "edited.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as handle:
            handle.write(b"half")
            raise RuntimeError("cut off")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["edited.png"]
