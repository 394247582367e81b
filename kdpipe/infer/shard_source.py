"""Webdataset shards as a classify source, read with the data package's ``ShardStream``.

Shards are streamed in the pattern's order (no shuffling), so memory does not grow with the shard
set. A tar can only be read front to back, so on a resumed run the samples already written are
still decoded, then dropped before the model. Corrupt members are reported by the stream when the
pass ends and become skipped entries then. Keys are the webdataset ``__key__`` values, which
``kdpipe shards write`` keeps unique across a shard set.
"""

from __future__ import annotations

from kdpipe.infer.sources import Batch, ImageSource


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
                             rank=rank, world_size=world, log=lambda line: None)
        for images, keys in stream:
            keep = [i for i, k in enumerate(keys) if k not in done]
            if len(keep) == len(keys):
                yield Batch(images, list(keys))
            elif keep:
                yield Batch(images[keep], [keys[i] for i in keep])
        corrupt = [(key, f"{reason} (in {shard})") for (shard, key), reason in sorted(stream.corrupt_reasons.items())]
        if corrupt:
            yield Batch(None, [], corrupt)
