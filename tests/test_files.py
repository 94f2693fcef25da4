"""lorasmith.files: outputs are complete or absent and get the permissions of the user's umask."""

from __future__ import annotations

import os
import stat

import pytest

from lorasmith.files import open_atomic, write_atomic


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_written_file_mode_follows_the_umask(tmp_path, mask):
    previous = os.umask(mask)
    try:
        write_atomic(tmp_path / "metrics.json", "{}\n")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o666 & ~mask
    assert (tmp_path / "metrics.json").read_text() == "{}\n"


def test_an_error_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "recipe.yaml"
    target.write_text("old\n")
    with pytest.raises(RuntimeError):
        with open_atomic(target) as stream:
            stream.write("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["recipe.yaml"]
