"""Tiny zoo-like classifiers for the embedding methods' tests (RKD, PKT, CRD)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class Net(nn.Module):
    """A zoo-like classifier on 6 features: ``body`` then ``head`` = flatten, fc
    (``head.flatten`` is the penultimate feature)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, width), nn.Tanh())
        self.head = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc=nn.Linear(width, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def make_pair() -> tuple[Net, Net]:
    """A teacher of width 12 and a student of width 4, seeded."""
    torch.manual_seed(0)
    return Net(12), Net(4)


def grads(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    """The gradients of ``loss`` for ``model``'s parameters."""
    model.zero_grad()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]
