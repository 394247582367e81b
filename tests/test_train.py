"""The shared training loop: schedule, checkpoints, resume after a kill, determinism, frozen CLIP."""

import json
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from kdpipe.errors import KdpipeError
from kdpipe.methods import build_method
from kdpipe.train import EpochBatches, OptimConfig, fit, lr_at, pick_device, train_method
from kdpipe.train.device import autocast

CLASSES = ["red", "green", "blue", "yellow"]


class Killed(Exception):
    """Stands in for a crash or a kill -9 part-way through a run."""


def dataset(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.arange(n) % len(CLASSES))


def make(name, backbone, seed=0):
    torch.manual_seed(seed)
    overrides = {"teacher_dim": 48} if name == "promptkd" else {}
    m = build_method(name, backbone, CLASSES, overrides)
    if m.needs_class_features:
        m.set_class_features(torch.randn(len(CLASSES), 48, generator=torch.Generator().manual_seed(3)))
    return m


def run(method, ckpt_dir, kill_after=None, epochs=3, checkpoint_every=3, seed=0):
    """fit over 8 batches per epoch; ``kill_after`` raises inside the step after that many steps."""
    batches = EpochBatches(dataset(), batch_size=4, seed=seed)
    steps = {"n": 0}

    def step(batch):
        if kill_after is not None and steps["n"] == kill_after:
            raise Killed()
        steps["n"] += 1
        return method.loss(*batch)

    optim = OptimConfig(lr=0.01)
    return fit(method, method.learned_parameters(), epochs, batches, step, optim, ckpt_dir=ckpt_dir,
               checkpoint_every=checkpoint_every, seed=seed, device="cpu"), steps["n"]


def test_schedule_is_constant_warmup_then_cosine_per_epoch():
    cfg = OptimConfig(lr=0.002)
    lrs = [lr_at(e, 10, cfg) for e in range(10)]
    assert lrs[0] == 1e-5
    assert lrs[1] == pytest.approx(0.5 * 0.002 * (1 + math.cos(math.pi / 10)))
    assert all(a > b for a, b in zip(lrs[1:], lrs[2:])) and lrs[-1] > 0
    no_warmup = OptimConfig(lr=0.002, warmup_epochs=0)
    assert lr_at(0, 10, no_warmup) == pytest.approx(0.002)


