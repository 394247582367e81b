"""The stage graph: registration, fingerprints, manifests, resume, status and the run-dir lock.

A stage is a function ``run(ctx: StageContext) -> dict`` (its metrics) registered with
:func:`register_stage`, naming the config keys it reads, the stages it needs and the files it
writes. Each stage instance gets a folder in the run directory and, when it finishes, a
``manifest.json`` written last and atomically. The stage is *done* when that manifest is readable,
of a compatible format, has the fingerprint the current config gives, and its outputs are present
with the recorded hashes. Anything else makes it missing, stale or failed, and ``run`` redoes it.

Fingerprint = sha256 of (the values of the keys the stage reads, the fingerprints of its upstream
stages, the identity of the user inputs it declares, the stage's code version). Only what a stage
reads counts, so changing ``distill.lr`` redoes distill and what follows, never the teacher.

Two ways one registration becomes several instances:

- a *family* (``expand=`` a function of the config returning member names): ``baseline`` with
  members ``zeroshot, coop`` gives ``baseline:zeroshot`` and ``baseline:coop`` (folders
  ``baseline-zeroshot/`` ...). ``reads`` may name ``{member}``, e.g. ``"baselines.{member}"``.
- *seeded* stages (``seeded=True``): with ``run.seeds = [1, 2, 3]`` they become ``distill@seed1``
  ... (folders ``distill-seed1/`` ...), each seeing ``run.seed`` set to its seed.

A stage depending on a family or seeded stage gets every instance of it in ``ctx.inputs``, keyed
by instance name; a seeded stage depending on a seeded stage gets only the one with its own seed,
also under the plain name (``ctx.inputs["distill"]``).

Under ``torchrun`` every rank calls :func:`run_stages` and runs each stage function (so a stage can
train with DDP); rank 0 alone takes the lock, decides what runs and writes manifests, and the other
ranks follow its decisions over the default process group, which the runner initialises.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from kdpipe.config import NOT_FINGERPRINTED, SCHEMA, Config, ConfigSchema, jsonable
from kdpipe.errors import KdpipeError
from kdpipe.progress import Progress, close_logger, format_duration, stage_logger

MANIFEST_FORMAT = "kdpipe-stage-manifest"
MANIFEST_VERSION = 1  # bump when manifests change incompatibly; older run dirs then fail clearly
MANIFEST = "manifest.json"
FAILED = "failed.json"
ATTEMPT = ".attempt.json"  # fingerprint of the last started attempt: decides whether ckpt/ is kept
LOG = "log.txt"
CKPT = "ckpt"
LOCK = ".kdpipe.lock"
RUN_SETTINGS = "run.json"
# Files of the stage folder that are bookkeeping, not outputs (never hashed into the manifest).
_NOT_OUTPUTS = {MANIFEST, FAILED, ATTEMPT, LOG}

SEED_KEY = "run.seed"
SEEDS_KEY = "run.seeds"
STAGE_MODULES_ENV = "KDPIPE_STAGE_MODULES"

StageFn = Callable[["StageContext"], "dict[str, Any] | None"]


# ---- small io helpers ---------------------------------------------------------------------------
def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_json_default)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars in metrics
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj):
        return jsonable(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or unreadable (a corrupt file counts as absent)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def digest(obj: Any) -> str:
    """sha256 of a JSON value in canonical form."""
    text = json.dumps(jsonable(obj), sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def dir_listing(root: str | os.PathLike, pattern: str = "**/*") -> list[tuple[str, int, int]]:
    """The identity of a folder of user data: (relative path, size, mtime in ns) of every file.

    Cheap (no file is read) and changes whenever a file is added, removed or rewritten; use it as
    (part of) a stage's ``identity``. A missing folder raises KdpipeError.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise KdpipeError(f"data folder {root} does not exist; pass the right --data-root")
    if root.is_file():
        st = root.stat()
        return [(root.name, st.st_size, st.st_mtime_ns)]
    out = []
    for p in sorted(root.glob(pattern)):
        if p.is_file():
            st = p.stat()
            out.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    return out


