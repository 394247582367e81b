"""A classify model straight from a run directory: the student (default), the teacher or a baseline.

Stage folders as the runner names them (``distill-seed1`` ...; ``distill`` in run dirs of the older
layout, whose seed is the ``run.seed`` its manifest recorded), each done only with a valid ``manifest.json``. The student scores against the ``text-features`` stage's stored rows;
the teacher against the same rows (its own text side computed them); a text baseline computes its
class features once over the same class list. The teacher of the same seed is the student's text
side for ``--classes`` with new names.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

from kdpipe.artefacts import run_layout as layout
from kdpipe.errors import KdpipeError
from kdpipe.infer.bundle import ClassModel, is_bundle, load_bundle

# role -> (folder-name pattern before the optional -seedN, where the method's files are in it)
ROLES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "student": (layout.STUDENT_FOLDER, layout.student_stem),
    "teacher": (layout.TEACHER_FOLDER, layout.teacher_stem),
}


def _role_pattern(role: str) -> tuple[str, Callable[[Path], Path]]:
    if role in ROLES:
        return ROLES[role]
    method = role.split(":", 1)[1] if role.startswith("baseline:") else ""
    if layout.is_method_name(method):
        return layout.baseline_folder(method), layout.baseline_stem
    raise KdpipeError(f"unknown --stage {role!r}; expected student, teacher or baseline:METHOD (e.g. baseline:coop)")


def stage_folders(run_dir: Path, pattern: str) -> dict[int | None, Path]:
    """Done folders matching ``pattern`` (plus an optional ``-seedN``), by seed.

    An unseeded folder of the older layout counts as the seed it ran with (its manifest's
    ``run.seed``), never as a seed of its own, and gives way to that seed's folder when both exist."""
    from kdpipe.pipeline import SEED_KEY, read_manifest

    found: dict[int | None, Path] = {}
    unseeded: dict[int | None, Path] = {}
    for d in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        matches, seed = layout.folder_seed(pattern, d.name)
        manifest = read_manifest(d) if matches else None
        if manifest is None:
            continue
        if seed is None:
            ran_with = (manifest.get("config") or {}).get(SEED_KEY)
            unseeded[ran_with if isinstance(ran_with, int) else None] = d
        else:
            found[seed] = d
    merged = {**unseeded, **found}
    return {s: merged[s] for s in sorted(merged, key=lambda s: (s is None, s or 0))}


def _pick(run_dir: Path, role: str, pattern: str, seed: int | None) -> tuple[Path, int | None]:
    found = stage_folders(run_dir, pattern)
    if not found:
        raise KdpipeError(f"{run_dir} has no finished {role} stage (no {pattern.replace(chr(92), '')}[-seedN]/ folder with a manifest); run it first (kdpipe run all)")
    if seed is not None:
        if seed not in found:
            raise KdpipeError(f"{run_dir}: no finished {role} for seed {seed}; seeds there: {', '.join(str(s) for s in found)}")
        return found[seed], seed
    if len(found) > 1:
        raise KdpipeError(f"{run_dir} has the {role} for seeds {', '.join(str(s) for s in found)}; pick one with --seed N")
    (s, folder), = found.items()
    return folder, s


def _teacher_of(run_dir: Path, tf_folder: Path) -> Path | None:
    """The teacher whose text side made the class features in ``tf_folder`` (the primary's: the
    student's classifier), read from that stage's manifest. With several teachers the folder name
    alone cannot tell (``teacher-promptsrc``, ``teacher-zeroshot``, and ``teacher-cache`` matches too)."""
    from kdpipe.pipeline import read_manifest
    from kdpipe.pipeline.graph import folder_name

    upstream = (read_manifest(tf_folder) or {}).get("upstream") or {}
    names = [n for n in upstream if n.split("@")[0].split(":")[0] == layout.TEACHER]
    folder = run_dir / folder_name(names[0]) if len(names) == 1 else None
    return folder if folder is not None and read_manifest(folder) is not None else None


def load_run(run_dir: str | Path, role: str = "student", seed: int | None = None, device="cpu") -> ClassModel:
    """The model of one finished stage of a run directory, ready for :func:`classify`."""
    from kdpipe.artefacts.class_features import read_class_features
    from kdpipe.methods.io import load_method

    run_dir = Path(run_dir)
    pattern, stem = _role_pattern(role)
    folder, seed = _pick(run_dir, role, pattern, seed)
    tf_folder, _ = _pick(run_dir, layout.TEXT_FEATURES, layout.TEXT_FEATURES_FOLDER, seed)
    if role == "teacher":
        folder = _teacher_of(run_dir, tf_folder) or folder
    tf = read_class_features(layout.features_path(tf_folder))
    method, meta = load_method(stem(folder), device=device)
    source = f"{role} of run {run_dir}" + (f" (seed {seed})" if seed is not None else "")
    if role in ("student", "teacher"):
        feats = tf.features
        index_path = layout.index_path(tf_folder)
    else:
        feats = image_independent_class_features(method, tf.classnames)
        index_path = None
    teacher_loader = None
    if role == "student":
        teacher_folder = _teacher_of(run_dir, tf_folder) or _pick(run_dir, "teacher", layout.TEACHER_FOLDER, seed)[0]
        teacher_loader = functools.partial(_load_method_only, layout.teacher_stem(teacher_folder), device)
    return ClassModel(method, tf.classnames, feats, float(method.clip.logit_scale), tf.num_base, source=source,
                      provenance={"run_dir": str(run_dir.resolve()), "stage": folder.name, "seed": seed, "backbone": meta["backbone"]},
                      teacher_loader=teacher_loader, index_path=index_path)


def _load_method_only(stem: Path, device):
    from kdpipe.methods.io import load_method

    return load_method(stem, device=device)[0]


def image_independent_class_features(method, classnames: list[str]):
    """Class features for a fixed index; refused for methods whose class features depend on the image."""
    import torch

    if method.conditions_on_image:
        raise KdpipeError(f"{method.name} conditions its class features on each image, so it cannot classify through a fixed class index")
    with torch.no_grad(), torch.autocast(method.device.type, enabled=False):
        return method.class_features(classnames).float().cpu()


def load_model(path: str | Path, role: str = "student", seed: int | None = None, device="cpu") -> ClassModel:
    """``--model``: a bundle folder or a run directory."""
    path = Path(path)
    if is_bundle(path):
        if role != "student" or seed is not None:
            raise KdpipeError(f"{path} is a bundle (one model); --stage and --seed apply to run directories only")
        return load_bundle(path, device=device)
    if not path.is_dir():
        raise KdpipeError(f"--model {path} does not exist; give a bundle folder (kdpipe export) or a run directory")
    if not any(p.is_dir() and (p / "manifest.json").is_file() for p in path.iterdir()):
        raise KdpipeError(f"--model {path} is neither a bundle (no bundle.json) nor a run directory (no stage folders with manifest.json)")
    return load_run(path, role, seed, device)
