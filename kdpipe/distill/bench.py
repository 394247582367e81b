"""``kdpipe bench distill``: one distillation step, the reference's way and kdpipe's, in one process.

What each variant does per step (same weights, batch, resolution, precision and threads):
  - ``reference``: what the official PromptKD trainer does every step: the teacher's image tower
    *and* its prompted text tower over all C classes (no gradient), then the student
    fwd+bwd+SGD, with the student's tower run the official way (:mod:`reference_tower`);
  - ``kdpipe``: stored class features, the teacher's image tower per step (``cache_views = 0``);
  - ``kdpipe cached``: the teacher's features read from a teacher cache;
  - ``limit``: kdpipe's student fwd+bwd+SGD alone (what no teacher-side saving can beat);
  - ``reference student``: the official-style student fwd+bwd+SGD alone, the baseline kdpipe's
    student tower is held to.
Rounds are interleaved (A B C ... A B C ...) so drift in the machine's speed hits every variant
alike; min and median per variant are reported. The teacher's text cost per class is measured
separately, so the reference step at a class count that was not run (C = 1000 on a CPU) can be
read off, marked as extrapolated.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from kdpipe.distill.loss import class_logits, kd_loss


@dataclass
class DistillBench:
    teacher: str
    student: str
    batch: int
    image_size: int
    device: str
    precision: str
    torch_threads: int
    rounds: int
    classes: list[int]
    times_s: dict[str, list[float]] = field(default_factory=dict)  # variant -> one time per round
    text_s_per_class: float = 0.0  # the teacher's prompted text tower, per class
    peak_gpu_mb: float | None = None

    def best(self, variant: str) -> float:
        return min(self.times_s[variant])

    def median(self, variant: str) -> float:
        return statistics.median(self.times_s[variant])

    def reference_at(self, classes: int) -> tuple[float, bool]:
        """(reference step time at ``classes``, whether it is extrapolated from the per-class text cost)."""
        key = f"reference C={classes}"
        if key in self.times_s:
            return self.median(key), False
        nearest = min(self.classes, key=lambda c: abs(c - classes))
        return self.median(f"reference C={nearest}") + (classes - nearest) * self.text_s_per_class, True

    def ratios(self) -> dict[str, float]:
        out = {
            "student kdpipe / reference (<= 1 is the goal)": self.median("limit") / self.median("reference student"),
            "limit / cached (>= 0.9 is the goal)": self.median("limit") / self.median("kdpipe cached"),
        }
        for c in sorted({*self.classes, 1000}):
            ref, extrapolated = self.reference_at(c)
            mark = " (extrapolated)" if extrapolated else ""
            out[f"reference / kdpipe at C={c}{mark}"] = ref / self.median("kdpipe")
            out[f"reference / cached at C={c}{mark}"] = ref / self.median("kdpipe cached")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratios": self.ratios(),
                "median_s": {k: self.median(k) for k in self.times_s}, "min_s": {k: self.best(k) for k in self.times_s}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


class _Setup:
    """The models and tensors every variant shares."""

    def __init__(self, teacher_spec: str, student_spec: str, classes: list[int], batch: int, device: torch.device, amp: bool):
        from kdpipe.clip import load_backbone
        from kdpipe.distill import ForwardTeacher
        from kdpipe.distill.teacher_cache import CachedTeacher
        from kdpipe.methods import build_method
        from kdpipe.train.device import autocast

        self.device = device
        self.amp = (lambda: autocast(device)) if amp else contextlib.nullcontext
        names = [f"class {i}" for i in range(max(classes))]
        self.names = names
        tb = load_backbone(teacher_spec, device=device)
        sb = load_backbone(student_spec, device=device)
        self.teacher = build_method("promptsrc", tb, names).to(device).eval()
        self.student = build_method("promptkd", sb, names, overrides={"teacher_dim": tb.dims.embed_dim}).to(device)
        gen = torch.Generator().manual_seed(0)
        size = sb.dims.image_size
        self.images = torch.randn(batch, 3, size, size, generator=gen).to(device)
        self.teacher_images = (self.images if tb.dims.image_size == size else
                               F.interpolate(self.images, size=(tb.dims.image_size,) * 2, mode="bicubic", align_corners=False))
        self.keys = [f"{i:08d}" for i in range(batch)]
        with torch.no_grad(), self.amp():
            self.class_features = F.normalize(self.teacher._text_features(names).float(), dim=-1)
        self.student.set_class_features(self.class_features)
        self.forward_teacher = ForwardTeacher(self.teacher, amp=self.amp)
        self.cached_teacher = CachedTeacher(self.forward_teacher(self.teacher_images, self.keys).half().cpu().unsqueeze(0),
                                            self.keys, device)
        self.scale_t = float(self.teacher.clip.logit_scale)
        self.scale_s = float(self.student.clip.logit_scale)
        self.opt = torch.optim.SGD([p for _, p in self.student.learned_parameters()], lr=1e-6, momentum=0.9)
        self.student.train()

    # ---- the pieces
    def _sgd(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _kdpipe_student(self, teacher_features: torch.Tensor) -> None:
        with self.amp():
            s = class_logits(self.student.encode_images(self.images), self.class_features, self.scale_s)
        t = class_logits(teacher_features, self.class_features, self.scale_t)
        self._sgd(kd_loss(s, t))

    def _reference_student(self, teacher_logits: torch.Tensor, text_features: torch.Tensor) -> None:
        from kdpipe.distill.reference_tower import reference_vision

        st = self.student
        first, deep = st.vision_prompts()
        with self.amp():
            feats = st.projector(reference_vision(st.clip.model.visual, self.images, first, deep))
        s = class_logits(feats, text_features, self.scale_s)
        self._sgd(kd_loss(s, teacher_logits))

    # ---- the variants
    def reference(self, classes: int) -> None:
        with torch.no_grad(), self.amp():
            t_img = F.normalize(self.teacher.encode_images(self.teacher_images).float(), dim=-1)
            text = F.normalize(self.teacher._text_features(self.names[:classes]).float(), dim=-1)
        t = class_logits(t_img, text, self.scale_t)
        # the student scores the same C classes the teacher's text tower encoded this step
        self._reference_student(t, text)

    def kdpipe(self) -> None:
        self._kdpipe_student(self.forward_teacher(self.teacher_images, self.keys))

    def cached(self) -> None:
        self._kdpipe_student(self.cached_teacher(self.teacher_images, self.keys))

    def limit(self) -> None:
        self._kdpipe_student(self._fixed_teacher)

    def reference_student(self) -> None:
        self._reference_student(self._fixed_logits, self.class_features)

    def freeze_targets(self) -> None:
        self._fixed_teacher = self.forward_teacher(self.teacher_images, self.keys)
        self._fixed_logits = class_logits(self._fixed_teacher, self.class_features, self.scale_t)

    def text_pass(self, classes: int) -> None:
        with torch.no_grad(), self.amp():
            self.teacher._text_features(self.names[:classes])


def bench_distill(teacher: str, student: str, classes: list[int], batch: int, rounds: int, device: str,
                  amp: bool = True, progress: Callable[[str], None] | None = None) -> DistillBench:
    from kdpipe.train.device import amp_dtype

    say = progress or (lambda msg: None)
    dev = torch.device(device)
    classes = sorted(set(classes))
    say(f"building {teacher} (PromptSRC teacher) and {student} (PromptKD student), {max(classes)} classes")
    s = _Setup(teacher, student, classes, batch, dev, amp)
    s.freeze_targets()
    variants: dict[str, Callable[[], None]] = {
        "limit": s.limit,
        "reference student": s.reference_student,
        "kdpipe cached": s.cached,
        "kdpipe": s.kdpipe,
        **{f"reference C={c}": (lambda c=c: s.reference(c)) for c in classes},
    }
    say("warm-up: one step of each variant")
    for fn in variants.values():
        fn()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for r in range(rounds):
        say(f"round {r + 1} of {rounds}")
        for name, fn in variants.items():
            times[name].append(_timed(fn, dev))
    # the teacher's text tower per class, from the largest class count (least overhead per class)
    c = max(classes)
    text_s = statistics.median(_timed(lambda: s.text_pass(c), dev) for _ in range(max(1, min(rounds, 3)))) / c
    dtype = amp_dtype(dev) if amp else None
    return DistillBench(
        teacher=teacher, student=student, batch=batch, image_size=int(s.images.shape[-1]), device=str(dev),
        precision=f"autocast {str(dtype).replace('torch.', '')}" if dtype is not None else "fp32",
        torch_threads=torch.get_num_threads(), rounds=rounds, classes=classes, times_s=times, text_s_per_class=text_s,
        peak_gpu_mb=torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None,
    )


def summary_lines(res: DistillBench) -> list[str]:
    lines = [f"{'variant':<20} {'min s':>9} {'median s':>9}"]
    for name in res.times_s:
        lines.append(f"{name:<20} {res.best(name):>9.4f} {res.median(name):>9.4f}")
    lines.append(f"teacher text tower: {1000 * res.text_s_per_class:.3f} ms per class (reference pays it every step)")
    lines += [f"{name}: {value:.2f}x" for name, value in res.ratios().items()]
    if res.peak_gpu_mb is not None:
        lines.append(f"peak GPU memory: {res.peak_gpu_mb:,.0f} MB")
    return lines
