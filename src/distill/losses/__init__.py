"""Distillation losses: pure, stateless functions over tensors.

Each is differentiable in its student arguments only, computes in float32 even under autocast,
sums over the class dimension and averages over every other position (over a ``mask`` when
given).
"""

from .at import at_loss, at_terms, attention_map
from .crd import contrast_scores, crd_nce_loss
from .dist import dist_loss, dist_terms
from .divergences import DIVERGENCES, divergence
from .dkd import dkd_loss, dkd_terms
from .fsp import fsp_loss, fsp_matrix
from .hint import hint_loss
from .kd import kd_loss
from .mutual import mutual_loss, mutual_terms
from .pkt import pkt_loss
from .rkd import rkd_loss, rkd_terms
from .sparse import TopK, topk_from_logits
from .standardize import standardize

__all__ = [
    "DIVERGENCES",
    "TopK",
    "at_loss",
    "at_terms",
    "attention_map",
    "contrast_scores",
    "crd_nce_loss",
    "dist_loss",
    "dist_terms",
    "divergence",
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
    "topk_from_logits",
]
