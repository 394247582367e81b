"""Read one shard front to back into samples, reporting every problem instead of raising.

webdataset's own tar iterator attributes errors to no key and, on a truncated archive, can merge
the damaged shard's last sample into the next shard's first; reading each shard here keeps the
(shard, key) of every problem exact. ``gopen`` from webdataset still opens the URL, so local paths,
``pipe:`` commands and remote URLs behave as they do in webdataset.
"""

from __future__ import annotations

import re
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


def _why(url: str, e: BaseException) -> str:
    """The error in words; for ``pipe:`` URLs webdataset's raw Pipe arguments become the exit status."""
    if url.startswith("pipe:"):
        status = re.search(r"\bexit (-?\d+)", str(e))
        if status:
            return f"command {url[5:]!r} failed with exit status {status.group(1)}"
    return describe_error(e)


def _close(stream, url: str) -> str | None:
    """Close the stream; the reason when that fails (a ``pipe:`` command's exit status shows here)."""
    try:
        stream.close()
    except Exception as e:  # noqa: BLE001 - any failure of a user's command is reported, not raised
        return _why(url, e)
    return None


def _unread_data(tar: tarfile.TarFile, chunk: int = 1 << 20) -> int:
    """Non-zero bytes left after the archive's last header (0 for an intact tar).

    tarfile ends the iteration quietly when a header in the middle is unreadable, exactly as at the
    zero blocks of a real end: without this, a clobbered header reads as a shorter, healthy shard.
    An intact archive has only zero padding after its end marker.
    """
    left = 0
    while block := tar.fileobj.read(chunk):
        left += len(block) - block.count(0)
    return left


def iter_samples(url: str, on_problem: OnProblem) -> Iterator[dict]:
    """Yield ``{"__key__", "__url__", ext: bytes, ...}`` per sample; problems go to ``on_problem``.

    A member that cannot be read (truncated archive) drops its sample; a duplicate extension keeps
    the first copy. Members whose names lack an extension and ``__meta__`` files are ignored, as
    webdataset does.
    """
    try:
        stream = gopen(url, "rb")
    except Exception as e:  # noqa: BLE001
        on_problem(url, "<open>", f"cannot open: {_why(url, e)}")
        return
    current: dict | None = None
    closed = False
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
                closed, why = True, _close(stream, url) or _why(url, e)
                on_problem(url, prefix, f"member {info.name} cut short: {why}")
                current = None
                break
            if suffix in current:
                on_problem(url, prefix, f"duplicate member {info.name} ignored")
            else:
                current[suffix] = data
            tar.members = []  # stream mode would otherwise keep every header in memory
        else:
            left = _unread_data(tar)
            if left:
                where = f"after sample {current['__key__']}" if current is not None else "before any sample"
                on_problem(url, "<archive>", f"archive damaged {where}: an unreadable tar header at byte {tar.offset}, "
                                             "with data after it that was not read")
    except READ_ERRORS as e:
        # a failing pipe: command shows up as a short read first; its exit status explains it better
        closed, why = True, _close(stream, url) or _why(url, e)
        where = f"after sample {current['__key__']}" if current is not None else "before any sample"
        on_problem(url, "<archive>", f"archive damaged {where}: {why}")
    finally:
        if not closed:
            why = _close(stream, url)
            if why is not None:
                on_problem(url, "<close>", why)
    if current is not None:
        yield current
