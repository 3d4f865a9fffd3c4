"""Model zoo: timm/built-in backbones, CBAM and spatial attention, heads, autoencoders, pretrained weights.

The stable API is in ``fashionops.models.factory``: ``model_spec``, ``build_model``,
``save_model``, ``load_model`` (see ``docs/architecture.md``, "Model contract").
"""

from fashionops.models.factory import build_model, load_model, model_spec, read_spec, save_model

__all__ = ["build_model", "load_model", "model_spec", "read_spec", "save_model"]