def library_versions() -> dict[str, str]:
    """Versions recorded in manifests (read from package metadata: no heavy imports)."""
    from importlib.metadata import PackageNotFoundError, version

    import kdpipe

    out = {"kdpipe": kdpipe.__version__, "python": sys.version.split()[0]}
    for key, dist in (("torch", "torch"), ("open_clip", "open_clip_torch")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "not installed"
    return out


def folder_name(instance_name: str) -> str:
    """``baseline:coop@seed1`` -> ``baseline-coop-seed1`` (safe on every file system)."""
    return instance_name.replace(":", "-").replace("@", "-")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- registration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageSpec:
    name: str
    fn: StageFn
    reads: tuple[str, ...] = ()  # dotted keys or whole sections; may contain "{member}"
    deps: tuple[str, ...] = ()  # registered stage names (a family name means all its members)
    outputs: tuple[str, ...] = ()  # files (or glob patterns) the stage must leave in its folder
    identity: Callable[[Config], Any] | None = None  # identity of user inputs (e.g. dir_listing)
    expand: Callable[[Config], list[str]] | None = None  # family: config -> member names
    seeded: bool = False  # one instance per seed of run.seeds
    headline: str | None = None  # metric shown by ``kdpipe status``
    version: int = 1  # bump when the stage's code changes what it writes: old results go stale
    description: str = ""
    # optional stages: ``feeds`` names stages that depend on this one without naming it (a demo
    # stage upstream of the pipeline's own), ``when(cfg)`` False gives the stage no instances
    feeds: tuple[str, ...] = ()
    when: Callable[[Config], bool] | None = None


@dataclass
class Instance:
    """One concrete stage to run: a registration, its family member and its seed."""

    name: str
    spec: StageSpec
    member: str | None
    seed: int | None
    deps: list[str]
    folder: str

    def reads(self, seed_key: str) -> list[str]:
        keys = [r.replace("{member}", self.member or "") for r in self.spec.reads]
        if self.spec.seeded and seed_key not in keys:
            keys.append(seed_key)
        return keys


class StageGraph:
    """A registry of stages with the config schema they read. ``GRAPH`` is the global one."""

    def __init__(self, schema: ConfigSchema | None = None, seed_key: str = SEED_KEY, seeds_key: str = SEEDS_KEY):
        self.schema = schema if schema is not None else ConfigSchema()
        self.seed_key = seed_key
        self.seeds_key = seeds_key
        self.specs: dict[str, StageSpec] = {}
        # (Python file or module, builder name): how worker processes rebuild a graph other than
        # the global one for ``run_stages(jobs > 1)``; builder(StageGraph()) returns the graph
        self.source: tuple[str, str] | None = None

    def stage(
        self,
        name: str,
        reads: Iterable[str] = (),
        deps: Iterable[str] = (),
        outputs: Iterable[str] = (),
        identity: Callable[[Config], Any] | None = None,
        expand: Callable[[Config], list[str]] | None = None,
        seeded: bool = False,
        headline: str | None = None,
        version: int = 1,
        description: str = "",
        feeds: Iterable[str] = (),
        when: Callable[[Config], bool] | None = None,
    ) -> Callable[[StageFn], StageFn]:
        """Decorator registering ``fn(ctx) -> metrics`` as stage ``name`` (see the module docs)."""
        if not name or any(c in name for c in ":@/\\ "):
            raise ValueError(f"stage name {name!r} must be non-empty without ':', '@', '/', spaces")

        def wrap(fn: StageFn) -> StageFn:
            old = self.specs.get(name)
            if old is not None and old.fn.__qualname__ != fn.__qualname__:
                raise ValueError(f"stage {name!r} is already registered by {old.fn.__module__}.{old.fn.__qualname__}")
            self.specs[name] = StageSpec(
                name=name, fn=fn, reads=tuple(reads), deps=tuple(deps), outputs=tuple(outputs), identity=identity,
                expand=expand, seeded=seeded, headline=headline, version=version,
                description=description or (fn.__doc__ or "").strip().split("\n")[0],
                feeds=tuple(feeds), when=when,
            )
            return fn

        return wrap

    # ---- planning -------------------------------------------------------------------------------
    def deps_of(self, name: str) -> tuple[str, ...]:
        """The stages ``name`` needs: its own ``deps`` plus the registered stages that ``feed`` it."""
        fed_by = tuple(s.name for s in self.specs.values() if name in s.feeds and s.name != name)
        return self.specs[name].deps + tuple(d for d in fed_by if d not in self.specs[name].deps)

    def _order(self) -> list[StageSpec]:
        order: list[StageSpec] = []
        state: dict[str, int] = {}

        def visit(name: str, path: tuple[str, ...]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise KdpipeError(f"stage graph has a cycle: {' -> '.join(path + (name,))}")
            state[name] = 1
            for dep in self.deps_of(name):
                base = dep.split(":")[0]
                if base not in self.specs:
                    raise KdpipeError(f"stage {name!r} needs {dep!r}, which is not registered; {_closest(base, list(self.specs))}")
                visit(base, path + (name,))
            state[name] = 2
            order.append(self.specs[name])

        for name in self.specs:
            visit(name, ())
        return order

    def seeds(self, cfg: Config) -> list[int]:
        if self.seeds_key not in self.schema.keys():
            return []
        seeds = [int(s) for s in (cfg.value(self.seeds_key) or [])]
        if len(set(seeds)) != len(seeds):
            raise KdpipeError(f"{self.seeds_key} lists a seed twice: {seeds}")
        return seeds

    def plan(self, cfg: Config) -> "Plan":
        """Expand families and seeds into instances, in dependency order."""
        seeds = self.seeds(cfg)
        by_spec: dict[str, list[Instance]] = {}
        instances: dict[str, Instance] = {}
        for spec in self._order():
            if spec.seeded and self.seed_key not in self.schema.keys():
                raise KdpipeError(f"stage {spec.name!r} is seeded but no config key {self.seed_key!r} is registered")
            members: list[str | None] = [None]
            if spec.when is not None and not spec.when(cfg):
                members = []
            elif spec.expand is not None:
                members = list(spec.expand(cfg))
                for m in members:
                    if not isinstance(m, str) or not m or any(c in m for c in ":@/\\ "):
                        raise KdpipeError(f"stage family {spec.name!r}: bad member name {m!r}")
                if len(set(members)) != len(members):
                    raise KdpipeError(f"stage family {spec.name!r} lists a member twice: {members}")
            seed_list: list[int | None] = list(seeds) if (spec.seeded and seeds) else [None]
            by_spec[spec.name] = []
            for member in members:
                for seed in seed_list:
                    name = spec.name + (f":{member}" if member else "") + (f"@seed{seed}" if seed is not None else "")
                    deps: list[str] = []
                    for dep in self.deps_of(spec.name):
                        base, _, want_member = dep.partition(":")
                        for d in by_spec[base]:
                            if want_member and d.member != want_member:
                                continue
                            if seed is not None and d.seed is not None and d.seed != seed:
                                continue
                            deps.append(d.name)
                    inst = Instance(name, spec, member, seed, deps, folder_name(name))
                    by_spec[spec.name].append(inst)
                    instances[name] = inst
        return Plan(self, cfg, instances)

    def load_stage_modules(self) -> None:
        """Fill the registry: ``$KDPIPE_STAGE_MODULES`` (comma-separated module names or .py files)
        when set, else the pipeline's own ``kdpipe.stages`` package when it exists."""
        spec = os.environ.get(STAGE_MODULES_ENV, "").strip()
        if spec:
            for item in (s.strip() for s in spec.split(",")):
                if item:
                    _import_module_or_file(item)
        elif importlib.util.find_spec("kdpipe.stages") is not None:
            importlib.import_module("kdpipe.stages")


def _import_module_or_file(item: str) -> None:
    if item.endswith(".py") or os.sep in item:
        path = Path(item).expanduser().resolve()
        if not path.is_file():
            raise KdpipeError(f"{STAGE_MODULES_ENV}: {item} is not a file")
        name = f"kdpipe_user_stages_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
        if name in sys.modules:
            return
        mod_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        mod_spec.loader.exec_module(module)
    else:
        try:
            importlib.import_module(item)
        except ModuleNotFoundError as e:
            raise KdpipeError(f"{STAGE_MODULES_ENV}: cannot import {item!r} ({e})") from None


GRAPH = StageGraph(SCHEMA)
register_stage = GRAPH.stage


def _pipeline() -> StageGraph:
    """The global graph with the pipeline's stages registered (library callers need not import them)."""
    GRAPH.load_stage_modules()
    return GRAPH


def _closest(name: str, options: Iterable[str]) -> str:
    options = sorted(set(options))
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else "known: " + (", ".join(options) or "(none)")


# ---- state of one instance ----------------------------------------------------------------------
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
class _Expected:
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


def _show(value: Any) -> str:
    if value is _UNSET:
        return "(unset)"
    return json.dumps(value) if isinstance(value, (str, list, dict)) or value is None else str(value)


class Plan:
    """The instances of one config, and what the run directory says about each."""

    def __init__(self, graph: StageGraph, cfg: Config, instances: dict[str, Instance]):
        self.graph = graph
        self.cfg = cfg
        self.instances = instances
        self._expected: dict[str, _Expected] = {}

    # ---- selection ------------------------------------------------------------------------------
    def select(self, target: str = "all", with_deps: bool = False) -> list[str]:
        """Instance names matched by ``target`` (``all``, a stage, ``family:member``, an instance),
        plus everything they need when ``with_deps``; in run order."""
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
                raise KdpipeError(f"unknown stage {target!r}; {_closest(target, ['all'] + names + list(self.graph.specs))}")
        if with_deps:
            stack = list(chosen)
            while stack:
                for d in self.instances[stack.pop()].deps:
                    if d not in chosen:
                        chosen.add(d)
                        stack.append(d)
        return [n for n in names if n in chosen]

    # ---- fingerprints ---------------------------------------------------------------------------
    def config_for(self, name: str) -> Config:
        inst = self.instances[name]
        if inst.seed is None:
            return self.cfg
        return self.cfg.with_values({self.graph.seed_key: inst.seed})

    def expected(self, name: str) -> _Expected:
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
        fp = digest({
            "stage": inst.spec.name, "member": inst.member, "version": inst.spec.version,
            "config": config, "upstream": upstream, "identity": identity,
        })
        self._expected[name] = _Expected(fp, config, upstream, identity, inst.spec.version)
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
            failed = _read_json(folder / FAILED)
            attempt = _read_json(folder / ATTEMPT) or {}
            holder = RunLock.holder(run_dir)
            if holder is not None and attempt.get("pid") == holder and not failed:
                st.state, st.reason = "running", f"pid {holder}"
            elif isinstance(failed, dict):
                st.state, st.reason = "failed", str(failed.get("reason", "unknown reason"))
            elif (folder / MANIFEST).exists():
                st.state, st.reason = "stale", "manifest unreadable (corrupt or cut short); will re-run"
            elif (folder / CKPT).is_dir() and any((folder / CKPT).iterdir()):
                same = attempt.get("fingerprint") == exp.fingerprint
                st.reason = "interrupted; will resume from its checkpoint" if same else "interrupted; settings changed since, will restart"
            return st
        st.wall_time_s = manifest.get("wall_time_s")
        st.headline = _headline(inst.spec, manifest.get("metrics") or {})
        why = self._why_stale(run_dir, inst, exp, manifest)
        if why:
            st.state, st.reason = "stale", why
        else:
            st.state = "done"
        return st

    def _why_stale(self, run_dir: Path, inst: Instance, exp: _Expected, manifest: dict) -> str:
        if manifest.get("fingerprint") != exp.fingerprint:
            reasons = []
            if manifest.get("stage_version") != exp.version:
                reasons.append(f"stage code version {manifest.get('stage_version')} -> {exp.version}")
            old_cfg = manifest.get("config") or {}
            for key in sorted(set(old_cfg) | set(exp.config)):
                if key not in old_cfg:
                    reasons.append(f"now reads {key}")
                elif key not in exp.config:
                    reasons.append(f"no longer reads {key}")
                elif old_cfg[key] != exp.config[key]:
                    reasons += _diff_values(key, old_cfg[key], exp.config[key])
            old_up = {k: v.get("fingerprint") for k, v in (manifest.get("upstream") or {}).items()}
            for dep in sorted(set(old_up) | set(exp.upstream)):
                if dep not in old_up:
                    reasons.append(f"new upstream {dep}")
                elif dep not in exp.upstream:
                    reasons.append(f"upstream {dep} removed")
                elif old_up[dep] != exp.upstream[dep]:
                    reasons.append(f"upstream {dep} changed")
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


def _headline(spec: StageSpec, metrics: dict) -> str:
    key = spec.headline
    if key is None:
        key = next((k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)), None)
    if key is None or metrics.get(key) is None:
        return ""
    value = metrics[key]
    return f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"


# ---- manifests ----------------------------------------------------------------------------------
class ManifestVersionError(KdpipeError):
    pass


def _check_format(data: dict, where: Path) -> None:
    version = data.get("format_version")
    if version != MANIFEST_VERSION:
        raise ManifestVersionError(
            f"{where} was written by kdpipe {data.get('versions', {}).get('kdpipe', data.get('kdpipe_version', '?'))} "
            f"(run-dir format {version}); this kdpipe reads format {MANIFEST_VERSION}: "
            f"use a new --run-dir or the kdpipe version that wrote it"
        )


def read_manifest(folder: Path) -> dict | None:
    """The stage's manifest, None when missing or corrupt; an incompatible format raises."""
    data = _read_json(Path(folder) / MANIFEST)
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None
    _check_format(data, Path(folder) / MANIFEST)
    if not isinstance(data.get("fingerprint"), str) or not isinstance(data.get("outputs"), dict):
        return None
    return data


def outputs_digest(folder: Path) -> str | None:
    """A hash of a done stage's outputs (what downstream manifests remember), None if not done."""
    try:
        manifest = read_manifest(folder)
    except ManifestVersionError:
        return None
    if manifest is None:
        return None
    return digest({k: v.get("sha256") for k, v in manifest["outputs"].items()})


def hash_outputs(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256, size and mtime of every file in the stage folder except checkpoints and bookkeeping."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or rel.parts[0] == CKPT or (len(rel.parts) == 1 and _is_bookkeeping(rel.name)):
            continue
        st = p.stat()
        out[rel.as_posix()] = {"sha256": sha256_file(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return out


def _is_bookkeeping(name: str) -> bool:
    return name in _NOT_OUTPUTS or (name.startswith("log.rank") and name.endswith(".txt"))


def verify_outputs(folder: Path, recorded: dict[str, dict[str, Any]]) -> str:
    """'' when every recorded output is present and unchanged, else why not.

    A file whose size and mtime match the record is trusted without re-hashing (as make and DVC
    do), so ``status`` stays quick on large shard sets; anything touched is hashed again.
    """
    for rel, rec in recorded.items():
        p = Path(folder) / rel
        if not p.is_file():
            return f"output {rel} is missing"
        st = p.stat()
        if st.st_size != rec.get("size"):
            return f"output {rel} was modified"
        if st.st_mtime_ns != rec.get("mtime_ns") and sha256_file(p) != rec.get("sha256"):
            return f"output {rel} was modified"
    return ""


# ---- the lock -----------------------------------------------------------------------------------
class RunLock:
    """An exclusive lock on a run directory (flock: released by the OS when its process dies, so
    a lock file left by a killed run never blocks the next one)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f" (pid {pid})" if pid else ""
            raise KdpipeError(
                f"run dir {self.path.parent} is in use by another kdpipe run{who}; wait for it to finish or use another --run-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def holder(run_dir: Path) -> int | None:
        """The pid of the process holding the lock, None when nobody does."""
        path = Path(run_dir) / LOCK
        if not path.exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).decode().strip() or 0) or None
    except (OSError, ValueError):
        return None


# ---- run settings (what the run dir was last run with) ------------------------------------------
def read_run_settings(run_dir: Path) -> dict | None:
    """``run.json``: the recipe and overrides the run dir was last run with; None when absent."""
    data = _read_json(Path(run_dir) / RUN_SETTINGS)
    if data is None:
        if (Path(run_dir) / RUN_SETTINGS).exists():
            raise KdpipeError(f"{Path(run_dir) / RUN_SETTINGS} is unreadable; fix or delete it")
        return None
    _check_format(data, Path(run_dir) / RUN_SETTINGS)
    return data


def write_run_settings(run_dir: Path, recipe: str | None, overrides: dict[str, Any]) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    write_json_atomic(Path(run_dir) / RUN_SETTINGS, {
        "format_version": MANIFEST_VERSION, "kdpipe_version": library_versions()["kdpipe"],
        "recipe": recipe, "overrides": overrides, "updated_at": _now(),
    })


def check_run_dir(run_dir: Path) -> None:
    """Fail in one line when the run dir was written by an incompatible kdpipe."""
    run_dir = Path(run_dir)
    read_run_settings(run_dir)
    if run_dir.is_dir():
        for child in sorted(run_dir.iterdir()):
            data = _read_json(child / MANIFEST) if child.is_dir() else None
            if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT:
                _check_format(data, child / MANIFEST)


# ---- the stage context --------------------------------------------------------------------------
@dataclass
class StageContext:
    """What a stage function gets: its config, folders, upstream folders, log and progress."""

    name: str  # instance name, e.g. "baseline:coop@seed1"
    stage: str  # registered name, e.g. "baseline"
    member: str | None  # family member, e.g. "coop"
    seed: int | None  # the seed (run.seed as this instance sees it)
    cfg: Config
    dir: Path  # this stage's folder: write outputs here
    ckpt_dir: Path  # kept while the fingerprint is unchanged: save resumable state here
    inputs: dict[str, Path]  # upstream instance name (and plain stage name when unique) -> folder
    run_dir: Path
    log: logging.Logger
    fingerprint: str = ""
    reads: tuple[str, ...] = ()  # the config keys this instance declared
    upstream: tuple[str, ...] = ()  # upstream instance names (``inputs`` also has plain aliases)
    rank: int = 0  # under torchrun: this process's rank; only rank 0 should write outputs
    world_size: int = 1

    def progress(self, total: int | None, desc: str | None = None, unit: str = "step", initial: int = 0) -> Progress:
        """A progress bar (rich on a terminal, plain lines in CI) that also writes to the stage log."""
        return Progress(total, desc or self.name, unit=unit, initial=initial, log=self.log, quiet=self.rank != 0)

    def inputs_of(self, stage: str) -> dict[str, Path]:
        """All upstream instances of a registered stage or family: instance name -> folder."""
        return {n: self.inputs[n] for n in self.upstream if n.split("@")[0].split(":")[0] == stage}

    def metrics_of(self, name: str) -> dict[str, Any]:
        """The metrics an upstream instance recorded in its manifest."""
        if name not in self.inputs:
            raise KdpipeError(f"stage {self.name} has no input {name!r}; it has: {', '.join(self.inputs)}")
        return (read_manifest(self.inputs[name]) or {}).get("metrics", {})

    def param(self, key: str) -> Any:
        """Read a config value this stage declared in ``reads`` (others would not be fingerprinted)."""
        if not any(key == r or key.startswith(r + ".") for r in self.reads):
            raise KdpipeError(f"stage {self.stage} reads {key!r} without declaring it; add it to reads=[...]")
        return self.cfg.value(key)


# ---- running --------------------------------------------------------------------------------------
@dataclass
class RunReport:
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)


def _echo_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Ranks:
    """Who decides under ``torchrun``: rank 0 holds the lock, checks states and writes manifests;
    the other ranks run the same stage functions (their DDP peers) and follow rank 0's decisions,
    received over the default process group (initialised here when torchrun started us)."""

    def __init__(self) -> None:
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.leader = self.rank == 0
        self.created_group = False

    def close(self) -> None:
        """Leave together, and tear down the process group if this runner made it (a process that
        exits with a live gloo group aborts)."""
        if self.world == 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            if self.created_group:
                dist.destroy_process_group()

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (JSON over a CPU tensor: nothing is unpickled)."""
        if self.world == 1:
            return obj
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            # cpu:gloo carries these small messages; cuda:nccl is there for the stages' own DDP.
            dist.init_process_group(backend="cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
            self.created_group = True
        data = json.dumps(obj).encode() if self.leader else b""
        size = torch.tensor([len(data)], dtype=torch.long)
        dist.broadcast(size, src=0)
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.leader else torch.empty(int(size), dtype=torch.uint8)
        dist.broadcast(buf, src=0)
        return json.loads(bytes(buf.tolist()).decode())


def run_stages(
    cfg: Config,
    run_dir: str | Path,
    target: str = "all",
    with_deps: bool = False,
    force: bool = False,
    graph: StageGraph | None = None,
    echo: Callable[[str], None] = _echo_stderr,
    on_locked: Callable[[], None] | None = None,
    jobs: int = 1,
) -> RunReport:
    """Run what is missing or stale among ``target`` (and, with ``with_deps``, what it needs).

    ``force`` re-runs the targets even when done (not the dependencies pulled in by ``with_deps``).
    A dependency outside the selection that is not done stops the run with one line saying what
    to run. ``on_locked`` runs once the run-dir lock is held (the CLI saves its settings there).
    Under ``torchrun`` every rank calls this; rank 0 decides and the others follow (see _Ranks).
    ``jobs`` > 1 runs stages whose inputs are ready side by side in worker processes (not under
    torchrun, where the ranks already share the machine; see :mod:`kdpipe.dag_jobs`).
    """
    if jobs < 1:
        raise KdpipeError(f"jobs must be at least 1, got {jobs}")
    graph = graph if graph is not None else _pipeline()
    run_dir = Path(run_dir)
    ranks = _Ranks()
    plan = graph.plan(cfg)
    selected = plan.select(target, with_deps)
    targets = set(plan.select(target, False))
    for name in selected:
        plan.expected(name)  # bad inputs (a missing data root ...) fail here, before anything is touched
    report = RunReport()
    lock = RunLock(run_dir)

    def decide(name: str) -> dict[str, Any]:
        """Rank 0: skip or run ``name`` (and prepare its folder when running)."""
        inst = plan.instances[name]
        for dep in inst.deps:
            if dep not in selected and dep not in report.ran:
                st = plan.status(run_dir, dep)
                if st.state != "done":
                    raise KdpipeError(
                        f"stage {name} needs {dep}, which is {st.state}{' (' + st.reason + ')' if st.reason else ''}; "
                        f"run `kdpipe run {target} --with-deps` or `kdpipe run {dep}` first"
                    )
        st = plan.status(run_dir, name)
        if st.state == "done" and not (force and name in targets):
            echo(f"skip  {name}: done{'  ' + st.headline if st.headline else ''}")
            return {"run": False}
        why = "forced" if st.state == "done" else (f"{st.state}: {st.reason}" if st.reason else st.state)
        echo(f"run   {name} ({why})")
        _prepare(run_dir / inst.folder, plan.expected(name).fingerprint, fresh=force and name in targets)
        return {"run": True}

    def leader_step(step: Callable[[], Any]) -> Any:
        # Rank 0 runs ``step``; an error there reaches the other ranks as the same one line.
        if not ranks.leader:
            msg = ranks.share(None)
        else:
            try:
                msg = {"ok": step()}
            except KdpipeError as e:
                ranks.share({"error": str(e)})
                raise
            ranks.share(msg)
        if "error" in msg:
            raise KdpipeError(msg["error"])
        return msg["ok"]

    def take_lock() -> None:
        lock.__enter__()
        check_run_dir(run_dir)
        if on_locked is not None:
            on_locked()

    def finished(name: str, metrics: dict[str, Any], wall: float) -> None:
        head = _headline(plan.instances[name].spec, metrics)
        if ranks.leader:
            echo(f"done  {name} in {format_duration(wall)}{'  ' + head if head else ''}")
        report.ran.append(name)
        report.metrics[name] = metrics

    try:
        leader_step(take_lock)
        if jobs > 1 and ranks.world == 1:
            from kdpipe.dag_jobs import run_parallel

            run_parallel(plan, selected, jobs, graph, cfg, run_dir, decide, finished,
                         report.skipped.append)
        else:
            for name in selected:
                if not leader_step(lambda: decide(name))["run"]:
                    report.skipped.append(name)
                    continue
                finished(name, *_execute(plan, run_dir, plan.instances[name], ranks))
    finally:
        lock.__exit__(None, None, None)
    ranks.close()
    return report


def _clear_folder(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _prepare(folder: Path, fingerprint: str, fresh: bool) -> None:
    """Make the folder ready for an attempt: no manifest, and a checkpoint only if it is ours."""
    folder.mkdir(parents=True, exist_ok=True)
    # The old manifest goes first: a crash from here on can never leave it looking valid.
    (folder / MANIFEST).unlink(missing_ok=True)
    (folder / FAILED).unlink(missing_ok=True)
    attempt = _read_json(folder / ATTEMPT) or {}
    if fresh or attempt.get("fingerprint") != fingerprint:
        # Other settings (or --force): checkpoints and half-written outputs are not ours to resume.
        _clear_folder(folder)
    write_json_atomic(folder / ATTEMPT, {"fingerprint": fingerprint, "pid": os.getpid(), "started_at": _now()})
    (folder / CKPT).mkdir(exist_ok=True)


def _execute(plan: Plan, run_dir: Path, inst: Instance, ranks: _Ranks) -> tuple[dict[str, Any], float]:
    exp = plan.expected(inst.name)
    folder = run_dir / inst.folder
    ckpt = folder / CKPT
    cfg = plan.config_for(inst.name)
    inputs: dict[str, Path] = {}
    plain_names: dict[str, list[str]] = {}
    for d in inst.deps:
        inputs[d] = run_dir / plan.instances[d].folder
        plain_names.setdefault(d.split("@")[0], []).append(d)
    for plain, names in plain_names.items():
        if len(names) == 1 and plain not in inputs:
            inputs[plain] = inputs[names[0]]
    # Other ranks log to their own file and stay off the console (rank 0 speaks for the run).
    log_file = folder / (LOG if ranks.leader else f"log.rank{ranks.rank}.txt")
    log = stage_logger(inst.name if ranks.leader else f"{inst.name}.rank{ranks.rank}", log_file, console=ranks.leader)
    log.debug(f"start {inst.name} fingerprint {exp.fingerprint} reads {json.dumps(exp.config, sort_keys=True)}")
    seed = inst.seed if inst.seed is not None else (cfg.value(plan.graph.seed_key) if plan.graph.seed_key in plan.graph.schema.keys() else None)
    ctx = StageContext(
        name=inst.name, stage=inst.spec.name, member=inst.member, seed=seed, cfg=cfg, dir=folder, ckpt_dir=ckpt,
        inputs=inputs, run_dir=run_dir, log=log, fingerprint=exp.fingerprint, reads=tuple(inst.reads(plan.graph.seed_key)),
        upstream=tuple(inst.deps), rank=ranks.rank, world_size=ranks.world,
    )
    t0 = time.monotonic()
    started = _now()
    try:
        metrics = inst.spec.fn(ctx) or {}
        if not isinstance(metrics, dict):
            raise KdpipeError(f"stage {inst.name} returned {type(metrics).__name__}; a stage returns a dict of metrics")
        wall = time.monotonic() - t0
        metrics = json.loads(json.dumps(metrics, default=_json_default))
        if not ranks.leader:
            return metrics, wall
        for pattern in inst.spec.outputs:
            if not any(p.is_file() for p in folder.glob(pattern)):
                raise KdpipeError(f"stage {inst.name} did not write its declared output {pattern}")
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "stage": inst.name,
            "stage_version": inst.spec.version,
            "fingerprint": exp.fingerprint,
            "config": exp.config,
            "upstream": {
                d: {"fingerprint": exp.upstream[d], "outputs": outputs_digest(run_dir / plan.instances[d].folder)}
                for d in inst.deps
            },
            "identity": exp.identity,
            "outputs": hash_outputs(folder),
            "metrics": metrics,
            "wall_time_s": round(wall, 3),
            "started_at": started,
            "finished_at": _now(),
            "versions": library_versions(),
            "world_size": ranks.world,
        }
        write_json_atomic(folder / MANIFEST, manifest)
        log.debug(f"done in {format_duration(wall)}")
        return metrics, wall
    except KeyboardInterrupt:
        # Not a failure of the stage: status reports it as interrupted (and resumable from ckpt/).
        log.warning("interrupted; run the same command again to resume")
        raise
    except BaseException as e:
        if isinstance(e, KdpipeError):
            reason = _one_line(str(e))
        else:
            reason = _one_line(f"{type(e).__name__}: {e} (traceback in {log_file})")
        log.error(f"failed: {reason}")
        log.debug("".join(traceback.format_exception(type(e), e, e.__traceback__)))
        if ranks.leader:
            write_json_atomic(folder / FAILED, {"reason": reason, "error": type(e).__name__, "at": _now()})
        raise
    finally:
        close_logger(log)


def stage_statuses(cfg: Config, run_dir: str | Path, graph: StageGraph | None = None) -> list[StageStatus]:
    """What ``kdpipe status`` shows: every instance of the current config and its state."""
    graph = graph if graph is not None else _pipeline()
    check_run_dir(Path(run_dir))
    return graph.plan(cfg).statuses(Path(run_dir))


def summarize(rows: list[StageStatus]) -> str:
    """``3 done, 1 stale, 2 missing``."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in counts.items())


def format_status(rows: list[StageStatus]) -> str:
    """Plain aligned text (also what CI logs get)."""
    table = [("stage", "state", "time", "metric", "why")]
    for r in rows:
        table.append((r.name, r.state, format_duration(r.wall_time_s) if r.wall_time_s is not None else "-", r.headline or "-", r.reason or ""))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + ("  " + row[4] if row[4] else "")
        for row in table
    ).rstrip()
