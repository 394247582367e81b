"""A plan: the instances one config gives, the fingerprint each should have, and what the run
directory says about each (done, stale and why, missing, failed, running)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdpipe.config import NOT_FINGERPRINTED, Config
from kdpipe.errors import KdpipeError
from kdpipe.io import read_json_or_none
from kdpipe.pipeline.graph import Instance, StageGraph, StageSpec, closest
from kdpipe.pipeline.hashing import digest
from kdpipe.pipeline.lock import RunLock
from kdpipe.pipeline.manifest import ATTEMPT, CKPT, FAILED, MANIFEST, outputs_digest, read_manifest, verify_outputs
from kdpipe.pipeline.metric_units import format_metric


@dataclass
class StageStatus:
    name: str
    state: str  # done | stale | missing | failed | running
    reason: str = ""
    wall_time_s: float | None = None
    headline: str = ""  # "hm=81.2"
    fingerprint: str = ""
    folder: str = ""


class InputsError(KdpipeError):
    """A stage's user inputs cannot be identified (e.g. the data root is missing)."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


@dataclass
class Expected:
    fingerprint: str
    config: dict[str, Any]
    upstream: dict[str, str]
    identity: str | None
    version: int


_UNSET = object()


def _diff_values(key: str, old: Any, new: Any) -> list[str]:
    """``["distill.lr 0.005 -> 0.01"]``: what differs between two read values, key by key."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            if old.get(k, _UNSET) != new.get(k, _UNSET):
                out += _diff_values(f"{key}.{k}", old.get(k, _UNSET), new.get(k, _UNSET))
        return out
    return [f"{key} {_show(old)} -> {_show(new)}"]


def _changes(old: dict, new: dict, added: str, removed: str, changed) -> list[str]:
    """Why two records differ, key by key: ``added`` / ``removed`` formats, ``changed(key, old, new)``."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        if key not in old:
            out.append(added.format(key))
        elif key not in new:
            out.append(removed.format(key))
        elif old[key] != new[key]:
            out += changed(key, old[key], new[key])
    return out


def _show(value: Any) -> str:
    if value is _UNSET:
        return "(unset)"
    return json.dumps(value) if isinstance(value, (str, list, dict)) or value is None else str(value)


def stage_fingerprint(stage: str, member: str | None, version: Any, config: dict[str, Any],
                      upstream: dict[str, str], identity: str | None) -> str:
    """An instance's fingerprint from what goes into it (:meth:`Plan.expected`; the seed-layout
    migration recomputes it from what a manifest records)."""
    return digest({"stage": stage, "member": member, "version": version, "config": config,
                   "upstream": upstream, "identity": identity})


