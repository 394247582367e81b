"""Imports go one way: entry -> stages -> components -> foundations, and a stage never imports another.

Every module of ``kdpipe/`` has a layer (the table below, the README's "How the code is laid out"
has the same one). Every import counts, also those inside functions (kdpipe imports heavy things
lazily) and ``importlib.import_module("kdpipe....")`` with a literal name:

- a stage imports no other stage (``kdpipe/stages/__init__.py``, the registry, imports them all)
  and no entry module;
- a component imports no stage and no entry module (other components are fine);
- a foundation imports no component, stage or entry module.

The root package ``kdpipe`` (``__version__``, ``KdpipeError``) may be imported by anything; its
module-level imports are foundations, and it hands on ``kdpipe.run`` & co. from ``kdpipe.api``
lazily (PEP 562), the one import it makes into the entry layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "kdpipe"

# layer -> the packages and modules in it (a package covers its submodules)
LAYERS: dict[str, tuple[str, ...]] = {
    # what a user calls: the CLI and its commands, the Python API, and what builds the stage graph
    # for them; the benchmarks that drive the CLI in fresh processes sit beside the commands
    "entry": ("kdpipe.cli", "kdpipe.__main__", "kdpipe.commands", "kdpipe.api", "kdpipe.stage_graph", "kdpipe.open_run",
              "kdpipe.bench_memory", "kdpipe.gpu_check"),
    "stages": ("kdpipe.stages",),
    # the work itself; settings (the config sections and what they resolve to) is shared by stages
    "components": ("kdpipe.methods", "kdpipe.distill", "kdpipe.train", "kdpipe.infer", "kdpipe.eval", "kdpipe.report", "kdpipe.report_runs",
                   "kdpipe.settings", "kdpipe.world"),
    "foundations": ("kdpipe.pipeline", "kdpipe.artefacts", "kdpipe.io", "kdpipe.dist", "kdpipe.config", "kdpipe.data",
                    "kdpipe.clip", "kdpipe.errors", "kdpipe.progress", "kdpipe.timing", "kdpipe.lifetime"),
}
ORDER = ("foundations", "components", "stages", "entry")  # each may import only the layers before it
PACKAGE = "kdpipe"
REGISTRY = "kdpipe.stages"  # the stages package itself: it imports every stage


def layer_of(module: str) -> str | None:
    for layer, names in LAYERS.items():
        if any(module == n or module.startswith(n + ".") for n in names):
            return layer
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool) -> list[tuple[list[str], int, bool]]:
    """(the kdpipe modules one import may load, line, whether at module level) for every import in ``source``."""
    tree = ast.parse(source)
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([node.module] if node.module else []))
            # ``from kdpipe.stages import distill`` imports the module kdpipe.stages.distill
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and _is_import_call(node.func) and node.args and isinstance(node.args[0], ast.Constant):
            names = [str(node.args[0].value)]
        names = [n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")]
        if names:
            out.append((names, node.lineno, id(node) in top))
    return out


def _is_import_call(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """What breaks the rules of the module docs in ``source``, one line each."""
    mine = layer_of(module) if module != PACKAGE else "foundations"
    if mine is None:
        return [f"{module} has no layer: add it to LAYERS (and to the README's table)"]
    found = []
    for names, line, at_top in imports_of(source, module, is_package):
        for name in names:  # the first rule one import breaks is reported, once
            problem = _problem(module, mine, name, at_top)
            if problem:
                found.append(f"{module}:{line} imports {name}: {problem}")
                break
    return found


def _problem(module: str, mine: str, name: str, at_top: bool) -> str | None:
    if name == PACKAGE or name == module or (module != PACKAGE and name.startswith(module + ".")):
        return None  # the root package is anyone's; a package's own submodules are its own
    theirs = layer_of(name)
    if theirs is None or (module == PACKAGE and theirs == "entry" and not at_top):
        return None  # an unassigned name is reported where it is defined; the PEP 562 hand-on of kdpipe.api
    if mine == "stages" and theirs == "stages" and module != REGISTRY:
        return "a stage never imports another stage"
    if ORDER.index(theirs) > ORDER.index(mine):
        return f"{mine} never import {theirs}"
    return None


def kdpipe_modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_kdpipe_module_keeps_the_layering():
    found = []
    for path in kdpipe_modules():
        found += violations(module_name(path), path.read_text(encoding="utf-8"), path.name == "__init__.py")
    assert found == [], "\n".join(found)


def test_the_table_names_only_what_exists():
    """A layer entry naming nothing (a package moved or renamed) would let its successor go unchecked."""
    modules = {module_name(p) for p in kdpipe_modules()}
    stale = [n for names in LAYERS.values() for n in names if not any(m == n or m.startswith(n + ".") for m in modules)]
    assert stale == []


@pytest.mark.parametrize("module, source, said", [
    ("kdpipe.stages.shards", "def f():\n    from kdpipe.stages.distill import MIN_BATCH\n", "a stage never imports another stage"),
    ("kdpipe.stages.report", "from kdpipe.stages import evaluate\n", "a stage never imports another stage"),
    ("kdpipe.stages.teacher", "from . import fewshot\n", "a stage never imports another stage"),
    ("kdpipe.stages.world", "from kdpipe.commands.demo import run_demo\n", "stages never import entry"),
    ("kdpipe.infer.runs", "def f():\n    import kdpipe.stages\n", "components never import stages"),
    ("kdpipe.eval.scoring", "from kdpipe.commands import run\n", "components never import entry"),
    ("kdpipe.pipeline.graph", "def f():\n    import importlib\n    importlib.import_module('kdpipe.stages')\n",
     "foundations never import stages"),
    ("kdpipe.artefacts.evaluation", "def f():\n    from kdpipe.eval.metrics import MetricRow\n", "foundations never import components"),
    ("kdpipe.io", "from kdpipe.stage_graph import stage_graph\n", "foundations never import entry"),
    ("kdpipe", "from kdpipe.api import run\n", "foundations never import entry"),  # the hand-on is lazy only
    ("kdpipe.newthing", "import os\n", "has no layer"),
])
def test_a_module_breaking_the_rules_is_named(module, source, said):
    found = violations(module, source)
    assert len(found) == 1 and said in found[0], found


@pytest.mark.parametrize("module, source", [
    ("kdpipe.stages", "from kdpipe.stages import distill, shards\n"),  # the registry
    ("kdpipe.stages.distill", "from kdpipe.distill.batches import MIN_BATCH\nfrom kdpipe.settings import inputs\n"),
    ("kdpipe.distill.ensemble_sources", "from kdpipe.settings import teachers\nfrom kdpipe.methods.io import load_method\n"),
    ("kdpipe.commands.demo", "from kdpipe.stages.world import prepare_world_data\n"),
    ("kdpipe.pipeline.manifest", "def f():\n    import kdpipe\n    return kdpipe.__version__\n"),
    ("kdpipe", "def __getattr__(name):\n    from kdpipe import api\n"),
])
def test_imports_down_the_layers_are_allowed(module, source):
    assert violations(module, source, is_package=module in ("kdpipe", "kdpipe.stages")) == []
