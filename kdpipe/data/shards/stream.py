"""``ShardStream``: batches from webdataset shards for distillation and offline classification.

Per pass (epoch):
  1. all shards are shuffled with a seed derived from (seed, epoch), identically on every rank
     (webdataset 1.0.2's ``WebDataset(shardshuffle=N)`` re-seeds each fresh worker the same way and so
     repeats one order every epoch);
  2. rank r takes every world_size-th shard, and its DataLoader worker w every k-th of those;
     workers beyond the shard count would idle, so at most one worker per shard is started;
  3. samples go through a seeded shuffle buffer, are decoded and transformed with augmentation
     seeded per (seed, epoch, key) (independent of which worker decodes them);
  4. a corrupt member (undecodable, empty, missing image, cut-off archive, failed pipe) is skipped
     at once, and kept in ``corrupt`` ({shard: [keys]}) and ``corrupt_reasons`` for the report
     logged when the pass ends. A pass that yields no sample at all raises KdpipeError.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections import defaultdict
from typing import Callable, Iterator, Sequence

import torch

from kdpipe.data.shards.patterns import expand_pattern, expected_counts
from kdpipe.data.shards.samples import BadSample, decode_sample, encoded_sample, sample_label, stack_images
from kdpipe.data.shards.tarread import iter_samples
from kdpipe.data.transforms import apply_seeded, sample_seed
from kdpipe.dist import worker_init
from kdpipe.errors import KdpipeError

log = logging.getLogger("kdpipe.data")


def shard_order(urls: Sequence[str], seed: int, epoch: int, shuffle: bool) -> list[str]:
    order = list(urls)
    if shuffle:
        random.Random(sample_seed(seed, epoch, "shards")).shuffle(order)
    return order


def _shuffled(samples: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """A bounded shuffle buffer: memory stays at ``size`` encoded samples."""
    if size <= 1:
        yield from samples
        return
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def _identity(x):
    return x


class _WorkerSource(torch.utils.data.IterableDataset):
    """What runs in each DataLoader worker: its share of the shards, as tagged messages.

    Messages are ("batch", payload) and ("corrupt", [(shard, key, reason), ...]); the corrupt
    records travel with the batches because each worker is a separate process.
    """

    def __init__(self, shards, transform, seed, epoch, rank, batch_size, with_labels, buffer, expected, with_urls=False):
        self.shards = list(shards)
        self.transform = transform
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.batch_size = batch_size
        self.with_labels = with_labels
        self.with_urls = with_urls
        self.buffer = buffer
        self.expected = expected

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        yield from self.messages(self.shards[worker::workers], worker)

    def _raw(self, shards: list[str], problems: list) -> Iterator[dict]:
        dropped = 0  # samples lost inside the archive (never yielded), for the shortfall check

        def on_problem(shard, key, reason):
            nonlocal dropped
            dropped += not key.startswith("<")
            problems.append((shard, key, reason))

        for shard in shards:
            seen, dropped = 0, 0
            for sample in iter_samples(shard, on_problem):
                seen += 1
                yield sample
            promised = self.expected.get(shard)
            if promised is not None and seen + dropped < promised:
                missing = promised - seen - dropped
                problems.append((shard, "<missing>", f"{missing} of {promised} samples missing (archive ends early)"))

    def messages(self, shards: list[str], worker: int):
        problems: list[tuple[str, str, str]] = []
        rng = random.Random(sample_seed(self.seed, self.epoch, f"buffer:{self.rank}:{worker}"))
        images, keys, labels, urls = [], [], [], []
        for sample in _shuffled(self._raw(shards, problems), self.buffer, rng):
            key = sample["__key__"]
            try:
                if getattr(self.transform, "reads_bytes", False):  # decoded on the GPU (classify --decode gpu)
                    image = encoded_sample(sample, self.transform)
                    label = sample_label(sample) if self.with_labels else None
                else:
                    img, label = decode_sample(sample, self.with_labels)
                    image = apply_seeded(self.transform, img, sample_seed(self.seed, self.epoch, key))
            except BadSample as e:
                problems.append((sample["__url__"], key, str(e)))
                continue
            images.append(image)
            keys.append(key)
            labels.append(label)
            urls.append(sample["__url__"])
            if len(keys) == self.batch_size:
                yield from self._emit(images, keys, labels, urls, problems)
                images, keys, labels, urls = [], [], [], []
        if keys:
            yield from self._emit(images, keys, labels, urls, problems)
        if problems:
            yield ("corrupt", list(problems))

    def _emit(self, images, keys, labels, urls, problems):
        if problems:
            yield ("corrupt", list(problems))
            problems.clear()
        batch = (stack_images(images), list(keys))
        if self.with_labels:
            batch = batch + (torch.tensor(labels, dtype=torch.long),)
        if self.with_urls:
            batch = batch + (list(urls),)
        yield ("batch", batch)


class ShardStream:
    """Iterable of ``(images [B,3,H,W], keys)`` batches (``+ labels`` with ``with_labels=True``).

    ``with_urls=True`` adds each sample's shard URL last: keys are unique within a shard only
    (two shard sets written separately both start at ``00000000``).

    Each ``for batch in stream`` is one pass. ``set_epoch(e)`` picks the epoch of the next pass;
    without it, every new pass moves to the next epoch, so shard order and augmentation change
    between passes either way. ``shuffle=False`` keeps the pattern's shard and sample order (for
    inference). ``log`` receives the end-of-pass corrupt report (a logger or any ``f(str)``).
    """

    def __init__(
        self,
        pattern,
        transform: Callable,
        seed: int = 0,
        epoch: int = 0,
        batch_size: int = 64,
        workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
        with_labels: bool = False,
        with_urls: bool = False,
        shuffle: bool = True,
        shuffle_buffer: int = 1000,
        log: logging.Logger | Callable[[str], None] | None = None,
    ):
        if batch_size < 1:
            raise KdpipeError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise KdpipeError(f"rank {rank} must be in 0..{world_size - 1}")
        self.urls = expand_pattern(pattern)
        self.pattern = pattern
        self.transform = transform
        self.seed, self.epoch = int(seed), int(epoch)
        self.batch_size, self.workers = int(batch_size), max(0, int(workers))
        self.rank, self.world_size = int(rank), int(world_size)
        self.with_labels = with_labels
        self.with_urls = with_urls
        self.shuffle = shuffle
        self.shuffle_buffer = int(shuffle_buffer) if shuffle else 0
        self.log = log
        self.corrupt: dict[str, list[str]] = {}
        self.corrupt_reasons: dict[tuple[str, str], str] = {}
        self.samples_read = 0  # in the last finished pass
        self._expected = expected_counts(self.urls)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def expected_samples(self) -> int | None:
        """Samples per pass (all ranks) as the shard manifests record them; None if any shard has none."""
        if any(url not in self._expected for url in self.urls):
            return None
        return sum(self._expected[url] for url in self.urls)

    def shards_for(self, epoch: int) -> list[str]:
        """This rank's shards in the order they are read in ``epoch``."""
        return shard_order(self.urls, self.seed, epoch, self.shuffle)[self.rank :: self.world_size]

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        shards = self.shards_for(epoch)
        if not shards:
            raise KdpipeError(
                f"rank {self.rank} gets no shard: {len(self.urls)} shards for {self.world_size} processes; "
                "write more, smaller shards (kdpipe shards write --per-shard)"
            )
        source = _WorkerSource(
            shards, self.transform, self.seed, epoch, self.rank, self.batch_size, self.with_labels,
            self.shuffle_buffer, self._expected, self.with_urls,
        )
        workers = min(self.workers, len(shards))
        if workers == 0:
            messages = source.messages(shards, 0)
        else:
            # The count is deliberate (fingerprinted: it decides which images share a batch), so
            # torch's "more workers than cores" warning, printed at creation and again per pass, is noise.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
                messages = iter(torch.utils.data.DataLoader(
                    source, batch_size=None, num_workers=workers, worker_init_fn=worker_init, collate_fn=_identity
                ))
        self.corrupt, self.corrupt_reasons, self.samples_read = {}, {}, 0
        corrupt: dict[str, list[str]] = defaultdict(list)
        for kind, payload in messages:
            if kind == "batch":
                self.samples_read += len(payload[1])
                yield payload
            else:
                for shard, key, reason in payload:
                    if (shard, key) not in self.corrupt_reasons:
                        corrupt[shard].append(key)
                        self.corrupt_reasons[(shard, key)] = reason
                self.corrupt = dict(corrupt)
        self._report(epoch)
        if self.samples_read == 0:
            example = next(iter(self.corrupt_reasons.items()), None)
            why = f"; e.g. {example[0][0]} [{example[0][1]}]: {example[1]}" if example else ""
            raise KdpipeError(f"shard pattern {self.pattern!r} yielded no readable sample ({len(shards)} shards){why}")

    def report_lines(self) -> list[str]:
        return [f"{shard} [{key}]: {reason}" for (shard, key), reason in sorted(self.corrupt_reasons.items())]

    def _report(self, epoch: int) -> None:
        if not self.corrupt:
            return
        n = sum(len(keys) for keys in self.corrupt.values())
        per_shard = ", ".join(f"{shard}: {len(keys)}" for shard, keys in sorted(self.corrupt.items()))
        text = f"shards epoch {epoch}: skipped {n} corrupt member(s) ({per_shard}); read {self.samples_read} samples"
        lines = [text] + ["  " + line for line in self.report_lines()]
        if self.log is None:
            log.warning("\n".join(lines))
        elif isinstance(self.log, logging.Logger):
            self.log.warning("\n".join(lines))
        else:
            for line in lines:
                self.log(line)
