"""The CUDA paths: AMP in teacher training, distillation and classify; nvJPEG decoding; the class
index on the GPU; faiss-gpu; NCCL. Marked ``gpu``: the README's CPU test command deselects them,
``kdpipe bench gpu`` runs them. Without a GPU they fail (pick_device refuses cuda), never skip.

``faiss_gpu`` tests need faiss built with GPU support, ``multi_gpu`` tests two or more GPUs; the
GPU check deselects each of those by its marker, and says so, when the machine lacks it.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from kdpipe.train.device import pick_device

pytestmark = pytest.mark.gpu
NAMES = [f"class {i}" for i in range(6)]


@pytest.fixture(scope="module")
def cuda():
    return pick_device("cuda")  # KdpipeError (a failure) where there is no GPU


def _tiny(name, cuda):
    from kdpipe.clip import load_backbone

    return load_backbone(name, device=cuda)


def test_distill_step_under_autocast_matches_fp32(cuda):
    from kdpipe.distill import DistillStep, ForwardTeacher
    from kdpipe.methods import build_method
    from kdpipe.train.device import amp_dtype, autocast

    tb, sb = _tiny("kd-tiny-t", cuda), _tiny("kd-tiny-s", cuda)
    teacher = build_method("promptsrc", tb, NAMES).to(cuda).eval()
    student = build_method("promptkd", sb, NAMES, overrides={"teacher_dim": tb.dims.embed_dim}).to(cuda)
    with torch.no_grad():
        feats = F.normalize(teacher._text_features(NAMES).float(), dim=-1)
    student.set_class_features(feats)
    student.eval()  # BatchNorm in eval: both passes see the same statistics
    images = torch.randn(8, 3, sb.dims.image_size, sb.dims.image_size, device=cuda)
    losses = {}
    for amp in (False, True):
        ctx = (lambda: autocast(cuda)) if amp else None
        step = DistillStep(student, ForwardTeacher(teacher, amp=ctx), feats, 100.0, device=cuda, amp=ctx)
        loss, logs = step((images, [str(i) for i in range(8)]))
        loss.backward()
        grads = [p.grad for _, p in student.learned_parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        student.zero_grad(set_to_none=True)
        losses[amp] = float(loss)
    assert amp_dtype(cuda) in (torch.bfloat16, torch.float16)
    assert losses[True] == pytest.approx(losses[False], rel=0.05, abs=1e-3)


@pytest.mark.parametrize("dtype", ["native", "float16"])
def test_teacher_training_under_autocast_learns(cuda, monkeypatch, tmp_path, dtype):
    """PromptSRC few-shot training through ``fit`` with AMP: bf16 (H100), and fp16 with the grad scaler."""
    import kdpipe.train.device as device_mod
    from kdpipe.methods import build_method
    from kdpipe.train import OptimConfig, fit

    if dtype == "float16":
        monkeypatch.setattr(device_mod, "amp_dtype", lambda d: torch.float16 if d.type == "cuda" else None)
        import kdpipe.train.loop as loop_mod

        monkeypatch.setattr(loop_mod, "needs_grad_scaler", lambda d, enabled=True: enabled)
    tb = _tiny("kd-tiny-t", cuda)
    method = build_method("promptsrc", tb, NAMES[:3], overrides={"epochs": 3}).to(cuda)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(3, 3, tb.dims.image_size, tb.dims.image_size, generator=g).repeat(4, 1, 1, 1).to(cuda)
    labels = torch.arange(3).repeat(4).to(cuda)
    before = {n: p.detach().clone() for n, p in method.learned_parameters()}
    history = fit(method, method.learned_parameters(), 3, lambda epoch, skip: [(images, labels)][skip:],
                  lambda b: method.loss(*b), OptimConfig(lr=0.01, momentum=0.9, weight_decay=0.0, warmup_epochs=0, warmup_lr=0.0),
                  ckpt_dir=tmp_path / "ckpt", device=cuda, amp=True)
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    moved = [n for n, p in method.learned_parameters() if not torch.equal(p.detach(), before[n])]
    assert moved, "no learned parameter changed under AMP"


def _bundle_model(cuda):
    from kdpipe.infer.bundle import ClassModel
    from kdpipe.methods import build_method

    sb = _tiny("kd-tiny-s", cuda)
    method = build_method("zeroshot", sb, NAMES).to(cuda).eval()
    feats = F.normalize(torch.randn(len(NAMES), sb.dims.embed_dim, generator=torch.Generator().manual_seed(3)), dim=-1)
    return ClassModel(method, NAMES, feats, sb.dims.logit_scale, source="gpu test", provenance={"backbone": "kd-tiny-s"})


def test_classify_on_cuda_with_gpu_decoding_agrees_with_cpu(cuda, tmp_path):
    from kdpipe.infer.bench_classify import synthetic_photos
    from kdpipe.infer.classify import classify
    from kdpipe.infer.device_decode import EncodedImage, for_device
    from kdpipe.infer.sources import open_source
    from kdpipe.infer.writers import read_rows

    synthetic_photos(tmp_path / "imgs", 40, size=(160, 120))
    model = _bundle_model(cuda)
    rows = {}
    for name, dev, decode in (("cpu", torch.device("cpu"), "cpu"), ("cuda", cuda, "gpu"), ("cuda-pil", cuda, "cpu")):
        model.to(dev)
        enc = model.encoder()
        tf = for_device(enc.transform, decode, dev)
        assert isinstance(tf, EncodedImage) == (dev.type == "cuda")
        out = tmp_path / f"{name}.jsonl"
        classify(enc, model.index("flat", dev), NAMES, open_source(tmp_path / "imgs"), out, top_k=3, batch_size=16,
                 workers=2, device=dev, progress=False, transform=tf)
        rows[name] = {r["path"]: r for r in read_rows(out)}
    for other in ("cuda", "cuda-pil"):
        assert set(rows["cpu"]) == set(rows[other]) and len(rows["cpu"]) == 40
        diffs = [abs(rows["cpu"][k]["scores"][0] - rows[other][k]["scores"][0]) for k in rows["cpu"]]
        assert max(diffs) < 0.02  # bf16 autocast and resampling rounding
        same = sum(rows["cpu"][k]["ids"][0] == rows[other][k]["ids"][0] for k in rows["cpu"])
        assert same >= 36


def test_gpu_jpeg_decoding_matches_pil(cuda, tmp_path):
    from PIL import Image

    from kdpipe.data.transforms import build_transform
    from kdpipe.infer.bench_classify import synthetic_photos
    from kdpipe.infer.device_decode import EncodedImage

    paths = synthetic_photos(tmp_path, 6, size=(500, 375))
    pil = build_transform(False, 224, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
    enc = EncodedImage(224, pil.mean, pil.std)
    batch, keys, skipped = enc.on_device([enc(p.read_bytes()) for p in paths], [p.name for p in paths], cuda)
    assert batch.device.type == "cuda" and len(keys) == 6 and not skipped
    expected = torch.stack([pil(Image.open(p).convert("RGB")) for p in paths]).to(cuda)
    # nvJPEG's IDCT and upsampling differ from libjpeg-turbo's by a few levels on some pixels
    assert (batch - expected).abs().mean() < 2.0 / 255 / min(pil.std)


def test_class_index_torch_search_on_cuda_equals_cpu(cuda):
    from kdpipe.infer.index import ClassIndex

    feats = F.normalize(torch.randn(5000, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    q = F.normalize(torch.randn(256, 64, generator=torch.Generator().manual_seed(1)), dim=-1)
    cpu = ClassIndex.build(feats, "flat", device="cpu")
    gpu = ClassIndex.build(feats, "flat", device=str(cuda))
    gpu._forced_backend = "torch"
    s_cpu, i_cpu = cpu.search(q, 5)
    s_gpu, i_gpu = gpu.search(q.to(cuda), 5)
    assert gpu.backend_used == "torch"
    assert torch.equal(i_cpu, i_gpu.cpu())
    torch.testing.assert_close(s_cpu, s_gpu.cpu(), rtol=0, atol=1e-5)


@pytest.mark.faiss_gpu
def test_faiss_gpu_index_same_topk_as_cpu(cuda):
    from kdpipe.infer.index import ClassIndex, faiss_has_gpu

    assert faiss_has_gpu(), "faiss has no GPU support here"
    feats = F.normalize(torch.randn(20000, 128, generator=torch.Generator().manual_seed(0)), dim=-1)
    q = F.normalize(torch.randn(256, 128, generator=torch.Generator().manual_seed(1)), dim=-1)
    cpu = ClassIndex.build(feats, "flat", device="cpu")
    gpu = ClassIndex.build(feats, "flat", device=str(cuda))
    gpu._forced_backend = "faiss"
    assert gpu._faiss is not gpu._faiss_cpu  # the index was moved to the GPU
    s_cpu, i_cpu = cpu.search(q, 5)
    s_gpu, i_gpu = gpu.search(q, 5)
    assert gpu.backend_used == "faiss"
    assert torch.equal(i_cpu, i_gpu)
    torch.testing.assert_close(s_cpu, s_gpu, rtol=0, atol=1e-5)


DDP_STEP = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    from kdpipe.clip import load_backbone
    from kdpipe.methods import build_method
    from kdpipe.train.loop import _average_gradients

    dist.init_process_group("nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(dev)
    torch.manual_seed(0)  # the same prompts on every rank
    sb = load_backbone("kd-tiny-s", device=dev)
    student = build_method("promptkd", sb, ["a", "b"], overrides={"teacher_dim": 16}).to(dev)
    student.set_class_features(torch.randn(2, 16, device=dev))
    images = torch.randn(4, 3, sb.dims.image_size, sb.dims.image_size, generator=torch.Generator().manual_seed(rank)).to(dev)
    student.logits(images).logsumexp(-1).mean().backward()  # a different loss on each rank
    params = [p for _, p in student.learned_parameters()]
    _average_gradients(params, world)
    flat = torch.cat([p.grad.reshape(-1) for p in params])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    same = all(torch.equal(g, gathered[0]) for g in gathered)
    json.dump({"rank": rank, "same": same, "backend": dist.get_backend()}, open(sys.argv[1] + f".{rank}", "w"))
    dist.destroy_process_group()
""")


