"""CTR models: DeepFM and DCNv2. Each returns logits and exposes ``features(x)`` and ``head``."""

from nacs_engine.models.dcnv2 import DCNv2
from nacs_engine.models.deepfm import DeepFM
from nacs_engine.models.registry import BACKBONES, build_model

__all__ = ["BACKBONES", "DCNv2", "DeepFM", "build_model"]
