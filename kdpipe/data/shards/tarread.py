"""Read one shard front to back into samples, reporting every problem instead of raising.

webdataset's own tar iterator attributes errors to no key and, on a truncated archive, can merge
the damaged shard's last sample into the next shard's first; reading each shard here keeps the
(shard, key) of every problem exact. ``gopen`` from webdataset still opens the URL, so local paths,
``pipe:`` commands and remote URLs behave as they do in webdataset.
"""

from __future__ import annotations

import tarfile
import zlib
from typing import Callable, Iterator

from webdataset.gopen import gopen
from webdataset.tariterators import base_plus_ext

from kdpipe.data.images import describe_error

# Called as on_problem(shard, key, reason). Problems that belong to no single sample get a key in
# angle brackets, which no webdataset key can be confused with in a report.
OnProblem = Callable[[str, str, str], None]
READ_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, ValueError)


def _close(stream, url: str, on_problem: OnProblem) -> None:
    try:
        stream.close()  # a pipe: stream raises here when its command failed
    except Exception as e:  # noqa: BLE001 - any failure of a user's command is reported, not raised
        on_problem(url, "<close>", f"closing failed: {describe_error(e)}")


def iter_samples(url: str, on_problem: OnProblem) -> Iterator[dict]:
    """Yield ``{"__key__", "__url__", ext: bytes, ...}`` per sample; problems go to ``on_problem``.

    A member that cannot be read (truncated archive) drops its sample; a duplicate extension keeps
    the first copy. Members whose names lack an extension and ``__meta__`` files are ignored, as
    webdataset does.
    """
    try:
        stream = gopen(url, "rb")
    except Exception as e:  # noqa: BLE001
        on_problem(url, "<open>", f"cannot open: {describe_error(e)}")
        return
    current: dict | None = None
    try:
        tar = tarfile.open(fileobj=stream, mode="r|*")
        for info in tar:
            if not info.isreg():
                continue
            prefix, suffix = base_plus_ext(info.name)
            if prefix is None or (info.name.startswith("__") and info.name.endswith("__")):
                continue
            if current is None or prefix != current["__key__"]:
                if current is not None:
                    yield current
                current = {"__key__": prefix, "__url__": url}
            suffix = suffix.lower()
            try:
                data = tar.extractfile(info).read()
            except READ_ERRORS as e:
                on_problem(url, prefix, f"member {info.name} cut short: {describe_error(e)}")
                current = None
                break
            if suffix in current:
                on_problem(url, prefix, f"duplicate member {info.name} ignored")
            else:
                current[suffix] = data
            tar.members = []  # stream mode would otherwise keep every header in memory
    except READ_ERRORS as e:
        where = f"after sample {current['__key__']}" if current is not None else "before any sample"
        on_problem(url, "<archive>", f"archive damaged {where}: {describe_error(e)}")
    finally:
        _close(stream, url, on_problem)
    if current is not None:
        yield current
