"""Webdataset shards as a classify source, read with the data package's ``ShardStream``.

Shards are streamed in the pattern's order (no shuffling), so memory does not grow with the shard
set. A tar can only be read front to back, so on a resumed run the samples already written are
still decoded, then dropped before the model. Corrupt members are reported by the stream when the
pass ends and become skipped entries then.

An image's key is ``<shard URL>#<__key__>`` (webdataset's ``__url__`` and ``__key__``, the URL as
the pattern names it): ``__key__`` alone is unique only within one shard set (every set written by
``kdpipe shards write`` starts at ``00000000``), so two sets read together would share keys and
lose rows. Resuming therefore needs the input spelled the same way (relative or absolute).
"""

from __future__ import annotations

from kdpipe.data.shards.samples import PackedImages
from kdpipe.infer.sources import Batch, ImageSource


def sample_key(url: str, key: str) -> str:
    """The key of the sample ``key`` of shard ``url``, the same for its row and its skipped entry."""
    return f"{url}#{key}"


class ShardSource(ImageSource):
    key_column = "key"

    def __init__(self, spec: str, tars: list[str] | None):
        from kdpipe.data.shards import expand_pattern

        super().__init__(spec)
        self.pattern = tars if tars else spec
        self.shards = expand_pattern(self.pattern)  # one-line KdpipeError when it names no shard

    def describe(self) -> str:
        return f"shards {self.spec} ({len(self.shards)} shards)"

    def batches(self, transform, batch_size, workers, done, pin_memory=False, rank=0, world=1):
        from kdpipe.data.shards import ShardStream

        # the end-of-pass corrupt report goes to the skipped file and the summary instead of a log;
        # several processes split the shards (rank r reads every world-th one)
        stream = ShardStream(self.pattern, transform, batch_size=batch_size, workers=workers, shuffle=False,
                             rank=rank, world_size=world, with_urls=True, log=lambda line: None)
        classified = set()  # samples classified although the stream reported a problem with them
        for images, names, urls in stream:
            keys = [sample_key(u, n) for u, n in zip(urls, names)]
            # a problem reaches the stream before the batch holding its sample (a duplicate member)
            classified.update(k for u, n, k in zip(urls, names, keys) if (u, n) in stream.corrupt_reasons)
            keep = [i for i, k in enumerate(keys) if k not in done]
            if len(keep) == len(keys):
                yield Batch(images, keys)
            elif keep:
                unpacked = images.unpack() if isinstance(images, PackedImages) else None  # once, not per image
                kept = [unpacked[i] for i in keep] if unpacked is not None else images[keep]
                yield Batch(kept, [keys[i] for i in keep])
        corrupt = [(sample_key(shard, name), f"{reason} (in {shard})")
                   for (shard, name), reason in sorted(stream.corrupt_reasons.items())]
        corrupt = [(k, why) for k, why in corrupt if k not in done and k not in classified]
        if corrupt:
            yield Batch(None, [], corrupt)
