"""Distillation losses: pure, stateless functions over tensors.

Each is differentiable in its student arguments only, computes in float32 even under autocast,
sums over the class dimension and averages over every other position.
"""

from .fsp import fsp_loss, fsp_matrix
from .hint import hint_loss
from .kd import kd_loss
from .mutual import mutual_loss, mutual_terms

__all__ = ["fsp_loss", "fsp_matrix", "hint_loss", "kd_loss", "mutual_loss", "mutual_terms"]
