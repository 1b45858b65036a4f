"""Distillation losses: pure, stateless functions over tensors.

Each is differentiable in its student arguments only, computes in float32 even under autocast,
sums over the class dimension and averages over every other position.
"""

from .kd import kd_loss
from .mutual import mutual_loss, mutual_terms

__all__ = ["kd_loss", "mutual_loss", "mutual_terms"]