class Plan:
    """The instances of one config, and what the run directory says about each."""

    def __init__(self, graph: StageGraph, cfg: Config):
        self.graph = graph
        self.cfg = cfg
        self.instances: dict[str, Instance] = graph.instances(cfg)
        self._expected: dict[str, Expected] = {}

    # ---- selection ------------------------------------------------------------------------------
    def select(self, target: str = "all", with_deps: bool = False, downstream: bool = False) -> list[str]:
        """Instance names matched by ``target`` (``all``, a stage, ``family:member``, an instance),
        plus everything they need when ``with_deps`` and everything that needs them (directly or
        not) when ``downstream``; in run order."""
        names = list(self.instances)
        if target == "all":
            chosen = set(names)
        else:
            chosen = {
                n for n, inst in self.instances.items()
                if target in (n, inst.spec.name, n.split("@")[0])
            }
            if not chosen:
                spec = self.graph.specs.get(target.split(":")[0].split("@")[0])
                if spec is not None:
                    members = [n for n, i in self.instances.items() if i.spec is spec]
                    raise KdpipeError(
                        f"stage {target!r} is not part of this run; with the current settings "
                        f"{spec.name!r} has: {', '.join(members) or '(no instances)'}"
                    )
                raise KdpipeError(f"unknown stage {target!r}; {closest(target, ['all'] + names + list(self.graph.specs))}")
        targets = set(chosen)
        if with_deps:
            stack = list(chosen)
            while stack:
                for d in self.instances[stack.pop()].deps:
                    if d not in chosen:
                        chosen.add(d)
                        stack.append(d)
        if downstream:
            # what needs the targets (not what needs their dependencies); instances come in
            # dependency order, so one pass picks up dependents of dependents
            below = set(targets)
            for n in names:
                if n not in below and any(d in below for d in self.instances[n].deps):
                    below.add(n)
            chosen |= below
        return [n for n in names if n in chosen]

    # ---- fingerprints ---------------------------------------------------------------------------
    def config_for(self, name: str) -> Config:
        inst = self.instances[name]
        if inst.seed is None:
            return self.cfg
        return self.cfg.with_values({self.graph.seed_key: inst.seed})

    def expected(self, name: str) -> Expected:
        """The fingerprint the current config gives ``name`` (and what went into it)."""
        if name in self._expected:
            return self._expected[name]
        inst = self.instances[name]
        cfg = self.config_for(name)
        config = {key: cfg.fingerprint_value(key) for key in inst.reads(self.graph.seed_key)}
        config = {key: value for key, value in config.items() if value is not NOT_FINGERPRINTED}
        upstream = {d: self.expected(d).fingerprint for d in inst.deps}
        try:
            identity = digest(inst.spec.identity(cfg)) if inst.spec.identity is not None else None
        except InputsError:
            raise
        except KdpipeError as e:
            raise InputsError(name, str(e)) from None
        fp = stage_fingerprint(inst.spec.name, inst.member, inst.spec.version, config, upstream, identity)
        self._expected[name] = Expected(fp, config, upstream, identity, inst.spec.version)
        return self._expected[name]

    # ---- state ----------------------------------------------------------------------------------
    def status(self, run_dir: Path, name: str) -> StageStatus:
        """Done, stale (and why), missing or failed, judged from the folder and the current config."""
        inst = self.instances[name]
        folder = Path(run_dir) / inst.folder
        st = StageStatus(name, "missing", folder=inst.folder)
        try:
            exp = self.expected(name)
        except InputsError as e:
            st.reason = f"cannot check inputs: {e}" if e.stage == name else f"needs {e.stage}, whose inputs cannot be checked"
            return st
        st.fingerprint = exp.fingerprint
        manifest = read_manifest(folder)
        if manifest is None:
            failed = read_json_or_none(folder / FAILED)
            attempt = read_json_or_none(folder / ATTEMPT) or {}
            holder = RunLock.holder(run_dir)
            if holder is not None and attempt.get("pid") == holder and not failed:
                st.state, st.reason = "running", f"pid {holder}"
            elif isinstance(failed, dict):
                st.state, st.reason = "failed", str(failed.get("reason", "unknown reason"))
            elif (folder / MANIFEST).exists():
                st.state, st.reason = "stale", "manifest unreadable (corrupt or cut short); will re-run"
            elif (folder / CKPT).is_dir() and any((folder / CKPT).iterdir()):
                inputs = {d: outputs_digest(Path(run_dir) / self.instances[d].folder) for d in inst.deps}
                same = attempt.get("fingerprint") == exp.fingerprint and attempt.get("inputs", {}) == inputs
                st.reason = ("interrupted; will resume from its checkpoint" if same
                             else "interrupted; settings or inputs changed since, will restart")
            return st
        st.wall_time_s = manifest.get("wall_time_s")
        st.headline = headline(inst.spec, manifest.get("metrics") or {})
        why = self._why_stale(run_dir, inst, exp, manifest)
        if why:
            st.state, st.reason = "stale", why
        else:
            st.state = "done"
        return st

    def _why_stale(self, run_dir: Path, inst: Instance, exp: Expected, manifest: dict) -> str:
        if manifest.get("fingerprint") != exp.fingerprint:
            reasons = []
            if manifest.get("stage_version") != exp.version:
                reasons.append(f"stage code version {manifest.get('stage_version')} -> {exp.version}")
            reasons += _changes(manifest.get("config") or {}, exp.config, "now reads {}", "no longer reads {}", _diff_values)
            old_up = {k: v.get("fingerprint") for k, v in (manifest.get("upstream") or {}).items()}
            reasons += _changes(old_up, exp.upstream, "new upstream {}", "upstream {} removed",
                                lambda dep, old, new: [f"upstream {dep} changed"])
            if manifest.get("identity") != exp.identity:
                reasons.append("input data changed")
            return "; ".join(reasons) or "fingerprint changed"
        for dep, rec in (manifest.get("upstream") or {}).items():
            current = outputs_digest(Path(run_dir) / self.instances[dep].folder) if dep in self.instances else None
            if current is None:
                return f"upstream {dep} is not done"
            if current != rec.get("outputs"):
                return f"upstream {dep} was re-run (its outputs changed)"
        return verify_outputs(Path(run_dir) / inst.folder, manifest.get("outputs") or {})

    def statuses(self, run_dir: Path) -> list[StageStatus]:
        return [self.status(run_dir, n) for n in self.instances]


def headline(spec: StageSpec, metrics: dict) -> str:
    key = spec.headline
    if key is None:
        key = next((k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)), None)
    if key is None:
        return ""
    return format_metric(key, metrics)  # in the unit its stage registered (metric_units.py)


