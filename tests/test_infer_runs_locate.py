"""``kdpipe classify --model RUN_DIR`` finds its stages by the instance names their manifests record
(the runner's naming), not by folder names: ``teacher-cache-seed1`` is no teacher, and with several
teachers the teacher is the primary, the one the student's class features were made by."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdpipe.errors import KdpipeError
from kdpipe.infer.runs import locate
from kdpipe.io import write_json
from kdpipe.pipeline.graph import folder_name
from kdpipe.pipeline.manifest import MANIFEST, MANIFEST_FORMAT, MANIFEST_VERSION


def done(run_dir: Path, instance: str, upstream: tuple[str, ...] = (), config: dict | None = None) -> Path:
    """A finished stage folder of ``instance``: its manifest as the runner writes it (what locate reads)."""
    folder = run_dir / folder_name(instance)
    folder.mkdir(parents=True)
    write_json(folder / MANIFEST, {
        "format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, "stage": instance, "fingerprint": "f" * 64,
        "outputs": {}, "config": config or {}, "upstream": {u: {"fingerprint": "u", "outputs": "o"} for u in upstream},
    })
    return folder


def two_teacher_run(run_dir: Path, seed: int = 1) -> None:
    """teacher.members = [zeroshot, promptsrc]: zeroshot the primary, each with its own text
    features and teacher cache (the cache folders sort before and beside the teachers')."""
    s = f"@seed{seed}"
    for member in ("zeroshot", "promptsrc"):
        done(run_dir, f"teacher:{member}{s}")
    done(run_dir, f"teacher-cache{s}", upstream=(f"teacher:zeroshot{s}", "shards"))
    done(run_dir, f"teacher-cache:promptsrc{s}", upstream=(f"teacher:promptsrc{s}", "shards"))
    done(run_dir, f"text-features{s}", upstream=(f"teacher:zeroshot{s}",))
    done(run_dir, f"text-features:promptsrc{s}", upstream=(f"teacher:promptsrc{s}",))
    done(run_dir, f"distill{s}", upstream=(f"teacher:zeroshot{s}", f"text-features{s}", "shards", f"teacher-cache{s}"))
    done(run_dir, f"baseline:coop{s}")


def test_the_teacher_is_the_primary_never_a_teacher_cache(tmp_path):
    two_teacher_run(tmp_path)
    teacher = locate(tmp_path, "teacher")
    assert teacher.folder == tmp_path / "teacher-zeroshot-seed1" and teacher.seed == 1
    assert teacher.text_features == tmp_path / "text-features-seed1"
    student = locate(tmp_path, "student")
    assert student.folder == tmp_path / "distill-seed1" and student.teacher() == tmp_path / "teacher-zeroshot-seed1"
    assert locate(tmp_path, "baseline:coop").folder == tmp_path / "baseline-coop-seed1"


def test_a_finished_teacher_cache_does_not_stand_in_for_an_unfinished_teacher(tmp_path):
    done(tmp_path, "teacher-cache@seed1", upstream=("teacher:promptsrc@seed1", "shards"))
    done(tmp_path, "text-features@seed1", upstream=("teacher:promptsrc@seed1",))
    done(tmp_path, "distill@seed1")
    with pytest.raises(KdpipeError, match="no finished teacher stage"):
        locate(tmp_path, "teacher")
    with pytest.raises(KdpipeError, match="no finished teacher stage"):
        locate(tmp_path, "student").teacher()


def test_seeds_and_the_older_unseeded_layout(tmp_path):
    two_teacher_run(tmp_path, seed=1)
    two_teacher_run(tmp_path, seed=2)
    with pytest.raises(KdpipeError, match="for seeds 1, 2; pick one with --seed N"):
        locate(tmp_path, "teacher")
    assert locate(tmp_path, "teacher", seed=2).folder == tmp_path / "teacher-zeroshot-seed2"

    old = tmp_path / "old"
    done(old, "teacher:promptsrc", config={"run.seed": 3})
    done(old, "text-features", upstream=("teacher:promptsrc",), config={"run.seed": 3})
    done(old, "distill", config={"run.seed": 3})
    at = locate(old, "student")
    assert (at.folder, at.seed, at.teacher()) == (old / "distill", 3, old / "teacher-promptsrc")


@pytest.mark.parametrize("role", ["teacher-cache", "baseline:", "baseline:a/b", "student:x"])
def test_an_unknown_role_is_one_line(tmp_path, role):
    two_teacher_run(tmp_path)
    with pytest.raises(KdpipeError, match="unknown --stage"):
        locate(tmp_path, role)
