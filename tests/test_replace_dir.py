"""kdpipe.io.replace_dir: a finished folder takes the place of what was there (a folder or a file),
and the target is always the old whole or the new whole."""

import os

import pytest

import kdpipe.io
from kdpipe.io import replace_dir


def _folder(path, text):
    path.mkdir()
    (path / "a.txt").write_text(text)
    return path


@pytest.mark.parametrize("old_is_file", [False, True])
def test_the_new_folder_takes_the_place_of_the_old_one_and_nothing_is_left_beside_it(tmp_path, old_is_file):
    target = tmp_path / "out"
    if old_is_file:
        target.write_text("old")
    else:
        _folder(target, "old")
    replace_dir(_folder(tmp_path / ".out.new", "new"), target)
    assert (target / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_missing_target_is_simply_created(tmp_path):
    replace_dir(_folder(tmp_path / ".out.new", "new"), tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_text() == "new"


def test_when_the_new_folder_cannot_be_put_in_place_the_old_one_is_back(tmp_path, monkeypatch):
    target = _folder(tmp_path / "out", "old")
    new = _folder(tmp_path / ".out.new", "new")
    real = os.replace

    def fail_on_the_new_folder(src, dst):
        if os.fspath(src) == os.fspath(new):
            raise PermissionError(13, "Permission denied", os.fspath(dst))
        real(src, dst)

    monkeypatch.setattr(kdpipe.io.os, "replace", fail_on_the_new_folder)
    with pytest.raises(PermissionError):
        replace_dir(new, target)
    assert (target / "a.txt").read_text() == "old"
    assert (new / "a.txt").read_text() == "new"  # the caller's staging folder, for it to remove
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.new", "out"]
