"""A cache of teacher outputs, so the teacher runs once per sample *view*, not once per step.

Online distillation pays for a teacher forward pass on every step. Without random
augmentation a training sample has one view, so after the first epoch the teacher never runs
again and the cache is exact. With random augmentation the cache keeps ``V`` views per sample:
view ``v`` of sample ``i`` is rebuilt from a generator seeded by ``(seed, i, v)`` (see
:class:`ViewDataset`), each epoch picks one of the ``V`` views per sample, and the stored
output is the teacher's output on exactly that view. Teacher and student always see the same
view.

A batch's keys are ``index * V + view`` (its ``index`` and ``view`` entries; ``view`` is 0
when absent). Each key holds one sample's outputs, of any shape (``[C]`` for a classifier,
``[L−1, V]`` for a causal LM), stored in float16 by default (float32 on request), or as top-k
along the last dimension (the k largest logits plus the log-partition at the stage's
temperature; the rest of the probability mass is spread uniformly over the other classes when
read back). Storage is in memory, or on disk as memory-mapped ``.npy`` arrays under the run
directory, which survive a restart. A :class:`TeacherCache` is the store of a
:class:`~distill.teachers.Teacher`: methods never see it.

Every cache carries a fingerprint of the teacher weights, the data, the transform, the view
count and the storage settings; a mismatch rebuilds it with a message. It is never silently
stale.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..checks import check_temperature
from ..data.batches import as_item, batch_device, select
from ..errors import ConfigError, DataError
from ..files import atomic_write_json
from ..seeding import derive_seed

CACHE_FORMAT = 1


def tensor_digest(update: Callable[[bytes], None], tensor: torch.Tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to a hash."""
    t = tensor.detach().cpu().contiguous()
    update(f"{t.dtype}{tuple(t.shape)}".encode())
    if t.dtype == torch.bfloat16:
        t = t.float()
    update(t.numpy().tobytes())


def model_fingerprint(model: nn.Module) -> str:
    """A hash of every parameter and buffer of ``model``."""
    h = hashlib.sha256()
    for name, value in model.state_dict().items():
        h.update(name.encode())
        tensor_digest(h.update, value)
    return h.hexdigest()[:16]


