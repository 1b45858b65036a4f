"""Padding token sequences of different lengths into one text batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from distill.errors import DataError

__all__ = ["IGNORE_INDEX", "collate_text"]

#: Label of a position that takes no loss (PyTorch's ``cross_entropy`` default ``ignore_index``).
IGNORE_INDEX = -100

_PADDED = ("input_ids", "attention_mask", "labels")


def _sequence(value: Any, key: str, index: int) -> torch.Tensor:
    tensor = torch.as_tensor(value)
    if tensor.dim() != 1 or tensor.is_floating_point() or tensor.is_complex():
        raise DataError(
            f"item {index}: {key!r} must be a 1-D sequence of integers; got a {tensor.dtype} "
            f"tensor of shape {list(tensor.shape)}"
        )
    return tensor.long()


def collate_text(items: Sequence[Mapping[str, Any]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad token sequences into a text batch.

    For ``N`` items whose longest ``input_ids`` has ``L`` tokens, item ``i`` of length
    ``l_i`` becomes row ``i`` of

    - ``input_ids`` ``[N, L]``: its ids, then ``pad_id`` at positions ``j >= l_i``;
    - ``attention_mask`` ``[N, L]``: the item's own mask (ones when it has none), then 0;
    - ``labels`` ``[N, L]``: its labels (its ``input_ids`` when it has none), then ``-100``.

    All three are int64. Every other key (e.g. the ``index`` the training loop adds) is
    collated with ``torch.utils.data.default_collate`` (tensors stacked, ints made int64).

    Args:
        items: mappings with a 1-D ``input_ids`` (tensor or list of ints), and optionally
            ``labels`` and ``attention_mask`` of the same length.
        pad_id: the id written at padded positions. Padding is masked out of attention and
            loss, so any valid id serves (usually the tokenizer's pad id).

    Raises:
        DataError: no items, an item without ``input_ids``, a length mismatch between an
            item's sequences, or items with different keys.
    """
    if len(items) == 0:
        raise DataError("collate_text needs at least one item; got an empty list")
    keys = set(items[0])
    rows: dict[str, list[torch.Tensor]] = {key: [] for key in _PADDED}
    for i, item in enumerate(items):
        if not isinstance(item, Mapping) or "input_ids" not in item:
            found = sorted(item) if isinstance(item, Mapping) else type(item).__name__
            raise DataError(f"item {i} must be a dict with 'input_ids'; got {found}")
        if set(item) != keys:
            raise DataError(
                f"items must all have the same keys; item 0 has {sorted(keys)}, "
                f"item {i} has {sorted(item)}"
            )
        ids = _sequence(item["input_ids"], "input_ids", i)
        labels = _sequence(item["labels"], "labels", i) if "labels" in item else ids
        mask = (
            _sequence(item["attention_mask"], "attention_mask", i)
            if "attention_mask" in item
            else torch.ones_like(ids)
        )
        for key, value in (("labels", labels), ("attention_mask", mask)):
            if value.shape != ids.shape:
                raise DataError(
                    f"item {i}: {key!r} has {value.shape[0]} positions but 'input_ids' has "
                    f"{ids.shape[0]}"
                )
        rows["input_ids"].append(ids)
        rows["labels"].append(labels)
        rows["attention_mask"].append(mask)

    length = max(ids.shape[0] for ids in rows["input_ids"])
    batch: dict[str, torch.Tensor] = {}
    for key, fill in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
        out = torch.full((len(items), length), fill, dtype=torch.int64)
        for i, row in enumerate(rows[key]):
            out[i, : row.shape[0]] = row
        batch[key] = out
    for key in sorted(keys - set(_PADDED)):
        batch[key] = default_collate([item[key] for item in items])
    return batch
