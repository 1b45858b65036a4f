"""From dataset items to the dict batches every method receives (DESIGN.md "Batches").

Datasets may yield ``(image, label)`` pairs (the built-in image sets, any user dataset,
mdistiller's ``(image, label, index)``) or dicts (text sets). :class:`BatchItems` turns each
item into a dict and adds ``index``, the item's position in its dataset (the key of the
teacher-output cache); the loader's collate function stacks (or pads) them into one batch.
The training loop never unpacks a batch: it hands it to the method.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..errors import DataError
from ..seeding import derive_seed

Collate = Callable[[list[dict[str, Any]]], dict[str, Any]]
"""Turns a list of dict items into one batch (default: PyTorch's ``default_collate``)."""


def as_item(item: Any, index: int) -> dict[str, Any]:
    """One dataset item as a dict with its ``index``.

    ``(inputs, targets, ...)`` gives ``{"inputs": ..., "targets": ...}`` (items after the
    second, such as an index of the user's own, are dropped: ``index`` is always the item's
    position); a mapping is copied, and keeps an ``index`` it already has.
    """
    if isinstance(item, Mapping):
        out = dict(item)
    elif isinstance(item, (tuple, list)) and len(item) >= 2:
        out = {"inputs": item[0], "targets": item[1]}
    else:
        raise DataError(
            f"dataset item {index} is a {type(item).__name__}; items must be (input, target) "
            "pairs or dicts of tensors"
        )
    out.setdefault("index", index)
    return out


class BatchItems(Dataset):
    """A view of ``base`` whose items are dicts with their ``index`` (see :func:`as_item`).

    ``set_epoch`` is passed on to ``base`` when it has one (datasets whose items change per
    epoch, such as the cache's views).
    """

    def __init__(self, base: Dataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return as_item(self.base[index], index)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


def batch_size(batch: Mapping[str, Any]) -> int:
    """The number of samples in a batch (the length of its ``index``, else of its first
    tensor)."""
    index = batch.get("index")
    if isinstance(index, torch.Tensor):
        return int(index.shape[0])
    return int(next(v for v in batch.values() if isinstance(v, torch.Tensor)).shape[0])


def batch_device(batch: Mapping[str, Any]) -> torch.device:
    """The device of a batch's tensors."""
    return next(v for v in batch.values() if isinstance(v, torch.Tensor)).device


def select(batch: Mapping[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """The sub-batch of the samples where the boolean mask ``rows`` ``[N]`` is true (every
    tensor with ``N`` rows is indexed; other values are kept)."""
    n = batch_size(batch)
    return {
        key: value[rows.to(value.device)]
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n
        else value
        for key, value in batch.items()
    }


def channels_last(batch: Mapping[str, Any]) -> dict[str, Any]:
    """``batch`` with its 4-D floating-point tensors (images) in channels-last memory order."""
    return {
        key: value.contiguous(memory_format=torch.channels_last)
        if isinstance(value, torch.Tensor) and value.dim() == 4 and value.is_floating_point()
        else value
        for key, value in batch.items()
    }


class EpochSampler(Sampler[int]):
    """A shuffled order of ``n`` indices that depends only on ``(seed, epoch)``.

    ``skip`` drops the first indices of the order (to resume an epoch interrupted after some
    batches).
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            order = list(range(self.n))
        else:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "order", self.epoch))
            order = torch.randperm(self.n, generator=generator).tolist()
        return iter(order[self.skip :])

    def __len__(self) -> int:
        return self.n - self.skip


def accumulation_groups(batches: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive groups of ``size`` batches (the last may be shorter): one optimizer step."""
    group: list[Any] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def train_loader(
    dataset: Dataset,
    sampler: Sampler[int],
    batch_size: int,
    collate: Collate | None = None,
    num_workers: int = 0,
    *,
    pin_memory: bool = False,
) -> DataLoader:
    """A loader of dict batches over ``dataset`` in ``sampler``'s order (see
    :class:`BatchItems`)."""
    return DataLoader(
        BatchItems(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        collate_fn=collate or default_collate,
        # A dataset that changes per epoch (cache views) must be re-sent to the workers.
        persistent_workers=num_workers > 0 and not hasattr(dataset, "set_epoch"),
    )