@pytest.mark.multi_gpu
def test_one_nccl_ddp_step_averages_gradients(tmp_path):
    results = _on_two_ranks(DDP_STEP, tmp_path)
    assert all(r["same"] and r["backend"] == "nccl" for r in results)


def _on_two_ranks(source: str, tmp_path) -> list[dict]:
    """Run ``source`` under torchrun on two GPUs; each rank writes its JSON to ``argv[1].RANK``."""
    assert torch.cuda.device_count() >= 2, "needs two GPUs"
    script = tmp_path / "on_two_ranks.py"
    script.write_text(source)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"out.{r}").read_text()) for r in range(2)]


RANK_DEVICES = textwrap.dedent("""
    import json, sys
    import torch
    from kdpipe.dist import Ranks
    from kdpipe.train.device import pick_device
    ranks = Ranks()
    chosen = pick_device("cuda")  # what `kdpipe run` and `kdpipe classify` call
    ranks.share(None)  # brings up the process group, which binds NCCL to the current GPU
    json.dump({"rank": ranks.rank, "device": str(chosen), "current": torch.cuda.current_device()},
              open(sys.argv[1] + f".{ranks.rank}", "w"))
    ranks.close()
""")


@pytest.mark.multi_gpu
def test_each_torchrun_rank_trains_and_classifies_on_its_own_gpu(tmp_path):
    results = _on_two_ranks(RANK_DEVICES, tmp_path)
    assert [(r["device"], r["current"]) for r in results] == [("cuda:0", 0), ("cuda:1", 1)]
