"""kdpipe: distil a large CLIP into a small one with prompt learning on unlabeled images."""

__version__ = "0.1.0"

from kdpipe.errors import KdpipeError  # noqa: E402  (re-exported for library users)

# The Python API (kdpipe.api) is imported on first use: ``import kdpipe`` and ``kdpipe --help``
# stay free of torch and open_clip.
_API = ("Model", "Prediction", "load_bundle", "run")

__all__ = ["KdpipeError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from kdpipe import api

        return getattr(api, name)
    raise AttributeError(f"module 'kdpipe' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