@pytest.mark.parametrize("name", ["coop", "promptsrc", "promptkd"])  # plain; GPA state; BatchNorm buffers
@pytest.mark.parametrize("kill_after", [5, 16])  # mid-epoch (last checkpoint at step 3); at an epoch end
def test_kill_and_resume_gives_identical_learned_state(name, kill_after, tiny_student, tmp_path):
    straight = make(name, tiny_student)
    history, _ = run(straight, tmp_path / "straight")

    interrupted = make(name, tiny_student)
    with pytest.raises(Killed):
        run(interrupted, tmp_path / "resumed", kill_after=kill_after)
    torch.manual_seed(999)  # a new process: different global RNG, freshly built method
    resumed = make(name, tiny_student, seed=1)
    resumed_history, steps = run(resumed, tmp_path / "resumed")

    done_before = 3 * (kill_after // 3) if kill_after % 8 else kill_after
    assert steps == 24 - done_before  # only what the checkpoint had not covered was trained again
    a, b = straight.learned_state_dict(), resumed.learned_state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed_history == history


def test_checkpoint_folder_holds_one_consistent_pair(tiny_student, tmp_path):
    m = make("coop", tiny_student)
    run(m, tmp_path / "ck", checkpoint_every=5)
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["ckpt-000000024.safetensors", "last.json"]
    meta = json.loads((tmp_path / "ck" / "last.json").read_text())
    assert (meta["epoch"], meta["batch"], meta["step"]) == (3, 0, 24) and len(meta["history"]) == 3


def test_finished_run_is_not_trained_again(tiny_student, tmp_path):
    m = make("promptsrc", tiny_student)
    history, steps = run(m, tmp_path / "ck")
    assert steps == 24
    again = make("promptsrc", tiny_student, seed=5)
    history2, steps2 = run(again, tmp_path / "ck")
    assert steps2 == 0 and history2 == history
    for k, v in m.learned_state_dict().items():  # the aggregated (GPA) prompts, as after the first run
        assert torch.equal(v, again.learned_state_dict()[k])


def test_checkpoint_of_another_run_is_refused(tiny_student, tmp_path):
    run(make("coop", tiny_student), tmp_path / "ck", epochs=2)
    with pytest.raises(KdpipeError, match="different run"):
        run(make("coop", tiny_student), tmp_path / "ck", epochs=3)


def test_training_touches_only_learned_parameters(tiny_student, tmp_path):
    m = make("maple", tiny_student)
    frozen = {k: v.clone() for k, v in m.clip.state_dict().items()}
    learned = {k: v.clone() for k, v in m.learned_state_dict().items()}
    run(m, None, epochs=2)
    assert all(torch.equal(v, frozen[k]) for k, v in m.clip.state_dict().items())
    assert all(not torch.equal(v, learned[k]) for k, v in m.learned_state_dict().items())
    assert not m.training and not m.clip.model.training


def test_same_seed_same_result_and_history_logs(tiny_student):
    runs = []
    for _ in range(2):
        m = make("coop", tiny_student)
        history, _ = run(m, None, epochs=2)
        runs.append((m.learned_state_dict()["text_ctx.ctx"], history))
    assert torch.equal(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    h = runs[0][1]
    assert [e["epoch"] for e in h] == [1, 2] and h[0]["lr"] == 1e-5 and h[0]["steps"] == 8
    assert {"loss", "ce", "acc"} <= set(h[0])


def test_non_finite_loss_stops_with_one_line(tiny_student):
    m = make("coop", tiny_student)
    batches = EpochBatches(dataset(8), batch_size=4)
    with pytest.raises(KdpipeError, match="lower the learning rate"):
        fit(m, m.learned_parameters(), 1, batches, lambda b: (m.loss(*b)[0] * float("nan"), {}), OptimConfig(lr=0.1))


def test_train_method_uses_the_method_defaults_and_skips_zeroshot(tiny_student, tmp_path):
    zs = build_method("zeroshot", tiny_student, CLASSES)
    assert train_method(zs, dataset(), ckpt_dir=tmp_path / "zs") == [] and not (tmp_path / "zs").exists()
    m = build_method("coop", tiny_student, CLASSES, {"epochs": 2, "batch_size": 16})
    seen = []
    history = train_method(m, dataset(), ckpt_dir=tmp_path / "coop", device="cpu", progress=seen.append)
    assert len(history) == 2 and len(seen) == 4 and seen[-1]["lr"] == history[-1]["lr"]


def test_epoch_batches_are_seeded_per_epoch_and_skip_resumes():
    b = EpochBatches(dataset(10), batch_size=4, seed=3)
    assert len(b) == 2  # the last partial batch is dropped
    assert b.indices(0) == EpochBatches(dataset(10), batch_size=4, seed=3).indices(0)
    assert b.indices(0) != b.indices(1) and b.indices(0) != EpochBatches(dataset(10), 4, seed=4).indices(0)
    full = [y.tolist() for _, y in b(1, 0)]
    assert [y.tolist() for _, y in b(1, 1)] == full[1:]
    assert len(EpochBatches(dataset(3), batch_size=4)) == 1  # smaller than one batch: keep it


def test_device_choices():
    assert pick_device("cpu").type == "cpu" and pick_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(KdpipeError, match="no CUDA"):
            pick_device("cuda")
        with autocast(torch.device("cpu")):  # fp32 on CPU: no autocast
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(KdpipeError, match="unknown device"):
        pick_device("tpu")


def _png_items(folder, n=16):
    import numpy as np
    from PIL import Image

    from kdpipe.data.items import Item

    folder.mkdir()
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(path)
        items.append(Item(str(path), i % len(CLASSES), CLASSES[i % len(CLASSES)]))
    return items


def test_train_method_on_image_files_resumes_identically_with_any_worker_count(tiny_student, tmp_path):
    """Random crops are seeded per (seed, epoch, index): a killed run resumed with 2 workers ends
    exactly where an uninterrupted single-process run does."""
    items = _png_items(tmp_path / "images")
    overrides = {"epochs": 2, "batch_size": 4}

    def train(ckpt, workers=0, kill_at=None):
        torch.manual_seed(0)
        m = build_method("coop", tiny_student, CLASSES, overrides)

        def progress(info):
            if info["step"] == kill_at:
                raise Killed()

        train_method(m, items, ckpt_dir=ckpt, seed=1, device="cpu", workers=workers, checkpoint_every=3, progress=progress)
        return m.learned_state_dict()["text_ctx.ctx"]

    straight = train(tmp_path / "a")
    with pytest.raises(Killed):
        train(tmp_path / "b", kill_at=5)
    assert torch.equal(train(tmp_path / "b", workers=2), straight)
    assert not torch.equal(straight, build_method("coop", tiny_student, CLASSES).text_ctx.ctx.detach())


def _distributed_worker(rank, world, root, backbone):
    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world)
    try:
        m = make("coop", backbone)
        data = dataset()
        full = EpochBatches(data, batch_size=8, seed=0)
        share = 8 // world

        def batches(epoch, skip):  # each rank takes its slice of the single-process batch
            for idx in full.indices(epoch)[skip:]:
                mine = idx[rank * share : (rank + 1) * share]
                yield data.tensors[0][mine], data.tensors[1][mine]

        fit(m, m.learned_parameters(), 1, batches, lambda b: m.loss(*b), OptimConfig(lr=0.05, warmup_epochs=0),
            ckpt_dir=f"{root}/ckpt", seed=0, device="cpu")
        save_file({"ctx": m.text_ctx.ctx.detach().contiguous()}, f"{root}/ctx.{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_train_like_one_process_with_the_whole_batch(tiny_student, tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    # fork: the ranks share this process's imports and backbone instead of loading them again
    mp.start_processes(_distributed_worker, args=(2, str(tmp_path), tiny_student), nprocs=2, start_method="fork")
    single = make("coop", tiny_student)
    batches = EpochBatches(dataset(), batch_size=8, seed=0)
    fit(single, single.learned_parameters(), 1, batches, lambda b: single.loss(*b), OptimConfig(lr=0.05, warmup_epochs=0), seed=0)
    ranks = [load_file(str(tmp_path / f"ctx.{r}.safetensors"))["ctx"] for r in range(2)]
    assert torch.equal(ranks[0], ranks[1])  # the ranks stay in lockstep
    assert torch.allclose(ranks[0], single.text_ctx.ctx.detach(), atol=1e-6)
    assert not torch.allclose(ranks[0], make("coop", tiny_student).text_ctx.ctx.detach(), atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["ckpt-000000004.safetensors", "last.json"]
