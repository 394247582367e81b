"""What distillation trains on from the shard stream: the held-out images dropped, batches big enough
for the projector's BatchNorm, and every rank's epoch ending together under torchrun.

The ``shards`` stage refuses a set the held-out slice leaves fewer than :data:`MIN_BATCH` images of,
so these rules are stated once, here.
"""

from __future__ import annotations

from typing import Iterable, Iterator

MIN_BATCH = 2  # the projector's BatchNorm cannot train on a single image


def in_step_with_other_ranks(batches: Iterable, world: int) -> Iterator:
    """Stop every rank's epoch when the first rank runs out of batches.

    Ranks stream different shards, so their batch counts differ by a few; the loop all-reduces
    gradients every step, and a rank still stepping alone would wait forever. One tiny all-reduce
    per step keeps them together (the longer ranks drop their last few batches of the epoch).
    """
    if world == 1:
        yield from batches
        return
    import torch
    import torch.distributed as dist

    it = iter(batches)
    while True:
        batch = next(it, None)
        alive = torch.tensor([0 if batch is None else 1], dtype=torch.int32)
        dist.all_reduce(alive, op=dist.ReduceOp.MIN)
        if not int(alive):
            return
        yield batch


def holdout_exclusion(shards_info: dict) -> frozenset:
    """What distill drops from the user's shards: the held-out (shard URL, key) pairs; bare keys
    for a ``shards.json`` written before the shards were recorded."""
    if not shards_info.get("filter_holdout"):
        return frozenset()
    members = shards_info.get("holdout_members")
    return frozenset(map(tuple, members)) if members is not None else frozenset(shards_info["holdout_keys"])


def filtered_batches(stream: Iterable, exclude: frozenset) -> Iterator:
    """Drop held-out samples (user shards hold them) and batches too small for BatchNorm.

    ``exclude`` holds (shard URL, key) pairs, matched against a stream that yields URLs last
    (``with_urls=True``): a key alone repeats across shard sets. Bare keys are matched too. The URLs
    stay last in what it yields: the teacher cache identifies images by shard and key as well."""
    for batch in stream:
        images, keys = batch[0], list(batch[1])
        urls = batch[-1] if len(batch) > 2 and isinstance(batch[-1], list) else None
        if exclude:
            keep = [i for i, (u, k) in enumerate(zip(urls or [None] * len(keys), keys)) if (u, k) not in exclude and k not in exclude]
            if len(keep) != len(keys):
                images, keys = images[keep], [keys[i] for i in keep]
                urls = urls and [urls[i] for i in keep]
        if len(keys) >= MIN_BATCH:
            yield (images, keys) if urls is None else (images, keys, urls)
