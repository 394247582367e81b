"""Self-contained model bundles: everything ``classify`` needs, in one folder of JSON + safetensors.

A bundle folder holds:
  - ``bundle.json``: format version, kdpipe version, method, backbone (original spec, architecture,
    dims), preprocessing (image size, mean, std), class names, model identity, provenance, and the
    default inference precision (``kdpipe export --precision``; ``auto`` if not given);
  - ``backbone.safetensors``: the frozen CLIP weights the method runs on, with the open_clip config
    they are built from in their metadata (so neither a download, the run directory nor the spec's
    ``local-dir:`` folder is needed); the student's holds the vision tower only (it never encodes text);
  - ``method.safetensors``: the learned state (prompts, projector ...) with the method's meta;
  - ``class_features.safetensors``: ``[C, D]`` unit rows the images are scored against
    (:mod:`kdpipe.artefacts.class_features`);
  - ``classes.index`` + ``classes.index.json``: the class index over those rows;
  - optionally ``teacher/backbone.safetensors`` (the text tower only) + ``teacher/method.safetensors``:
    the teacher's text side, so ``--classes FILE`` can compute features for class names never seen.

:class:`ClassModel` is the in-memory form, made by :func:`load_bundle` or by ``runs.load_run`` from a
run directory; :func:`export_bundle` writes one. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from kdpipe.artefacts.class_features import IN_BUNDLE, ClassFeatures, read_class_features, write_class_features
from kdpipe.errors import KdpipeError
from kdpipe.io import replace_dir

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "kdpipe-bundle"
BUNDLE_VERSION = 1
BACKBONE_FILE = "backbone.safetensors"
METHOD_FILE = "method.safetensors"
INDEX_FILE = "classes.index"
TEACHER_DIR = "teacher"


@dataclass
class ClassModel:
    """A method, its class features and what goes with them: what ``classify`` runs."""

    method: Any  # PromptMethod, eval mode
    classnames: list[str]
    class_features: torch.Tensor  # [C, D] float32 unit rows
    logit_scale: float
    num_base: int | None = None
    source: str = ""  # where it came from (bundle folder or run dir + stage), for messages
    provenance: dict[str, Any] = field(default_factory=dict)
    teacher_loader: Callable[[], Any] | None = None  # the teacher method (its text side), loaded on demand
    index_path: Path | None = None  # a stored index over exactly these class features
    precision: str = "fp32"  # the image tower's precision now (infer.precision); loaded models are fp32
    default_precision: str = "auto"  # what `kdpipe classify` uses without --precision (a bundle records it)
    _teacher: Any = None

    def __post_init__(self):
        self.class_features = self.class_features.detach().float().cpu().contiguous()
        if self.class_features.dim() != 2 or self.class_features.shape[0] != len(self.classnames):
            raise KdpipeError(
                f"{self.source}: {tuple(self.class_features.shape)} class features for {len(self.classnames)} class names"
            )
        dim = feature_dim(self.method)
        if dim != self.class_features.shape[1]:
            raise KdpipeError(
                f"{self.source}: class features have dimension {self.class_features.shape[1]} but the "
                f"{self.method.name} image encoder (projector) outputs {dim}; they belong to different models, re-export the bundle"
            )

    # ---- identity and the pieces classify uses --------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.class_features.shape[1])

    def identity(self) -> dict[str, Any]:
        """A stable hash of what decides the predictions: method, backbone, learned state, classes."""
        h = hashlib.sha256()
        h.update(f"{self.method.name}\n{self.method.backbone.arch}\n".encode())
        for k, v in sorted(self.method.learned_state_dict().items()):
            h.update(k.encode())
            h.update(_tensor_bytes(v))
        h.update(_tensor_bytes(self.class_features))
        h.update("\n".join(self.classnames).encode())
        return {"id": h.hexdigest(), "name": self.method.name, "backbone": self.provenance.get("backbone", self.method.backbone.spec),
                "classes": len(self.classnames), "source": self.source}

    def preprocess(self) -> dict[str, Any]:
        bb = self.method.backbone
        return {"image_size": bb.dims.image_size, "mean": list(bb.mean), "std": list(bb.std),
                "resize": "shorter side to image_size, bicubic, then center crop"}

    def transform(self):
        from kdpipe.data.transforms import build_transform

        p = self.preprocess()
        return build_transform(False, p["image_size"], p["mean"], p["std"])

    def to(self, device) -> "ClassModel":
        self.method.to(device).eval()
        return self

    def encoder(self, compile: bool = False, batch: int = 256, say: Callable[[str], None] | None = None):
        """What classify runs; ``compile``: ``torch.compile`` it for batches of ``batch`` where that
        was measured to pay for this precision and device (``infer.compiled``; ``say`` gets a line if not)."""
        from kdpipe.infer.classify import Encoder
        from kdpipe.infer.compiled import compile_encoder

        method = self.method.eval()
        fn = compile_encoder(method.encode_images, batch, self.precision, method.device, say=say) if compile else method.encode_images
        model = self.identity()
        if self.precision != "fp32":  # its rows differ from fp32's by rounding: never resumed into one output
            model["id"] = hashlib.sha256(f"{model['id']}:{self.precision}".encode()).hexdigest()
        return Encoder(fn=fn, transform=self.transform(), model=model, precision=self.precision)

    def set_precision(self, name: str, device: str | torch.device | None = None) -> "ClassModel":
        """Run the image tower in ``name`` (``auto``: the measured default on ``device``, by default
        the model's); prepares the weights in place, so once per loaded model."""
        from kdpipe.infer.precision import prepare_tower, resolve

        dev = torch.device(device) if device is not None else self.method.device
        chosen = resolve(name, dev)
        if chosen != self.precision:
            if self.precision != "fp32":
                raise KdpipeError(f"{self.source} runs in {self.precision} already; load it again to run it in {chosen}")
            self.precision = prepare_tower(self.method.clip.model.visual, chosen, dev)
        return self

    def index(self, kind: str | None = None, device: str | torch.device = "cpu"):
        """The class index: the stored one when it fits the request, else built from the features
        (``auto`` when no kind is asked for: exact flat search below 100k classes)."""
        from kdpipe.infer.index import ClassIndex, read_sidecar, sidecar_path
        from kdpipe.infer.index.faiss_kinds import faiss_module

        stored_needs_faiss = self.index_path is not None and sidecar_path(self.index_path).is_file() and \
            read_sidecar(self.index_path).get("storage") == "faiss"
        if stored_needs_faiss and faiss_module() is None:  # flat then runs as an exact torch search
            return ClassIndex.build(self.class_features, kind or "flat", device=str(device))
        if self.index_path is not None and self.index_path.is_file():
            try:
                stored = ClassIndex.load(self.index_path, device=str(device))
            except KdpipeError as e:
                if getattr(e, "damage", None) is None or not is_bundle(self.index_path.parent):
                    raise
                raise damaged_file(self.index_path.parent, self.index_path.name, e.damage) from None
            if (kind is None or stored.kind == kind) and torch.equal(stored.features, self.class_features):
                return stored
        return ClassIndex.build(self.class_features, kind or "auto", device=str(device))

    # ---- open vocabulary --------------------------------------------------------------------------
    def with_classes(self, names: list[str]) -> "ClassModel":
        """The same model scoring ``names`` instead: stored rows where the names are known, else text features.

        New names need a text side: the method's own (text methods) or the teacher's (the student);
        without one this is a one-line error.
        """
        names = [n.strip() for n in names if n.strip()]
        if not names:
            raise KdpipeError("the --classes file lists no class names (one per line expected)")
        known = {}
        for i, n in enumerate(self.classnames):
            known.setdefault(n, i)
        if all(n in known for n in names):
            feats = self.class_features[[known[n] for n in names]]
        else:
            feats = self._text_features(names, [n for n in names if n not in known])
        return ClassModel(self.method, names, feats, self.logit_scale, None, self.source,
                          {**self.provenance, "classes_from": "--classes"}, self.teacher_loader,
                          precision=self.precision, default_precision=self.default_precision)

    def _text_features(self, names: list[str], new: list[str]) -> torch.Tensor:
        if not getattr(self.method, "needs_class_features", False):
            text = self.method
        elif self.teacher_loader is not None:
            if self._teacher is None:
                self._teacher = self.teacher_loader()
            text = self._teacher
        else:
            raise KdpipeError(
                f"{self.source} carries no teacher text encoder, so it cannot score new class names "
                f"({', '.join(new[:3])}{' ...' if len(new) > 3 else ''}); use class names it knows, "
                "re-export with --with-teacher-text, or classify from the run directory"
            )
        with torch.no_grad(), torch.autocast(text.device.type, enabled=False):
            feats = F.normalize(text.class_features(names).float(), dim=-1).cpu()
        if feats.shape[1] != self.dim:
            raise KdpipeError(f"the text side gives {feats.shape[1]}-d features, this model's images are {self.dim}-d")
        return feats


def feature_dim(method) -> int:
    """The dimension of ``method.encode_images``: one tiny forward pass (works for every method)."""
    size = method.backbone.dims.image_size
    was_training = method.training
    method.eval()
    with torch.no_grad():
        out = method.encode_images(torch.zeros(1, 3, size, size, device=method.device))
    method.train(was_training)
    return int(out.shape[-1])


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


# ---------------------------------------------------------------------------------- write
def export_steps(with_teacher_text: bool) -> list[str]:
    """The parts :func:`export_bundle` writes, in order: what its ``progress`` is called with."""
    return ["weights", "class features", "class index"] + (["teacher text"] if with_teacher_text else []) + ["bundle.json"]


def export_bundle(model: ClassModel, out: str | Path, *, index_kind: str = "auto", with_teacher_text: bool = False,
                  overwrite: bool = False, progress: Callable[[str], None] | None = None, precision: str = "auto") -> Path:
    """Write ``model`` as a bundle folder at ``out`` (built beside it, then renamed into place);
    ``progress(part)`` after each of :func:`export_steps` (a ViT-L's weights take seconds).
    ``precision``: the bundle's default inference precision (the weights are always saved fp32)."""
    done = progress or (lambda part: None)
    import kdpipe
    from kdpipe.clip.backbones import TOWERS
    from kdpipe.infer.index import ClassIndex
    from kdpipe.infer.precision import check_name

    check_name(precision)
    if model.precision != "fp32":
        raise KdpipeError(f"{model.source} runs in {model.precision}; export a model loaded in fp32 (the bundle's weights are fp32)")
    out = Path(out)
    if out.exists() and not overwrite:
        raise KdpipeError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    teacher = None
    if with_teacher_text:
        if model.teacher_loader is None:
            raise KdpipeError(f"{model.source} has no teacher to include (--with-teacher-text needs a run dir with a teacher stage)")
        teacher = model._teacher or model.teacher_loader()
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        method = model.method
        # a method scoring given class features (the student) never runs its own text tower
        _save_method(method, tmp, ("visual",) if method.needs_class_features else TOWERS)
        done("weights")
        write_class_features(tmp / IN_BUNDLE, ClassFeatures(model.class_features, model.classnames, model.logit_scale, model.num_base))
        done("class features")
        ClassIndex.build(model.class_features, index_kind).save(tmp / INDEX_FILE)
        done("class index")
        if teacher is not None:
            (tmp / TEACHER_DIR).mkdir()
            _save_method(teacher, tmp / TEACHER_DIR, ("text",))  # it only ever encodes class names here
            done("teacher text")
        bb = method.backbone
        info = {
            "format": BUNDLE_FORMAT,
            "version": BUNDLE_VERSION,
            "kdpipe_version": kdpipe.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": model.identity(),
            "method": method.name,
            "backbone": {"spec": model.provenance.get("backbone", bb.spec), "arch": bb.arch, "dims": bb.describe()},
            "preprocess": model.preprocess(),
            "classes": {"count": len(model.classnames), "dim": model.dim, "logit_scale": model.logit_scale,
                        "num_base": model.num_base, "names": model.classnames},
            "index": {"kind": index_kind, "file": INDEX_FILE},
            "precision": precision,
            "teacher_text": None if teacher is None else {"method": teacher.name, "backbone": teacher.backbone.arch},
            "provenance": {**model.provenance, "source": model.source},
        }
        (tmp / BUNDLE_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
        replace_dir(tmp, out)
        done("bundle.json")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return out


def _save_method(method, folder: Path, towers: tuple[str, ...]) -> None:
    """The method's learned state and the backbone ``towers`` it runs on, each recording what it is."""
    from kdpipe.clip import save_backbone
    from kdpipe.methods.io import save_learned

    bb = method.backbone
    save_backbone(bb.model, bb.arch, folder / BACKBONE_FILE, config=bb.config, towers=towers)
    save_learned(method, folder / METHOD_FILE)


# ---------------------------------------------------------------------------------- read
def is_bundle(path: str | Path) -> bool:
    return (Path(path) / BUNDLE_FILE).is_file()


def load_bundle(path: str | Path, device: str | torch.device = "cpu", precision: str = "fp32") -> ClassModel:
    """Rebuild the model of a bundle folder on ``device``; needs nothing outside the folder.

    ``precision``: the image tower's (fp32, bf16, int8 or auto; see ``infer.precision``); fp32 by
    default, exactly as trained. The bundle's recorded default is ``.default_precision``, what
    ``kdpipe classify`` uses without ``--precision``."""
    from kdpipe.infer.precision import check_name, resolve

    resolve(precision, device)  # a bad choice fails before any weights load
    path = Path(path)
    info_file = path / BUNDLE_FILE
    if path.is_dir():
        refuse_links_out(path)
    if not info_file.is_file():
        raise KdpipeError(f"{path} is not a kdpipe bundle (no {BUNDLE_FILE}); make one with kdpipe export --run-dir RUN --out {path}")
    try:
        info = json.loads(info_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise KdpipeError(f"{info_file} is unreadable ({e}); re-export the bundle") from None
    if info.get("format") != BUNDLE_FORMAT:
        raise KdpipeError(f"{info_file} is not a kdpipe bundle description (format {info.get('format')!r})")
    if int(info.get("version", 0)) > BUNDLE_VERSION:
        raise KdpipeError(f"{path} was written by a newer kdpipe (bundle version {info.get('version')}); upgrade kdpipe to load it")
    for name in (BACKBONE_FILE, METHOD_FILE, IN_BUNDLE):
        if not (path / name).is_file():
            raise KdpipeError(f"bundle {path} is incomplete: {name} is missing; re-export it")
        check_tensor_file(path, name)
    method = _load_method(path, device)
    cf = read_class_features(path / IN_BUNDLE)
    teacher_loader = None
    if (path / TEACHER_DIR / METHOD_FILE).is_file():
        def teacher_loader(d=path / TEACHER_DIR):
            for name in (BACKBONE_FILE, METHOD_FILE):
                check_tensor_file(path, f"{TEACHER_DIR}/{name}")
            return _load_method(d, device)
    default = info.get("precision", "auto")
    check_name(default if isinstance(default, str) else repr(default), f"{info_file}: precision")
    return ClassModel(
        method, cf.classnames, cf.features, cf.logit_scale, cf.num_base,
        source=f"bundle {path}", provenance={**info.get("provenance", {}), "backbone": info["backbone"]["spec"]},
        teacher_loader=teacher_loader, index_path=path / INDEX_FILE, default_precision=default,
    ).set_precision(precision, device)


def refuse_links_out(bundle: Path) -> None:
    """Refuse a bundle holding a link (to a file or a folder) that leads out of its folder.

    A bundle may come from someone else; one of its links could make kdpipe read any file the user
    can read. Links between the bundle's own files are fine, and so is a link naming the bundle.
    """
    root = bundle.resolve()
    for folder, dirs, files in os.walk(bundle):  # links to folders are listed, never entered
        for name in dirs + files:
            entry = Path(folder) / name
            if entry.is_symlink():
                target = entry.resolve()
                if target != root and root not in target.parents:
                    rel = entry.relative_to(bundle).as_posix()
                    raise KdpipeError(f"bundle {bundle}: {rel} is a link to {target}, outside the bundle; "
                                      "refusing to follow it (copy the file into the bundle instead)")


def damaged_file(bundle: Path, name: str, reason: str) -> KdpipeError:
    return KdpipeError(f"bundle {bundle}: file {name} is damaged ({reason}); re-export the bundle")


def check_tensor_file(bundle: Path, name: str) -> None:
    """Refuse a damaged, truncated or foreign (pickle ...) tensor file of ``bundle`` in one line.

    Only the header is read (safetensors checks that it covers the whole file), so this costs
    next to nothing before the readers, whose own messages do not know about bundles.
    """
    from safetensors import SafetensorError, safe_open

    from kdpipe.io import tensor_file_problem

    file = bundle / name
    try:
        with safe_open(str(file), framework="pt"):
            pass
    except (SafetensorError, OSError, ValueError) as e:
        raise damaged_file(bundle, name, tensor_file_problem(file, e)) from None


def _load_method(folder: Path, device):
    """The method saved in ``folder`` on the backbone weights saved beside it (no download)."""
    from kdpipe.clip import load_backbone
    from kdpipe.methods.io import load_method

    backbone = load_backbone(str(folder / BACKBONE_FILE), device=device)
    return load_method(folder / METHOD_FILE, device=device, backbone=backbone)[0]
