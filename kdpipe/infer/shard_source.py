"""Webdataset shards as a classify source, read with the data package's ``ShardStream``.

Shards are streamed (memory does not grow with the shard set); keys already written are dropped
after decoding, since a tar can only be read front to back. Corrupt members are counted by the
stream and reported as skipped once the pass ends.
"""

from __future__ import annotations

from pathlib import Path

from kdpipe.infer.sources import Batch, ImageSource


class ShardSource(ImageSource):
    key_column = "key"

    def __init__(self, spec: str, tars: list[str] | None):
        super().__init__(spec)
        # a folder of tars becomes one brace pattern so the stream sees a single shard set
        if tars:
            parent = Path(tars[0]).parent
            names = [Path(t).name for t in tars]
            self.pattern = tars[0] if len(tars) == 1 else f"{parent}/{{{','.join(names)}}}"
        else:
            self.pattern = spec
        from kdpipe.data.shards import expand_pattern

        self.shards = expand_pattern(self.pattern)  # raises KdpipeError on an empty pattern

    def describe(self) -> str:
        return f"shards {self.spec} ({len(self.shards)} shards)"

    def batches(self, transform, batch_size, workers, done, pin_memory=False):
        from kdpipe.data.shards import ShardStream

        stream = ShardStream(self.pattern, transform, seed=0, epoch=0, batch_size=batch_size,
                             workers=max(0, min(workers, len(self.shards))))
        for images, keys in stream:
            keep = [i for i, k in enumerate(keys) if k not in done]
            if len(keep) == len(keys):
                yield Batch(images, list(keys))
            elif keep:
                yield Batch(images[keep], [keys[i] for i in keep])
        corrupt = [(k, f"corrupt member of {shard}") for shard, ks in sorted(stream.corrupt.items()) for k in ks]
        if corrupt:
            yield Batch(None, [], corrupt)