def dataset_fingerprint(dataset: Dataset) -> str:
    """A hash of the training data: the whole tensors when the dataset exposes them (the
    built-in image sets' ``images`` and ``labels``, the packed text sets' ``tokens``), else its
    length and a sample of items."""
    h = hashlib.sha256()
    base = dataset.base if isinstance(dataset, ViewDataset) else dataset
    tensors = [getattr(base, name, None) for name in ("images", "labels", "tokens", "starts")]
    if any(isinstance(t, torch.Tensor) for t in tensors):
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                tensor_digest(h.update, tensor)
    h.update(str(len(base)).encode())
    n = len(base)
    for i in sorted({0, n // 3, n // 2, n - 1} if n else set()):
        for key, value in sorted(as_item(base[i], i).items()):
            h.update(key.encode())
            if isinstance(value, torch.Tensor):
                tensor_digest(h.update, value)
            else:
                h.update(repr(value).encode())
    return h.hexdigest()[:16]


def transform_description(dataset: Dataset) -> str:
    """A printable identity of the dataset's random transform (``none`` when it has none)."""
    base = dataset.base if isinstance(dataset, ViewDataset) else dataset
    transform = getattr(base, "transform", None)
    if transform is None:
        return "none"
    func = getattr(transform, "func", transform)
    keywords = getattr(transform, "keywords", {})
    kw = {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in keywords.items()}
    return f"{getattr(func, '__module__', '')}.{getattr(func, '__qualname__', repr(func))}{kw}"


class ViewDataset(Dataset):
    """Training items with their view: ``{"inputs", "targets", "index": i, "view": v}``.

    Without a transform every sample has one view (``v = 0``). With one, view ``v`` of sample
    ``i`` is the transform applied with a generator seeded by ``(seed, i, v)``, so it can be
    rebuilt exactly in any epoch and any process; epoch ``e`` uses view
    ``hash(seed, e, i) mod V`` of sample ``i``.

    Args:
        base: a dataset with ``images`` ``[N, C, H, W]``, ``labels`` ``[N]`` and an optional
            ``transform(image, generator=...)`` (the built-in datasets), or any dataset whose
            items are deterministic (then ``views`` must be 1).
        views: views kept per sample (V).
        seed: the run's seed.
    """

    def __init__(self, base: Dataset, views: int = 1, seed: int = 0) -> None:
        if views < 1:
            raise ConfigError(f"cache_views must be at least 1, got {views}")
        self.base = base
        self.views = views
        self.seed = seed
        self.epoch = 0
        self.transform = getattr(base, "transform", None)
        self.tensors = isinstance(getattr(base, "images", None), torch.Tensor)
        if self.transform is not None and not self.tensors:
            raise ConfigError(
                "the teacher cache needs a dataset whose random transform can be replayed "
                "(the built-in datasets); turn the cache off for this dataset"
            )
        if self.transform is None and views > 1:
            # One view is all there is: more would only store the same output V times.
            self.views = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def view_of(self, index: int, epoch: int | None = None) -> int:
        if self.views == 1:
            return 0
        epoch = self.epoch if epoch is None else epoch
        return derive_seed(self.seed, "view", epoch, index) % self.views

    def view(self, index: int, view: int) -> dict[str, Any]:
        """View ``view`` of sample ``index`` as a dict item (the same every time)."""
        if not self.tensors:
            return {**as_item(self.base[index], index), "view": view}
        image, label = self.base.images[index], self.base.labels[index]
        if self.transform is not None:
            seed = derive_seed(self.seed, "augment", index, view)
            image = self.transform(image, generator=torch.Generator().manual_seed(seed))
        return {"inputs": image, "targets": label, "index": index, "view": view}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.view(index, self.view_of(index))


@dataclass
class CacheSettings:
    """What a stage asked for: where the cache lives and how values are stored."""

    store: str = "memory"  # memory | disk
    dtype: str = "float16"  # float16 | float32
    views: int = 1
    topk: int | None = None


_DTYPES = {"float16": np.float16, "float32": np.float32}


def check_cache_settings(settings: CacheSettings, classes: int) -> None:
    """:class:`ConfigError` unless a cache of ``settings`` can hold a teacher's outputs over
    ``classes`` classes (checked before anything trains, and by :class:`TeacherCache`)."""
    if settings.store not in ("memory", "disk"):
        raise ConfigError(f"cache_store must be memory or disk, got {settings.store!r}")
    if settings.dtype not in _DTYPES:
        raise ConfigError(f"cache_dtype must be float16 or float32, got {settings.dtype!r}")
    if settings.topk is not None and not 1 <= settings.topk < classes:
        raise ConfigError(
            f"cache_topk must be between 1 and {classes - 1} (the number of classes "
            f"minus one), got {settings.topk}"
        )


def cache_keys(batch: Mapping[str, Any], views: int) -> torch.Tensor:
    """The cache keys of a batch's samples: ``index * views + view``."""
    keys = batch["index"] * views
    if "view" in batch:
        keys = keys + batch["view"]
    return keys


class TeacherCache:
    """Teacher outputs by key (``i * V + v``), in memory or in ``.npy`` files on disk.

    Args:
        size: number of keys (samples × views).
        shape: the outputs of one sample: ``C`` (an int) for ``[C]`` logits, or a tuple such
            as ``(L - 1, V)``; top-k storage keeps the ``k`` largest along the last dimension.
        fingerprint: identity of teacher, data, transform, views and settings.
        settings: storage options.
        directory: where the disk cache lives (required for ``store="disk"``).
        temperature: the temperature that top-k storage keeps the log-partition at.
        log: where messages go.
        positions: for outputs along positions whose number varies between batches (a
            causal LM's ``[N, L−1, V]`` when sequences are padded to each batch's longest):
            a function giving a batch's positions shape (e.g. ``(L−1,)``); ``shape`` is then
            the largest, and each item is stored in its first positions and read back cut or
            zero-padded to the batch's (positions past an item's end are padding, which no
            loss reads).
    """

    def __init__(
        self,
        size: int,
        shape: int | tuple[int, ...],
        fingerprint: str,
        settings: CacheSettings,
        *,
        directory: str | Path | None = None,
        temperature: float = 1.0,
        log: Callable[[str], None] = print,
        positions: Callable[[Mapping[str, Any]], tuple[int, ...]] | None = None,
    ) -> None:
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.positions = positions
        classes = self.shape[-1]
        check_cache_settings(settings, classes)
        self.size = size
        self.fingerprint = fingerprint
        self.settings = settings
        self.temperature = check_temperature(temperature)
        self.log = log
        self.directory = Path(directory) if directory is not None else None
        self.hits = 0
        self.misses = 0
        width = settings.topk or classes
        positions = self.shape[:-1]
        shapes: dict[str, tuple[tuple[int, ...], Any]] = {
            "values": ((size, *positions, width), _DTYPES[settings.dtype]),
            "filled": ((size,), np.bool_),
        }
        if settings.topk:
            shapes["indices"] = ((size, *positions, width), np.int32)
            shapes["lse"] = ((size, *positions), np.float32)
        if settings.store == "disk":
            if self.directory is None:
                raise ConfigError("a disk cache needs a directory")
            self.arrays = self._open_disk(shapes)
        else:
            self.arrays = {k: np.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()}

    @property
    def num_classes(self) -> int:
        """Size of the last dimension of a sample's outputs."""
        return self.shape[-1]

    # -- disk ----------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {
            "format": CACHE_FORMAT,
            "fingerprint": self.fingerprint,
            "size": self.size,
            "shape": list(self.shape),
            "dtype": self.settings.dtype,
            "topk": self.settings.topk,
            "views": self.settings.views,
        }

    def _open_disk(self, shapes: dict[str, tuple[tuple[int, ...], Any]]) -> dict[str, np.ndarray]:
        assert self.directory is not None
        meta_path = self.directory / "cache.json"
        reuse = False
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                meta = {}
            if meta.get("format") != CACHE_FORMAT:
                raise ConfigError(
                    f"the teacher cache in {self.directory} was written in format "
                    f"{meta.get('format')!r} by another version of distill; this version "
                    f"writes format {CACHE_FORMAT}. Delete that directory (it is rebuilt on the "
                    "next run) or set cache: none"
                )
            if meta == self._meta():
                reuse = all((self.directory / f"{k}.npy").is_file() for k in shapes)
            else:
                self.log(
                    f"teacher cache in {self.directory} is stale (teacher, data, transform, "
                    "views or storage changed); rebuilding it"
                )
        self.directory.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for key, (shape, dtype) in shapes.items():
            path = self.directory / f"{key}.npy"
            if reuse:
                try:
                    array = np.load(path, mmap_mode="r+")
                    if array.shape == shape and array.dtype == dtype:
                        arrays[key] = array
                        continue
                except (OSError, ValueError):
                    pass
                self.log(f"teacher cache file {path} is damaged; rebuilding the cache")
                return self._open_disk_fresh(shapes)
            arrays[key] = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        if not reuse:
            atomic_write_json(meta_path, self._meta())
        else:
            filled = int(arrays["filled"].sum())
            self.log(f"teacher cache in {self.directory}: reusing {filled}/{self.size} entries")
        return arrays

    def _open_disk_fresh(
        self, shapes: dict[str, tuple[tuple[int, ...], Any]]
    ) -> dict[str, np.ndarray]:
        assert self.directory is not None
        (self.directory / "cache.json").unlink(missing_ok=True)
        arrays = {
            key: np.lib.format.open_memmap(
                self.directory / f"{key}.npy", mode="w+", dtype=dtype, shape=shape
            )
            for key, (shape, dtype) in shapes.items()
        }
        atomic_write_json(self.directory / "cache.json", self._meta())
        return arrays

    def flush(self) -> None:
        """Write filled entries to disk (the ``filled`` flags last, so a crash between the two
        can only lose entries, never mark an unwritten one as filled)."""
        if self.settings.store != "disk":
            return
        for key, array in self.arrays.items():
            if key != "filled":
                array.flush()
        self.arrays["filled"].flush()

    # -- reading and writing -------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes the cache's arrays take (in memory or on disk)."""
        return int(sum(a.nbytes for a in self.arrays.values()))

    @property
    def filled_fraction(self) -> float:
        return float(self.arrays["filled"].mean()) if self.size else 0.0

    def describe(self) -> str:
        """One line: where, how big, how full."""
        where = self.directory if self.settings.store == "disk" else "memory"
        mode = f"top-{self.settings.topk}" if self.settings.topk else "all classes"
        return (
            f"teacher cache: {self.size} entries ({mode}, {self.settings.dtype}) in {where}, "
            f"{self.nbytes / 2**20:.1f} MiB, {100 * self.filled_fraction:.0f}% filled"
        )

    def missing(self, keys: torch.Tensor) -> torch.Tensor:
        """Boolean mask over ``keys``: true where nothing is stored yet."""
        filled = torch.from_numpy(np.asarray(self.arrays["filled"][keys.cpu().numpy()]))
        return ~filled

    def put(self, keys: torch.Tensor, logits: torch.Tensor) -> None:
        """Store teacher outputs ``[B, *shape]`` for ``keys`` ``[B]``."""
        idx = keys.cpu().numpy()
        logits = logits.detach().float().cpu()
        at = self._at(idx, logits.shape[1:-1])
        if self.settings.topk:
            top = logits.topk(self.settings.topk, dim=-1)
            self.arrays["values"][at] = top.values.numpy().astype(self.arrays["values"].dtype)
            self.arrays["indices"][at] = top.indices.numpy().astype(np.int32)
            lse = torch.logsumexp(logits / self.temperature, dim=-1)
            self.arrays["lse"][at] = lse.numpy()
        else:
            self.arrays["values"][at] = logits.numpy().astype(self.arrays["values"].dtype)
        self.arrays["filled"][idx] = True

    def _at(self, idx: np.ndarray, positions: tuple[int, ...]) -> Any:
        """The index of items ``idx`` in the arrays, cut to ``positions`` (a batch's; at most
        the stored ones) when they vary between batches."""
        if tuple(positions) == self.shape[:-1]:
            return idx
        if len(positions) != len(self.shape) - 1 or any(
            p > q for p, q in zip(positions, self.shape[:-1], strict=True)
        ):
            raise DataError(
                f"teacher cache: a batch has outputs over positions {tuple(positions)}, more "
                f"than the {self.shape[:-1]} the cache was sized for"
            )
        return (idx, *(slice(0, p) for p in positions))

    def get(
        self, keys: torch.Tensor, device: torch.device, positions: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """Stored outputs ``[B, *shape]`` for ``keys`` (all must be filled), as float32; with
        ``positions``, ``[B, *positions, C]``, cut to a batch's positions.

        With top-k storage, the returned tensor is ``T · log p`` where ``p`` keeps the top-k
        probabilities at temperature ``T`` and spreads the remaining mass uniformly, so that
        ``softmax(returned / T) = p``.
        """
        idx = keys.cpu().numpy()
        at = idx if positions is None else self._at(idx, positions)
        values = torch.from_numpy(np.asarray(self.arrays["values"][at]).astype(np.float32))
        if not self.settings.topk:
            return values.to(device)
        T = self.temperature
        indices = torch.from_numpy(np.asarray(self.arrays["indices"][at]).astype(np.int64))
        lse = torch.from_numpy(np.asarray(self.arrays["lse"][at]))
        log_top = values / T - lse[..., None]
        rest = (1.0 - log_top.exp().sum(dim=-1)).clamp_min(1e-12)
        others = self.num_classes - self.settings.topk
        log_p = (rest / others).log()[..., None].expand(*rest.shape, self.num_classes).clone()
        log_p.scatter_(-1, indices, log_top)
        return (T * log_p).to(device)

    def lookup(
        self, batch: Mapping[str, Any], compute: Callable[[Mapping[str, Any]], torch.Tensor]
    ) -> torch.Tensor:
        """Outputs for a batch: stored ones where filled; ``compute(sub_batch)`` (then stored)
        for the samples whose keys are missing, so the teacher runs only on those."""
        keys = cache_keys(batch, self.settings.views)
        missing = self.missing(keys)
        n_missing = int(missing.sum())
        self.misses += n_missing
        self.hits += len(keys) - n_missing
        if n_missing:
            fresh = compute(select(batch, missing))
            self.put(keys[missing.to(keys.device)], fresh)
        positions = self.positions(batch) if self.positions is not None else None
        return self.get(keys, batch_device(batch), positions)


def estimate_bytes(size: int, shape: int | tuple[int, ...], settings: CacheSettings) -> int:
    """Bytes a cache with these settings takes (``shape`` as for :class:`TeacherCache`)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    positions = math.prod(shape[:-1])
    width = settings.topk or shape[-1]
    item = np.dtype(_DTYPES[settings.dtype]).itemsize
    per = positions * (width * item + (width * 4 + 4 if settings.topk else 0)) + 1
    return int(math.ceil(size * per))
