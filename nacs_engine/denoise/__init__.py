"""Label correction and Monte Carlo dropout denoising."""

from nacs_engine.denoise.label_correction import (
    corrected_targets,
    correction_strength,
    global_trust,
    label_correcting_loss,
    local_trust,
)
from nacs_engine.denoise.mc_dropout import RunningMoments, mc_dropout_scores, ucb_scores

__all__ = [
    "RunningMoments",
    "corrected_targets",
    "correction_strength",
    "global_trust",
    "label_correcting_loss",
    "local_trust",
    "mc_dropout_scores",
    "ucb_scores",
]
