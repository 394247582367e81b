"""The PromptKD pipeline stages; importing this package registers their config sections and stages.

teacher:<method> -> text-features -> distill -> evaluate -> report, with shards feeding distill
and baseline:<method> feeding evaluate. teacher, text-features, distill, baseline and evaluate run
once per seed (``run.seeds``); report combines every seed and their mean.
"""

from kdpipe.stages import sections  # noqa: F401  (config sections first: stages read them)
from kdpipe.stages import baseline, distill, evaluate, report, shards, teacher, text_features, world  # noqa: F401
from kdpipe.stages import metric_formats  # noqa: F401  (how their headline metrics print)
