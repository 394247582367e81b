"""Classify a shard set at scale with Ray Data: a kdpipe bundle inside ``Dataset.map_batches``.

    ds = ray.data.read_webdataset(SHARDS, decoder=None)        # images stay encoded bytes
    ds = ds.map_batches(BundleClassifier, fn_constructor_kwargs={"bundle": BUNDLE},
                        batch_size=256, concurrency=4, num_gpus=1)  # an actor pool, one bundle per actor
    ds.write_parquet(OUT)

Each actor loads the bundle once (:func:`kdpipe.infer.bundle.load_bundle`) and turns a batch of
webdataset rows into the rows ``kdpipe classify --out x.parquet`` writes: ``key`` (``<shard
URL>#<__key__>``, URL as Ray resolves it), ``labels``, ``scores``, ``probs``, ``ids``, with the
same types and the same numbers (the same decoder, preprocessing, index and probability code),
plus ``error``: null on classified rows, the reason (and empty lists) for an image that cannot be
decoded, so an unreadable image is one row too and never stops the job.

Exactly once: a batch's rows leave the actor only when the whole batch is done. Ray Data's actor
pool restarts an actor that dies and retries its batch (``max_restarts`` / ``max_task_retries``
default to -1 for ``map_batches`` actors), so a killed actor loses no image and duplicates none.
Resuming a half-finished job is Ray's business, not kdpipe's writers': rerun it into an empty
folder. Training stays on torchrun; this is for inference only.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from kdpipe.data.shards.samples import IMAGE_EXTENSIONS, BadSample, decode_sample
from kdpipe.errors import KdpipeError
from kdpipe.infer.bundle import load_bundle
from kdpipe.infer.classify import result_rows
from kdpipe.infer.shard_source import ShardSource, sample_key
from kdpipe.infer.writers import Row
from kdpipe.infer.writers.parquet import arrow_table

KEY_COLUMN = ShardSource.key_column  # the column ``kdpipe classify`` names shard keys with
ERROR_COLUMN = "error"
RAW_HINT = "pass decoder=None to ray.data.read_webdataset so kdpipe decodes the images itself, as kdpipe classify does"


class BundleClassifier:
    """A callable class for ``Dataset.map_batches``: webdataset rows in, classify rows out.

    ``bundle``: a bundle folder every actor can read (kdpipe export). ``top_k``: labels per image.
    ``device``: ``auto`` picks the GPU Ray gave the actor (``num_gpus=1``), else the CPU.
    ``precision``: the image tower's, as ``kdpipe classify --precision`` (default: the bundle's,
    else ``auto``); its rows are the ones classify writes in that precision.
    ``decode_threads``: images decoded
    at once per actor (PIL releases the GIL), so a GPU actor is not waiting on one JPEG at a time;
    give the actor that many CPUs (``num_cpus=``).
    """

    def __init__(self, bundle: str | Path, top_k: int = 5, device: str = "auto", precision: str | None = None,
                 decode_threads: int = 4):
        from kdpipe.train.device import pick_device

        if top_k < 1 or decode_threads < 1:
            raise KdpipeError(f"top_k and decode_threads must be >= 1 (got {top_k}, {decode_threads})")
        self.device = pick_device(device)
        if not Path(bundle).is_absolute() and not Path(bundle).exists():
            raise KdpipeError(f"bundle {bundle}: not found from the actor's folder ({Path.cwd()}); Ray actors do not run in the "
                              "driver's folder, so pass an absolute path every node can read")
        self.model = load_bundle(bundle, device=self.device).to(self.device)
        self.model.set_precision(precision or self.model.default_precision, self.device)
        self.encoder = self.model.encoder()  # weights prepared in their precision: no autocast around them
        self.index = self.model.index(device=self.device)
        self.transform = self.model.transform()
        self.top_k = min(top_k, self.index.ntotal)
        self.decode_threads = decode_threads

    def __call__(self, batch: dict[str, Any]):
        import pyarrow as pa

        columns = list(batch)
        if "__key__" not in batch or "__url__" not in batch:
            raise KdpipeError(f"BundleClassifier reads rows of ray.data.read_webdataset (with __key__ and __url__); got columns {columns}")
        keys = [sample_key(str(u), str(k)) for u, k in zip(batch["__url__"], batch["__key__"])]
        samples = [{c: batch[c][i] for c in columns if _present(batch[c][i])} for i in range(len(keys))]
        with ThreadPoolExecutor(self.decode_threads) as pool:
            decoded = list(pool.map(self._decode, samples))
        good = [i for i, (image, _) in enumerate(decoded) if image is not None]
        by_index: dict[int, Row] = {}
        if good:
            images = torch.stack([decoded[i][0] for i in good]).to(self.device)
            with torch.inference_mode():
                feats = self.encoder(images).float()
            rows = result_rows([keys[i] for i in good], feats, self.index, self.top_k, self.model.classnames, self.model.logit_scale, None)
            by_index = dict(zip(good, rows))
        rows = [by_index.get(i) or Row(keys[i], [], [], [], []) for i in range(len(keys))]
        table = arrow_table(rows, KEY_COLUMN)
        return table.append_column(ERROR_COLUMN, pa.array([why for _, why in decoded], pa.string()))

    def _decode(self, sample: dict) -> tuple[torch.Tensor | None, str | None]:
        """The image member through the bundle's preprocessing, or None and why it cannot be."""
        decoded = next((v for ext, v in sample.items() if ext in IMAGE_EXTENSIONS and not isinstance(v, (bytes, bytearray))), None)
        if decoded is not None:
            raise KdpipeError(f"the image of sample {sample.get('__key__')} is already decoded ({type(decoded).__name__}); {RAW_HINT}")
        try:
            image, _ = decode_sample(sample, with_labels=False)  # the shard stream's decoder, its reasons
        except BadSample as e:
            return None, str(e)
        return self.transform(image), None


def _present(value) -> bool:
    """Whether a batch cell holds a member: samples lacking one get None (or NaN from pandas) there."""
    return value is not None and not (isinstance(value, float) and value != value)
