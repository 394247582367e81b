"""Stage ``teacher-cache`` (only with ``distill.cache_views > 0``): the teacher's image features for
``V`` augmented views of every unlabeled image, computed once (one instance per seed, as the
views depend on the stream's seed). ``distill`` then reads them instead of running the teacher.

A family with one member per teacher (:mod:`kdpipe.settings.teachers`), the primary's instance named
plainly (``teacher-cache@seed1``), another teacher's ``teacher-cache:<method>@seed1``: each holds
its own teacher's features, in its own embedding space, for the same images and views.

Writes ``features.safetensors`` (``features`` ``[V, N, D]`` fp16, L2-normalised rows) and
``keys.json`` (the N images' shard and key, the row order: keys repeat across shard sets), the
files of :mod:`kdpipe.artefacts.teacher_cache`. Each finished view is checkpointed, so a killed run
resumes at the next view.
"""

from __future__ import annotations

from pathlib import Path

from kdpipe.artefacts.run_layout import teacher_stem
from kdpipe.artefacts.shards_info import read_shards_info
from kdpipe.artefacts.teacher_cache import FEATURES, KEYS, write_teacher_cache
from kdpipe.dist import leader_only
from kdpipe.io import read_json, read_tensors, write_json, write_tensors
from kdpipe.pipeline import register_stage
from kdpipe.errors import KdpipeError
from kdpipe.settings import inputs, teachers

BATCH = 64  # features do not depend on batching; a larger batch only runs the teacher faster


def _view_files(ckpt_dir: Path, view: int) -> tuple[Path, Path]:
    return ckpt_dir / f"view{view}.safetensors", ckpt_dir / f"view{view}.json"


def _write_cache(ctx) -> dict:
    import torch

    from kdpipe.clip import load_backbone
    from kdpipe.data.shards import ShardStream
    from kdpipe.distill.teacher_cache import member_ids
    from kdpipe.distill.teacher_source import forward_teacher
    from kdpipe.methods.io import load_method

    cfg, seed = ctx.cfg, ctx.seed
    views = cfg["distill"].cache_views
    device = inputs.device_of(cfg)
    teacher, _ = load_method(teacher_stem(inputs.upstream(ctx, "teacher")), device=device)
    sb = load_backbone(cfg["student"].backbone, device=device)
    source = forward_teacher(teacher, sb, device, cfg["run"].amp)
    shards = read_shards_info(inputs.upstream(ctx, "shards"), ctx.cfg)
    # the student's train transform: the cache must hold exactly the views distill will train on
    transform = inputs.train_transform(cfg, sb)

    ckpt = Path(ctx.ckpt_dir)
    with ctx.progress(views * shards["images"] if shards.get("images") else None, desc="teacher-cache", unit="image") as bar:
        for view in range(views):
            tensor_file, key_file = _view_files(ckpt, view)
            if tensor_file.is_file() and key_file.is_file():
                continue  # finished before an interruption
            stream = ShardStream(shards["train"], transform, seed=seed, epoch=view, batch_size=BATCH,
                                 workers=cfg["distill"].workers, with_urls=True, log=ctx.log)
            keys, feats = [], []
            for images, batch_keys, urls in stream:
                feats.append(source(images.to(device, non_blocking=True), batch_keys).half().cpu())
                keys += member_ids(urls, batch_keys, shards["train"])
                bar.update(len(batch_keys), images=len(batch_keys))
            write_tensors(tensor_file, {"features": torch.cat(feats)})
            write_json(key_file, {"members": keys})

    order = sorted(map(tuple, read_json(_view_files(ckpt, 0)[1])["members"]))
    index = {k: i for i, k in enumerate(order)}
    stacked = None
    for view in range(views):
        tensor_file, key_file = _view_files(ckpt, view)
        keys = list(map(tuple, read_json(key_file)["members"]))
        if sorted(keys) != order:
            raise KdpipeError(f"view {view} of the teacher cache saw other images than view 0; are the shards changing?")
        feats = read_tensors(tensor_file)[0]["features"]
        if stacked is None:
            stacked = torch.empty(views, len(order), feats.shape[1], dtype=torch.float16)
        stacked[view].index_copy_(0, torch.tensor([index[k] for k in keys]), feats)
    write_teacher_cache(ctx.dir, stacked, order, seed)
    ctx.log.info(f"cached {views} view(s) of {len(order)} images x {stacked.shape[2]} teacher features ({stacked.numel() * 2 / 2**20:.1f} MiB)")
    return {"images": len(order), "views": views}


@register_stage(
    "teacher-cache",
    reads=["distill.cache_views", "student.backbone", "data.crop_scale"],
    deps=["teacher:{member}", "shards"],
    outputs=[FEATURES, KEYS],
    expand=teachers.member_names,
    plain=teachers.primary_name,
    version=2,  # 2: images keyed by (shard, key); 1: by key alone, so namesakes in two shard sets shared a row
    seeded=True,
    when=lambda cfg: cfg["distill"].cache_views > 0,
    headline="images",
    description="run the teacher's image tower once over a fixed set of augmented views",
)
def run(ctx) -> dict:
    # writes shared files: under torchrun rank 0 does it and the other ranks wait for it
    return leader_only(lambda: _write_cache(ctx))
