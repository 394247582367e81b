"""Resolve a model spec into an open_clip CLIP, its transforms, tokenizer and dimensions.

Specs, in the order they are tried:
  - a friendly name (``vit-b-16``, ``vit-l-14`` ...) -> open_clip name + ``openai`` weights;
  - ``hf-hub:org/repo`` or ``local-dir:PATH`` -> handed to open_clip unchanged;
  - ``NAME:TAG`` -> open_clip architecture NAME with pretrained tag TAG;
  - ``NAME:PATH`` -> open_clip architecture NAME with weights from a local .pt/.safetensors file;
  - ``PATH`` to a .safetensors file written by :func:`save_backbone`: it records its architecture
    and its open_clip config, so it loads from itself alone (a ``local-dir:`` folder may be gone);
  - ``NAME`` alone -> random init, as open_clip does (the tiny test/demo configs are used this way).

Whatever the spelling, a pretrained tag builds the activation its weights were trained with
(:mod:`kdpipe.clip.activation`): ``vit-b-16`` and ``ViT-B-16:openai`` build ``ViT-B-16-quickgelu``,
and so does OpenAI's own TorchScript file given as ``ViT-B-16:/path/ViT-B-16.pt``. A plain state
dict (``ARCH:PATH``) cannot say how it was trained: its architecture is taken as given.

Weights are never fetched when ``HF_HUB_OFFLINE=1`` or the hub cannot be reached (one short
connect, :mod:`kdpipe.clip.hub_access`): a missing checkpoint fails in seconds with one line naming
the cache folder searched and both ways to provide it, instead of huggingface_hub's ~75 s of
retries; cached weights load with the hub switched off.

Modules: ``specs`` (parsing and checking a spec), ``registry`` (open_clip configs kdpipe knows),
``availability`` (can the weights be had, are they weights-only), ``loading`` (:func:`load_backbone`),
``saved`` (kdpipe's own checkpoints), ``model`` (:class:`Backbone`). Import from ``kdpipe.clip.backbones``.
"""

from kdpipe.clip.backbones.loading import load_backbone
from kdpipe.clip.backbones.model import Backbone, BackboneDims, built_activation
from kdpipe.clip.backbones.registry import BUILTIN_CONFIG_DIRS, known_architectures, model_config, register_builtin_configs, register_config_dir
from kdpipe.clip.backbones.saved import TOWERS, save_backbone, tower_of
from kdpipe.clip.backbones.specs import FRIENDLY_NAMES, WEIGHT_SUFFIXES, check_spec, parse_spec, spec_activation

__all__ = [
    "BUILTIN_CONFIG_DIRS", "FRIENDLY_NAMES", "TOWERS", "WEIGHT_SUFFIXES", "Backbone", "BackboneDims",
    "built_activation", "check_spec", "known_architectures", "load_backbone", "model_config", "parse_spec",
    "register_builtin_configs", "register_config_dir", "save_backbone", "spec_activation", "tower_of",
]
