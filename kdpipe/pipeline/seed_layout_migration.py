"""Run dirs of the older seed layout, moved once to the one layout seeds have now.

Before, a run without ``run.seeds`` gave seeded stages one *unseeded* instance (``distill`` in
``distill/``, run with ``run.seed``), and ``--seeds 1,2,3`` later added ``distill-seed1/`` beside it:
seed 1 twice. Now that run is the instance of its seed (``distill@seed1`` in ``distill-seed1/``).

:func:`migrate_seed_layout` (under the run-dir lock, before anything is decided) renames each
finished old folder to its seed's name, read from its manifest, and rewrites the manifests that
name it (its own, and those of the stages downstream) so that nothing finished goes stale: a
fingerprint hashes instance names of upstream stages, not folders. A manifest is only rewritten
when its fingerprint recomputes from what it records, so a stale stage stays stale. An old folder
that cannot move (its seed has a folder already, or it never finished) is left in place and named
in one line; :func:`seed_layout_notes` gives the same lines without changing anything (``status``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kdpipe.io import write_json
from kdpipe.pipeline.graph import folder_name, instance_name
from kdpipe.pipeline.manifest import MANIFEST, ManifestVersionError, read_manifest
from kdpipe.pipeline.plan import Plan, stage_fingerprint


@dataclass
class OldFolders:
    """The old-layout folders of one run dir, by what can happen to them."""

    movable: dict[str, str] = field(default_factory=dict)  # old instance name -> new instance name
    taken: dict[str, str] = field(default_factory=dict)  # old instance name -> the new one, whose folder exists
    unfinished: list[str] = field(default_factory=list)  # old instance names without a readable manifest


def _read(folder: Path) -> dict | None:
    try:
        return read_manifest(folder)
    except ManifestVersionError:
        return None  # another kdpipe's format: not ours to rewrite (status reports it as it is)


def find_old_folders(plan: Plan, run_dir: Path) -> OldFolders:
    found = OldFolders()
    if plan.graph.seed_key not in plan.graph.schema.keys():
        return found
    # old instance name (the unseeded one) -> (stage, member), named as the graph names instances
    old_names = {instance_name(inst.spec.name, inst.member, None): (inst.spec.name, inst.member)
                 for inst in plan.instances.values() if inst.spec.seeded}
    for old in sorted(old_names):
        folder = Path(run_dir) / folder_name(old)
        if not folder.is_dir():
            continue
        manifest = _read(folder)
        seed = (manifest.get("config") or {}).get(plan.graph.seed_key) if manifest else None
        if not isinstance(seed, int):
            found.unfinished.append(old)
            continue
        new = instance_name(*old_names[old], seed)
        (found.taken if (Path(run_dir) / folder_name(new)).exists() else found.movable)[old] = new
    return found


def _fingerprint(manifest: dict, name: str, upstream: dict[str, str]) -> str:
    """The fingerprint :meth:`Plan.expected` gives, from what a manifest records."""
    stage, _, member = name.split("@")[0].partition(":")
    return stage_fingerprint(stage, member or None, manifest.get("stage_version"), manifest.get("config") or {},
                             upstream, manifest.get("identity"))


def _rewrite_manifests(run_dir: Path, renamed: dict[str, str]) -> None:
    """Give every manifest that names a renamed instance (itself or upstream) the new names and
    the fingerprint they give, upstream first."""
    manifests = {}
    for folder in sorted(p for p in Path(run_dir).iterdir() if p.is_dir()):
        m = _read(folder)
        if m is not None and isinstance(m.get("stage"), str):
            manifests[m["stage"]] = (folder, m)
    new_fp: dict[str, tuple[str, str]] = {}  # instance (old name) -> (old fingerprint, new fingerprint)

    def visit(name: str) -> None:
        if name in new_fp:
            return
        folder, m = manifests[name]
        new_fp[name] = (m["fingerprint"], m["fingerprint"])
        ups = m.get("upstream") or {}
        for dep in ups:
            if dep in manifests:
                visit(dep)
        if _fingerprint(m, name, {d: r.get("fingerprint") for d, r in ups.items()}) != m["fingerprint"]:
            return  # stale, or written some other way: leave it to be judged (and re-run) as it is
        upstream = {}
        for dep, rec in ups.items():
            old_fp, fp = new_fp.get(dep, (None, None))
            upstream[renamed.get(dep, dep)] = dict(rec, fingerprint=fp if rec.get("fingerprint") == old_fp else rec.get("fingerprint"))
        new_name = renamed.get(name, name)
        fingerprint = _fingerprint(m, new_name, {d: r["fingerprint"] for d, r in upstream.items()})
        new_fp[name] = (m["fingerprint"], fingerprint)
        if new_name != name or upstream != ups:
            write_json(folder / MANIFEST, dict(m, stage=new_name, upstream=upstream, fingerprint=fingerprint),
                       sort_keys=True, fsync=True)

    for name in manifests:
        visit(name)


def migrate_seed_layout(plan: Plan, run_dir: Path) -> list[str]:
    """Move the old layout's folders of ``run_dir`` to the new one; one line per kind of change."""
    found = find_old_folders(plan, run_dir)
    if found.movable:
        # manifests first, folders last: a crash in between leaves old folders whose manifests
        # already carry the new names, which the next run moves without rewriting anything
        _rewrite_manifests(run_dir, found.movable)
        for old, new in found.movable.items():
            (Path(run_dir) / folder_name(old)).rename(Path(run_dir) / folder_name(new))
    return _lines(run_dir, found, moved=True)


def seed_layout_notes(plan: Plan, run_dir: Path) -> list[str]:
    """What :func:`migrate_seed_layout` would do and leave, changing nothing (for ``status``)."""
    if not Path(run_dir).is_dir():
        return []
    return _lines(run_dir, find_old_folders(plan, run_dir), moved=False)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _lines(run_dir: Path, found: OldFolders, moved: bool) -> list[str]:
    lines = []
    if found.movable:
        pairs = ", ".join(f"{folder_name(o)} -> {folder_name(n)}" for o, n in found.movable.items())
        what = _count(len(found.movable), "stage folder", "stage folders") + " of the older layout"
        if moved:
            whose = "its seed's name" if len(found.movable) == 1 else "their seeds' names"
            lines.append(f"{run_dir}: moved {what} to {whose}: {pairs}")
        else:
            lines.append(f"{run_dir}: {what}, moved by the next `kdpipe run` on it: {pairs}")
    if found.taken:
        listed = ", ".join(f"{folder_name(o)} (seed {n.rsplit('@seed', 1)[1]}, see {folder_name(n)})" for o, n in found.taken.items())
        one = len(found.taken) == 1
        lines.append(f"{run_dir}: left {_count(len(found.taken), 'stage folder', 'stage folders')} of the older layout "
                     f"whose seed{' already has its own' if one else 's already have their own'}: {listed}; "
                     f"delete {'it' if one else 'them'} when you no longer need {'it' if one else 'them'}")
    if found.unfinished:
        one = len(found.unfinished) == 1
        lines.append(f"{run_dir}: left {_count(len(found.unfinished), 'unfinished stage folder', 'unfinished stage folders')} "
                     f"of the older layout (no manifest to tell its seed): {', '.join(folder_name(o) for o in found.unfinished)}; "
                     f"{'its stage runs' if one else 'their stages run'} again in the new layout, so delete {'it' if one else 'them'}")
    return lines
