"""kdpipe: distil a large CLIP into a small one with prompt learning on unlabeled images."""

__version__ = "0.1.0"

from kdpipe.errors import KdpipeError  # noqa: E402  (re-exported for library users)

__all__ = ["KdpipeError", "__version__"]
