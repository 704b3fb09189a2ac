"""Local atomic writes: all or nothing, with open()'s permissions."""

import os
import stat

import pytest

from facerecon import fileio


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
  path = tmp_path / "sub" / "record.json"
  fileio.write_bytes_atomic(path, b"first")
  with pytest.raises(RuntimeError):
    with fileio.atomic_write(path) as f:
      f.write(b"half of the second")
      raise RuntimeError("killed mid-write")
  assert path.read_bytes() == b"first"
  assert os.listdir(path.parent) == ["record.json"]  # no temporary file left


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_write_gives_open_s_permissions_and_keeps_the_umask(tmp_path, umask):
  previous = os.umask(umask)
  try:
    fileio.write_bytes_atomic(tmp_path / "a", b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o666 & ~umask
    assert os.umask(umask) == umask  # (reading it did not change it)
  finally:
    os.umask(previous)
