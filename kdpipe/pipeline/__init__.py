"""The pipeline engine: registration, fingerprints, manifests, resume, status and the run-dir lock.

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
  ... (folders ``distill-seed1/`` ...), each seeing ``run.seed`` set to its seed. Without
  ``run.seeds`` the one instance is ``run.seed``'s (``distill@seed1``), so adding seeds later reuses
  it; folders of the older unseeded layout are moved once (:mod:`~kdpipe.pipeline.seed_layout_migration`).

A stage depending on a family or seeded stage gets every instance of it in ``ctx.inputs``, keyed
by instance name; a seeded stage depending on a seeded stage gets only the one with its own seed,
also under the plain name (``ctx.inputs["distill"]``).

Under ``torchrun`` every rank calls :func:`run_stages` and runs each stage function (so a stage can
train with DDP); rank 0 alone takes the lock, decides what runs and writes manifests, and the other
ranks follow its decisions over the default process group, which the runner initialises.

The modules, along the seams DVC draws: :mod:`~kdpipe.pipeline.graph` (registry and instances),
:mod:`~kdpipe.pipeline.plan` (fingerprints and states), :mod:`~kdpipe.pipeline.manifest` and
:mod:`~kdpipe.pipeline.hashing` (what a done stage records), :mod:`~kdpipe.pipeline.lock` (one run
per run dir, ``run.json``), :mod:`~kdpipe.pipeline.execute` (one instance),
:mod:`~kdpipe.pipeline.runner` and :mod:`~kdpipe.pipeline.parallel` (many, in order or side by
side) and :mod:`~kdpipe.pipeline.status`. Stages import what they need from here; the engine is
handed the graph of stages to run (:mod:`kdpipe.stage_graph`) and never imports one.
"""

from kdpipe.pipeline.context import StageContext
from kdpipe.pipeline.graph import GRAPH, SEED_KEY, SEEDS_KEY, STAGE_MODULES_ENV, StageGraph, StageSpec, register_stage
from kdpipe.pipeline.hashing import digest, dir_listing, sha256_file
from kdpipe.pipeline.lock import RunLock, check_run_dir, read_run_settings, remembered_settings, write_run_settings
from kdpipe.pipeline.manifest import ManifestVersionError, read_manifest
from kdpipe.pipeline.plan import Plan, StageStatus
from kdpipe.pipeline.runner import RunReport, run_stages
from kdpipe.pipeline.status import format_status, stage_statuses, summarize

__all__ = [
    "GRAPH", "SEED_KEY", "SEEDS_KEY", "STAGE_MODULES_ENV", "ManifestVersionError", "Plan", "RunLock", "RunReport",
    "StageContext", "StageGraph", "StageSpec", "StageStatus", "check_run_dir", "digest", "dir_listing", "format_status",
    "read_manifest", "read_run_settings", "register_stage", "remembered_settings", "run_stages", "sha256_file", "stage_statuses",
    "summarize", "write_run_settings",
]
