"""Distillation methods, one file each, all with the :class:`Distiller` contract.

``METHODS`` is the registry of recipe stage methods: a plain dict from the name used in a
recipe's ``method:`` field to the stage class that validates the stage and builds its phases.
"""

from __future__ import annotations

from .base import Distiller, Output, Phase, StageContext, StageSpec, freeze, logits_of
from .dml import DML, DMLStage
from .fitnets import FitNets, FitNetsStage
from .fsp import FSP, FSPPair, FSPStage, propose_fsp_pairs
from .kd import KD, KDStage
from .supervised import Supervised, TrainStage
from .takd import TAKD, TAKDStage, assistant_ladder

METHODS: dict[str, type[StageSpec]] = {
    "train": TrainStage,
    "kd": KDStage,
    "fitnets": FitNetsStage,
    "fsp": FSPStage,
    "takd": TAKDStage,
    "dml": DMLStage,
}

__all__ = [
    "METHODS",
    "KD",
    "FSP",
    "FSPPair",
    "FitNets",
    "propose_fsp_pairs",
    "DML",
    "TAKD",
    "assistant_ladder",
    "Distiller",
    "Output",
    "Phase",
    "StageContext",
    "StageSpec",
    "Supervised",
    "freeze",
    "logits_of",
]
