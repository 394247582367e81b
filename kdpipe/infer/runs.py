"""A classify model straight from a run directory: the student (default), the teacher or a baseline.

Stages are found as the runner recorded them: each done folder's manifest names its instance
(``distill@seed1``, ``teacher:promptsrc@seed1``, ``baseline:coop@seed1``; :func:`kdpipe.pipeline.graph.parse_instance`
reads the name), never by matching folder names, so ``teacher-cache`` is no teacher. An instance of
the older unseeded layout (``distill``) counts as the seed its manifest's ``run.seed`` recorded. The
student scores against the ``text-features`` stage's stored rows (its plainly named instance: the
primary teacher's); the teacher against the same rows (its own text side computed them), and with
several teachers it is the primary, the one those rows' manifest names upstream; a text baseline
computes its class features once over the same class list. The teacher of the same seed is the
student's text side for ``--classes`` with new names.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kdpipe.artefacts import run_layout as layout
from kdpipe.errors import KdpipeError
from kdpipe.infer.bundle import ClassModel, is_bundle, load_bundle

ANY = object()  # any member of a family: the teacher role, before the primary is known

# role -> (the stage whose instances hold it, where the method's files are in its folder)
ROLES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "student": (layout.DISTILL, layout.student_stem),
    "teacher": (layout.TEACHER, layout.teacher_stem),
}


@dataclass(frozen=True)
class Finished:
    """A done stage instance of a run directory, as its manifest names it."""

    stage: str
    member: str | None
    seed: int | None
    folder: Path
    unseeded: bool  # the older layout: ``seed`` is the run.seed it ran with


def _role(role: str) -> tuple[str, object, Callable[[Path], Path]]:
    """(stage, member, stem) of ``--stage``: the teacher is any teacher family member until the
    class features say which is the primary."""
    if role in ROLES:
        stage, stem = ROLES[role]
        return stage, ANY if stage == layout.TEACHER else None, stem
    method = role.split(":", 1)[1] if role.startswith("baseline:") else ""
    if method and not any(c in method for c in ":@/\\ "):
        return layout.BASELINE, method, layout.baseline_stem
    raise KdpipeError(f"unknown --stage {role!r}; expected student, teacher or baseline:METHOD (e.g. baseline:coop)")


def finished_instances(run_dir: Path) -> list[Finished]:
    """Every done stage instance in ``run_dir``, named as its manifest records it."""
    from kdpipe.pipeline import SEED_KEY, read_manifest
    from kdpipe.pipeline.graph import parse_instance

    found = []
    for d in sorted(p for p in run_dir.iterdir() if p.is_dir()):
        manifest = read_manifest(d)
        if manifest is None or not isinstance(manifest.get("stage"), str):
            continue
        stage, member, seed = parse_instance(manifest["stage"])
        unseeded = seed is None
        if unseeded:
            ran_with = (manifest.get("config") or {}).get(SEED_KEY)
            seed = ran_with if isinstance(ran_with, int) else None
        found.append(Finished(stage, member, seed, d, unseeded))
    return found


def stage_folders(done: list[Finished], stage: str, member: object = None) -> dict[int | None, list[Path]]:
    """Folders of ``stage``'s instances (of family ``member``; None: the plainly named instance;
    :data:`ANY`: every member), by seed. An unseeded folder of the older layout gives way to its
    seed's folder when both exist."""
    by_seed: dict[bool, dict[int | None, list[Path]]] = {True: {}, False: {}}
    for f in done:
        if f.stage == stage and (member is ANY or f.member == member):
            by_seed[f.unseeded].setdefault(f.seed, []).append(f.folder)
    merged = {**by_seed[True], **by_seed[False]}
    return {s: merged[s] for s in sorted(merged, key=lambda s: (s is None, s or 0))}


