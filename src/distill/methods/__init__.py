"""Distillation methods, one file each, all with the :class:`Distiller` contract.

``METHODS`` is the registry of recipe stage methods: a plain dict from the name used in a
recipe's ``method:`` field to the stage class that validates the stage, builds its phases, and
owns its report section and demo entry. Adding a method is one file and one line here.
"""

from __future__ import annotations

from .at import AT, ATStage
from .base import (
    DemoEntry,
    Distiller,
    KDFields,
    Output,
    Phase,
    Progress,
    StageContext,
    StageSpec,
    TeacherFields,
    TeacherStudentSpec,
)
from .crd import CRD, CRDStage
from .dist import DIST, DISTStage
from .dkd import DKD, DKDStage
from .dml import DML, DMLStage
from .fitnets import FitNets, FitNetsStage
from .fsp import FSP, FSPPair, FSPStage, propose_fsp_pairs
from .kd import KD, KDStage
from .pkt import PKT, PKTStage
from .rkd import RKD, RKDStage
from .supervised import Supervised, TrainStage
from .takd import TAKD, TAKDStage, assistant_ladder

METHODS: dict[str, type[StageSpec]] = {
    "train": TrainStage,
    "kd": KDStage,
    "fitnets": FitNetsStage,
    "fsp": FSPStage,
    "at": ATStage,
    "takd": TAKDStage,
    "dml": DMLStage,
    "dkd": DKDStage,
    "dist": DISTStage,
    "rkd": RKDStage,
    "pkt": PKTStage,
    "crd": CRDStage,
}

__all__ = [
    "AT",
    "CRD",
    "DIST",
    "DKD",
    "DML",
    "FSP",
    "KD",
    "METHODS",
    "PKT",
    "RKD",
    "TAKD",
    "DemoEntry",
    "Distiller",
    "FSPPair",
    "FitNets",
    "KDFields",
    "Output",
    "Phase",
    "Progress",
    "StageContext",
    "StageSpec",
    "Supervised",
    "TeacherFields",
    "TeacherStudentSpec",
    "assistant_ladder",
    "propose_fsp_pairs",
]
