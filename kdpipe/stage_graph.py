"""The stage graph the engine is handed: the pipeline's stages, or the user's.

:mod:`kdpipe.pipeline` runs whatever graph its callers pass and never imports a stage. The CLI,
``kdpipe.run()`` and the demo take theirs from :func:`stage_graph`: the global graph filled with the
modules ``$KDPIPE_STAGE_MODULES`` names (comma-separated module names or .py files) when it is set,
else with :mod:`kdpipe.stages`. A ``--jobs`` worker process rebuilds it the same way
(``graph.source``, read by :mod:`kdpipe.pipeline.parallel`).
"""

from __future__ import annotations

import os

from kdpipe.pipeline.graph import GRAPH, STAGE_MODULES_ENV, StageGraph

PIPELINE_STAGES = "kdpipe.stages"


def stage_modules() -> list[str]:
    """The modules that fill the graph: ``$KDPIPE_STAGE_MODULES``, else the pipeline's own stages."""
    named = [m.strip() for m in os.environ.get(STAGE_MODULES_ENV, "").split(",") if m.strip()]
    return named or [PIPELINE_STAGES]


def stage_graph() -> StageGraph:
    """The global graph, filled (importing a module twice registers nothing twice)."""
    GRAPH.load_modules(stage_modules())
    GRAPH.source = (__name__, rebuilt.__name__)
    return GRAPH


def rebuilt(_empty: StageGraph) -> StageGraph:
    """What a ``--jobs`` worker calls for the graph (a builder takes an empty graph): the same
    global graph, filled in the worker's own process."""
    return stage_graph()
