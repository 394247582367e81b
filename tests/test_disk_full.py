"""A full disk (or a quota, or a read-only file system): one line naming the file and the bytes it
needed, a non-zero exit, no temporary file and no manifest left behind, and the same command run
again after space is freed completes.

A full disk is simulated by making the chosen writes fail with ENOSPC halfway through (a small
loop-mounted file system is not available in CI): kdpipe.io's file writes, safetensors' writer
(which reports "(os error 28)" in a SafetensorError) and the os.write of classify's appends.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch

import kdpipe.infer.writers.lines
import kdpipe.io
from kdpipe.errors import KdpipeError
from kdpipe.io import disk_problem, write_json, write_safetensors
from test_pipeline_fakedata import make_fake_pets


def _target(tmp: str | os.PathLike) -> Path:
    """The file an atomic write's temporary sibling (``.NAME.PID.tmp``) is for."""
    tmp = Path(tmp)
    name = tmp.name
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:].rsplit(".", 2)[0]
    return tmp.with_name(name)


class FullDisk:
    """Writes to the files ``full(path)`` picks run out of space after half their bytes."""

    def __init__(self, monkeypatch):
        self.full = lambda path: False
        self.refused: list[Path] = []
        real_open, real_write = open, os.write
        disk = self

        def fake_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if "w" in mode and disk.full(_target(file)):
                real_write_method = f.write

                def write(data):
                    real_write_method(data[: len(data) // 2])
                    disk.refused.append(_target(file))
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

                f.write = write
            return f

        def fake_save_file(tensors, filename, metadata=None):
            from safetensors import SafetensorError

            if disk.full(_target(filename)):
                Path(filename).write_bytes(b"\0" * 100)
                disk.refused.append(_target(filename))
                raise SafetensorError(f'Error while serializing: I/O error: No space left on device (os error 28) at path "{filename}"')
            return real_save_file(tensors, filename, metadata=metadata)

        def fake_os_write(fd, data):
            try:
                path = Path(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                path = None
            if path is not None and disk.full(path):
                real_write(fd, bytes(data[: len(data) // 2]))
                disk.refused.append(path)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_write(fd, data)

        real_save_file = safetensors.torch.save_file
        monkeypatch.setattr(kdpipe.io, "open", fake_open, raising=False)  # write_text's open
        monkeypatch.setattr(safetensors.torch, "save_file", fake_save_file)
        monkeypatch.setattr(kdpipe.infer.writers.lines.os, "write", fake_os_write)  # the durable append

    def free(self) -> None:
        self.full = lambda path: False


@pytest.fixture()
def disk(monkeypatch):
    return FullDisk(monkeypatch)


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or ".tmp" in p.name]


# ---- the one place OSErrors become lines ----------------------------------------------------------
@pytest.mark.parametrize("code, said", [(errno.ENOSPC, "no space left on the device"), (errno.EDQUOT, "disk quota exceeded"),
                                        (errno.EROFS, "the file system is read-only")])
def test_disk_errors_become_one_line_naming_the_file_and_the_bytes(code, said):
    problem = disk_problem(OSError(code, os.strerror(code), "/data/out/x.bin"), needed=123456)
    assert type(problem) is KdpipeError and "\n" not in str(problem)
    assert str(problem).startswith(f"cannot write /data/out/x.bin: {said} (123,456 bytes needed); ")


@pytest.mark.parametrize("error", [OSError(errno.EACCES, "Permission denied", "/x"), OSError(errno.EIO, "I/O error"),
                                   FileNotFoundError(errno.ENOENT, "gone", "/x"), ValueError("no")])
def test_other_errors_are_not_disk_problems(error):
    assert disk_problem(error) is None


def test_atomic_writers_leave_nothing_on_a_full_disk(tmp_path, disk):
    disk.full = lambda path: path.name.startswith("full")
    with pytest.raises(KdpipeError, match=r"^cannot write .*full\.json: no space left on the device \(\d+ bytes needed\)"):
        write_json(tmp_path / "full.json", {"a": list(range(100))})
    tensors = {"w": torch.zeros(10, 10)}
    with pytest.raises(KdpipeError, match=r"full\.safetensors: no space left on the device \(400 bytes needed\)"):
        write_safetensors(tmp_path / "full.safetensors", tensors)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # an existing file stays as it was: the old version or the new one, never half of one
    disk.free()
    write_json(tmp_path / "full.json", {"v": 1})
    disk.full = lambda path: path.name.startswith("full")
    with pytest.raises(KdpipeError):
        write_json(tmp_path / "full.json", {"v": 2})
    assert json.loads((tmp_path / "full.json").read_text()) == {"v": 1} and not leftovers(tmp_path)


def test_other_safetensors_errors_are_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    def fails(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: HeaderTooLarge")

    monkeypatch.setattr(safetensors.torch, "save_file", fails)
    with pytest.raises(SafetensorError, match="HeaderTooLarge"):
        write_safetensors(tmp_path / "x.safetensors", {"a": torch.zeros(2)})
    assert not list(tmp_path.iterdir())


def test_the_cli_turns_a_disk_oserror_into_one_line_and_nothing_else(monkeypatch, capsys):
    import kdpipe.cli

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/somewhere.tar")

    monkeypatch.setattr(kdpipe.cli, "app", full)
    with pytest.raises(SystemExit) as e:
        kdpipe.cli.main()
    assert e.value.code != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot write /data/run/somewhere.tar: no space left on the device") and "\n" not in err

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", "/x")

    monkeypatch.setattr(kdpipe.cli, "app", denied)
    with pytest.raises(PermissionError):  # not a disk problem: the catch stays narrow
        kdpipe.cli.main()


# ---- a pipeline run ---------------------------------------------------------------------------------
def kdpipe_main(monkeypatch, capsys, run_dir: Path, data: Path, target: str) -> tuple[int, list[str]]:
    """``kdpipe run TARGET`` through the console entry point: (exit code, stderr lines)."""
    import kdpipe.cli

    args = ["kdpipe", "run", target, "--with-deps", "--run-dir", str(run_dir), "--teacher", "kd-tiny-t", "--student", "kd-tiny-s",
            "--dataset", "oxford_pets", "--data-root", str(data), "--seeds", "1"]
    for s in ("data.shots=2", "data.workers=0", "teacher.promptsrc.epochs=1", "distill.allow_weak_teacher=true"):
        args += ["--set", s]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit) as e:
        kdpipe.cli.main()
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return e.value.code or 0, [ln for ln in err.splitlines() if ln.startswith("error:")]


def teacher_folder(run_dir: Path) -> Path:
    return next(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("teacher"))


@pytest.mark.parametrize("where", ["stage output", "manifest"])
def test_a_full_disk_during_a_stage_is_one_line_and_a_rerun_completes(tmp_path, monkeypatch, capsys, disk, where):
    data = make_fake_pets(tmp_path / "data")
    run_dir = tmp_path / "run"
    if where == "stage output":  # the teacher's learned state (safetensors, through kdpipe.io)
        disk.full = lambda path: path.parent.name.startswith("teacher") and path.name.endswith(".safetensors") \
            and path.parent.parent == run_dir
        expected = r"\.safetensors: no space left on the device \([\d,]+ bytes needed\)"
    else:  # the disk fills when the manifest is written: the stage's failure note does not fit either
        disk.full = lambda path: path.name in ("manifest.json", "failed.json") and path.parent.name.startswith("teacher")
        expected = r"manifest\.json: no space left on the device \([\d,]+ bytes needed\)"

    code, errors = kdpipe_main(monkeypatch, capsys, run_dir, data, "teacher")
    assert code != 0 and len(errors) == 1, errors
    assert disk.refused and str(disk.refused[0]) in errors[0]
    assert re.search(expected, errors[0]), errors[0]
    folder = teacher_folder(run_dir)
    assert not (folder / "manifest.json").exists() and not leftovers(run_dir), leftovers(run_dir)

    disk.free()
    code, errors = kdpipe_main(monkeypatch, capsys, run_dir, data, "teacher")
    assert code == 0 and not errors, errors
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["outputs"] and not leftovers(run_dir)


def test_a_full_disk_while_classify_appends_rows_keeps_whole_rows_and_a_rerun_completes(tmp_path, tiny_student, disk):
    from test_classify import CLASSES, TinyEncoder, keys_of, write_images

    from kdpipe.infer.classify import classify
    from kdpipe.infer.sources import open_source
    from kdpipe.infer.index import ClassIndex
    from kdpipe.infer.writers import read_rows

    index = ClassIndex.build(torch.nn.functional.normalize(torch.randn(len(CLASSES), 24, generator=torch.Generator().manual_seed(2)), dim=-1))
    write_images(tmp_path / "imgs", 7)
    out = tmp_path / "out.jsonl"
    appends = []

    def full_from_the_second_append(path):
        if path != out:
            return False
        appends.append(path)
        return len(appends) >= 2

    disk.full = full_from_the_second_append
    with pytest.raises(KdpipeError) as e:
        classify(TinyEncoder(tiny_student), index, CLASSES, open_source(tmp_path / "imgs"), out, batch_size=3, workers=0,
                 device="cpu", progress=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"cannot write {out}: no space left on the device (") and "bytes needed" in msg
    assert out.read_bytes().endswith(b"\n") and len(read_rows(out)) == 3  # the first batch, whole; no torn row
    assert not leftovers(tmp_path)

    disk.free()
    classify(TinyEncoder(tiny_student), index, CLASSES, open_source(tmp_path / "imgs"), out, batch_size=3, workers=0,
             device="cpu", progress=False)
    keys = keys_of(out)
    assert len(keys) == len(set(keys)) == 7


def test_a_full_disk_while_the_held_out_slice_of_user_shards_is_copied_is_one_line_naming_the_tar(tmp_path, monkeypatch):
    """The shards stage copies the first images of the user's shards into ``holdout/``: a full disk
    there names that tar, leaves no temporary file and no shards.json, and a rerun completes."""
    import webdataset as wds

    from kdpipe.data import load_dataset
    from kdpipe.data.shards import write_shards
    from test_pipeline_shards import _run_shards

    make_fake_pets(tmp_path / "data")
    write_shards(load_dataset("oxford_pets", tmp_path / "data").train, tmp_path / "mine", per_shard=20, keep_labels=False)
    sets = (f"shards.unlabeled={tmp_path / 'mine'}", "shards.holdout=5", "shards.holdout_fraction=0.1")
    real_write = wds.TarWriter.write

    def full(self, sample):
        real_write(self, sample)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(wds.TarWriter, "write", full)
    result = _run_shards(tmp_path, *sets)
    tar = tmp_path / "run" / "shards" / "holdout" / "holdout-000000.tar"
    assert isinstance(result.exception, KdpipeError), result.output
    assert str(result.exception).startswith(f"cannot write {tar}: no space left on the device") and "\n" not in str(result.exception)
    assert not leftovers(tmp_path / "run") and not tar.exists() and not (tmp_path / "run" / "shards" / "shards.json").exists()

    monkeypatch.setattr(wds.TarWriter, "write", real_write)
    result = _run_shards(tmp_path, *sets)
    assert result.exit_code == 0, result.output
    assert tar.is_file() and (tmp_path / "run" / "shards" / "shards.json").is_file()
