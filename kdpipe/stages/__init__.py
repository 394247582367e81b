"""The PromptKD pipeline stages; importing this package registers their config sections and stages.

teacher:<method> -> text-features -> distill -> evaluate -> report, with shards feeding distill
(and teacher-cache, when ``distill.cache_views > 0``) and baseline:<method> feeding evaluate.
teacher, text-features, distill, baseline and evaluate run once per seed (``run.seeds``); report
combines every seed and their mean.

This package is the stage registry: it alone imports the stage modules, which never import each
other (what two stages share lives in a component or in :mod:`kdpipe.artefacts`).
"""

from kdpipe.settings import sections  # noqa: F401  (config sections first: stages read them)
# registration order is the order status lists and a run starts independent stages in
from kdpipe.stages import baseline, teacher_cache, vocabulary_features, distill, evaluate, report, shards, teacher, text_features, world  # noqa: F401
from kdpipe.stages import metric_formats  # noqa: F401  (how their headline metrics print)
