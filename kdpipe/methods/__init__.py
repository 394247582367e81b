"""Prompt methods on a frozen CLIP, selected by name.

Importing this package registers every method (one file each); the order here is the order
``list_methods()`` and ``kdpipe methods`` show.
"""

from kdpipe.methods.base import PromptMethod
from kdpipe.methods.config import MethodConfig
from kdpipe.methods.io import load_learned, read_learned, save_learned
from kdpipe.methods.registry import build_method, get_method, list_methods, register_method

# registration order = listing order
from kdpipe.methods import zeroshot, coop, cocoop, vpt, ivlp, maple, mudpt, promptsrc, promptkd  # noqa: E402,F401  isort: skip

__all__ = [
    "MethodConfig",
    "PromptMethod",
    "build_method",
    "get_method",
    "list_methods",
    "load_learned",
    "read_learned",
    "register_method",
    "save_learned",
]