def _pick(run_dir: Path, role: str, found: dict[int | None, list[Path]], seed: int | None, named: str) -> tuple[list[Path], int | None]:
    if not found:
        raise KdpipeError(f"{run_dir} has no finished {role} stage (no {named}[@seedN] instance with a manifest); run it first (kdpipe run all)")
    if seed is not None:
        if seed not in found:
            raise KdpipeError(f"{run_dir}: no finished {role} for seed {seed}; seeds there: {', '.join(str(s) for s in found)}")
        return found[seed], seed
    if len(found) > 1:
        raise KdpipeError(f"{run_dir} has the {role} for seeds {', '.join(str(s) for s in found)}; pick one with --seed N")
    (s, folders), = found.items()
    return folders, s


def _named(stage: str, member: object) -> str:
    return f"{stage}:<method>" if member is ANY else f"{stage}:{member}" if member else stage


def _one(run_dir: Path, role: str, folders: list[Path], seed: int | None) -> Path:
    if len(folders) > 1:
        raise KdpipeError(f"{run_dir}: several {role}s for seed {seed} ({', '.join(f.name for f in folders)}) and no class "
                          "features naming the primary; re-run text-features")
    return folders[0]


def _teacher_of(tf_folder: Path, done: list[Finished]) -> Path | None:
    """The teacher whose text side made the class features in ``tf_folder`` (the primary's: the
    student's classifier), read from that stage's manifest: with several teachers no name alone tells."""
    from kdpipe.pipeline import read_manifest
    from kdpipe.pipeline.graph import folder_name, parse_instance

    upstream = (read_manifest(tf_folder) or {}).get("upstream") or {}
    names = [n for n in upstream if parse_instance(n)[0] == layout.TEACHER]
    folder = tf_folder.parent / folder_name(names[0]) if len(names) == 1 else None
    return folder if folder is not None and any(f.folder == folder for f in done) else None


@dataclass(frozen=True)
class Located:
    """The folders ``load_run`` reads for one role and seed of a run directory."""

    folder: Path  # the role's stage instance
    seed: int | None
    text_features: Path  # the plainly named text-features instance: the primary teacher's rows
    teacher: Callable[[], Path]  # the primary teacher's folder (the student's text side), found when asked


def locate(run_dir: str | Path, role: str = "student", seed: int | None = None) -> Located:
    """Where ``role`` (student, teacher, baseline:METHOD) of ``seed`` lives in ``run_dir``."""
    run_dir = Path(run_dir)
    stage, member, _ = _role(role)
    done = finished_instances(run_dir)
    folders, seed = _pick(run_dir, role, stage_folders(done, stage, member), seed, _named(stage, member))
    tf_folder = _pick(run_dir, layout.TEXT_FEATURES, stage_folders(done, layout.TEXT_FEATURES), seed, layout.TEXT_FEATURES)[0][0]
    primary = _teacher_of(tf_folder, done)

    def teacher() -> Path:
        if primary is not None:
            return primary
        found = stage_folders(done, layout.TEACHER, ANY)
        return _one(run_dir, "teacher", _pick(run_dir, "teacher", found, seed, _named(layout.TEACHER, ANY))[0], seed)

    folder = teacher() if role == "teacher" else folders[0]
    return Located(folder, seed, tf_folder, teacher)


def load_run(run_dir: str | Path, role: str = "student", seed: int | None = None, device="cpu") -> ClassModel:
    """The model of one finished stage of a run directory, ready for :func:`classify`."""
    from kdpipe.artefacts.class_features import read_class_features
    from kdpipe.methods.io import load_method

    run_dir = Path(run_dir)
    at = locate(run_dir, role, seed)
    tf = read_class_features(layout.features_path(at.text_features))
    method, meta = load_method(_role(role)[2](at.folder), device=device)
    source = f"{role} of run {run_dir}" + (f" (seed {at.seed})" if at.seed is not None else "")
    if role in ("student", "teacher"):
        feats = tf.features
        index_path = layout.index_path(at.text_features)
    else:
        feats = image_independent_class_features(method, tf.classnames)
        index_path = None
    teacher_loader = None
    if role == "student":
        teacher_loader = functools.partial(_load_method_only, layout.teacher_stem(at.teacher()), device)
    return ClassModel(method, tf.classnames, feats, float(method.clip.logit_scale), tf.num_base, source=source,
                      provenance={"run_dir": str(run_dir.resolve()), "stage": at.folder.name, "seed": at.seed, "backbone": meta["backbone"]},
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
