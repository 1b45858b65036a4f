"""Distillation losses: pure, stateless functions over tensors.

Each is differentiable in its student arguments only, computes in float32 even under autocast,
sums over the class dimension and averages over every other position.
"""

from .crd import contrast_scores, crd_nce_loss
from .dist import dist_loss, dist_terms
from .dkd import dkd_loss, dkd_terms
from .fsp import fsp_loss, fsp_matrix
from .hint import hint_loss
from .kd import kd_loss
from .mutual import mutual_loss, mutual_terms
from .pkt import pkt_loss
from .rkd import rkd_loss, rkd_terms
from .standardize import standardize

__all__ = [
    "contrast_scores",
    "crd_nce_loss",
    "dist_loss",
    "dist_terms",
    "dkd_loss",
    "dkd_terms",
    "fsp_loss",
    "fsp_matrix",
    "hint_loss",
    "kd_loss",
    "mutual_loss",
    "mutual_terms",
    "pkt_loss",
    "rkd_loss",
    "rkd_terms",
    "standardize",
]
