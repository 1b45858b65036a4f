r"""An offline store of a teacher's top-k log-probabilities, memory-mapped from disk.

At language-model scale the teacher's dense logits cannot be kept (tokens × vocabulary
floats); the store keeps, for every position where a loss applies, the teacher's ``k`` most
likely ids, their log-probabilities at the stage's temperature and the log of the mass left
over: a :class:`~distill.losses.sparse.TopK` per position. ``distill cache build`` (see
:mod:`distill.cache.build`) runs the teacher once over the training data and writes it; a
stage reads it with ``teacher_logits: PATH`` and never runs the teacher. The format (files,
dtypes, manifest fields) is described in ``docs/teacher-store.md``::

    STORE/
      manifest.json                   what was stored, by which teacher, from which data
      shard-00000-of-00002/           one per process of the build
        ids.i32       int32   [E]       kept ids, position after position
        logprobs.f16  float16 [E]       their log-probabilities (logprobs.bf16: bfloat16 bits)
        rest.f32      float32 [P]       log of the mass outside the kept ids (-inf: none)
        counts.u16    uint16  [P]       ids kept per position (k, or fewer with top-p)
        items.i64     int64   [n+1, 2]  per item: its first position and first entry
        shard.json                      the shard's item range and sizes (when complete)

Positions are the task's loss positions of each training item in order (for a causal LM the
logits positions ``0..L−2`` whose next token is labelled), so padding is never stored. The
store answers a batch with a :class:`TopK` over the batch's logits positions; positions
without a loss get a harmless uniform placeholder that the loss's mask leaves out.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.batches import batch_device
from ..errors import ConfigError, DataError
from ..files import atomic_write_json, fsync_dir
from ..losses.sparse import TopK
from ..tasks import Task, get_task
from .online import dataset_fingerprint, model_fingerprint

STORE_FORMAT = "distill-teacher-store/1"
MANIFEST = "manifest.json"
SHARD_META = "shard.json"

#: The dtypes log-probabilities may be stored in: name -> (file suffix, numpy storage dtype).
#: bfloat16 has no numpy dtype: its 16 bits are stored as uint16.
LOGPROB_DTYPES: dict[str, tuple[str, Any]] = {
    "float16": ("f16", np.float16),
    "bfloat16": ("bf16", np.uint16),
}

#: The most ids a position can keep (``counts`` are uint16).
MAX_TOPK = np.iinfo(np.uint16).max


def shard_name(rank: int, processes: int) -> str:
    """``shard-00000-of-00002``: the directory of process ``rank``'s shard."""
    return f"shard-{rank:05d}-of-{processes:05d}"


def shard_files(logprob_dtype: str) -> dict[str, tuple[str, Any, str]]:
    """The files of a shard: key -> (file name, numpy dtype, what one element is per)."""
    suffix, dtype = LOGPROB_DTYPES[logprob_dtype]
    return {
        "ids": ("ids.i32", np.int32, "entry"),
        "logprobs": (f"logprobs.{suffix}", dtype, "entry"),
        "rest": ("rest.f32", np.float32, "position"),
        "counts": ("counts.u16", np.uint16, "position"),
        "items": ("items.i64", np.int64, "item"),
    }


def bytes_per_position(topk: int, logprob_dtype: str = "float16") -> int:
    """Bytes a position takes when it keeps ``topk`` ids: ids, log-probabilities, rest, count
    (the per-item offsets, 16 bytes per item, come on top)."""
    return topk * (4 + 2) + 4 + 2


# --- identity --------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer: Any) -> dict[str, Any] | None:
    """A tokenizer's identity: its size and a hash of its vocabulary and special tokens
    (``None`` for data without a tokenizer)."""
    if tokenizer is None:
        return None
    h = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    h.update(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode())
    h.update(json.dumps(sorted(map(str, tokenizer.all_special_tokens))).encode())
    return {"size": len(tokenizer), "fingerprint": h.hexdigest()[:16]}


def store_identity(
    *,
    task: Task,
    teacher: nn.Module,
    precision: str,
    train: Any,
    tokenizer: Any,
    temperature: float,
    standardize: bool,
    renormalize: str | None = None,
) -> dict[str, Any]:
    """What a store's contents depend on: the task, the teacher (weights, precision, input
    re-normalisation), the tokenizer, the training data, the temperature and whether logits
    are standardised. A store is read only by a stage whose identity is the same."""
    return {
        "task": task.name,
        "teacher": {
            "fingerprint": model_fingerprint(teacher),
            "precision": precision,
            "renormalize": renormalize,
        },
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "data": {"fingerprint": dataset_fingerprint(train), "items": len(train)},
        "temperature": float(temperature),
        "standardize": bool(standardize),
    }


def identity_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    """What differs between a store's identity and the one a stage needs, each as
    ``"what (store X, stage Y)"``; empty when they agree."""
    found = []

    def differ(label: str, a: Any, b: Any) -> None:
        if a != b:
            found.append(f"{label} (store {_short(a)}, stage {_short(b)})")

    differ("task", stored.get("task"), wanted["task"])
    teacher_a, teacher_b = stored.get("teacher") or {}, wanted["teacher"]
    differ("teacher", teacher_a.get("fingerprint"), teacher_b["fingerprint"])
    differ("teacher precision", teacher_a.get("precision"), teacher_b["precision"])
    differ("teacher input normalisation", teacher_a.get("renormalize"), teacher_b["renormalize"])
    differ("tokenizer", stored.get("tokenizer"), wanted["tokenizer"])
    differ("data", stored.get("data"), wanted["data"])
    differ("temperature", stored.get("temperature"), wanted["temperature"])
    differ("standardize", stored.get("standardize"), wanted["standardize"])
    return found


def _short(value: Any) -> str:
    """A fingerprint dict as its hash (and item count or size), anything else as is."""
    if isinstance(value, Mapping) and "fingerprint" in value:
        extra = "".join(f", {k} {value[k]}" for k in ("items", "size") if k in value)
        return f"{value['fingerprint']}{extra}"
    return str(value) if value is not None else "none"


# --- reading -----------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the store at ``path``, or an error saying what ``path`` is instead."""
    hint = "build one with: distill cache build RECIPE --stage NAME --out PATH"
    if not path.exists():
        raise ConfigError(f"teacher store {path}: not found; {hint}")
    if not path.is_dir():
        raise ConfigError(
            f"teacher store {path}: is a file, not a teacher store (a directory written by "
            "distill cache build)"
        )
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        if any(path.glob("shard-*")):
            raise DataError(
                f"teacher store {path}: unfinished build (no {MANIFEST} yet); rerun the "
                "distill cache build command that started it to finish it"
            )
        raise ConfigError(f"teacher store {path}: holds no {MANIFEST}, not a teacher store; {hint}")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"teacher store {path}: {MANIFEST} is not a teacher store manifest ({exc})"
        ) from None
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ConfigError(
            f"teacher store {path}: {MANIFEST} is not a teacher store manifest of format "
            f"{STORE_FORMAT} (found {found!r}); rebuild it with distill cache build"
        )
    return manifest


def expected_sizes(meta: Mapping[str, Any], logprob_dtype: str) -> dict[str, int]:
    """Bytes each file of a complete shard must have, from its ``shard.json``."""
    sizes = {}
    count = {"entry": meta["entries"], "position": meta["positions"]}
    items = meta["items"][1] - meta["items"][0]
    for key, (_, dtype, per) in shard_files(logprob_dtype).items():
        n = 2 * (items + 1) if per == "item" else count[per]
        sizes[key] = n * np.dtype(dtype).itemsize
    return sizes


def _map(path: Path, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A read-only memory map of ``path`` (an empty array for an empty file)."""
    if math.prod(shape) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=shape)


@dataclass
class _Shard:
    name: str
    start: int
    stop: int
    arrays: dict[str, np.ndarray]


class TeacherStore:
    """A teacher store on disk (see the module docstring), opened for reading.

    ``teacher(batch)`` of a :class:`~distill.teachers.Teacher` whose store this is returns
    :meth:`lookup`'s :class:`TopK`; the teacher's model never runs, and an item the store does
    not hold is an error, never a silent teacher call.

    Args:
        path: the store's directory.

    Raises:
        ConfigError: ``path`` is missing, a file, or a directory that is not a store.
        DataError: an unfinished build, or a shard whose files are shorter than its manifest
            says (named).

    Attributes:
        manifest: the parsed ``manifest.json``.
        task: the task whose positions are stored.
        topk: the most ids a position keeps.
        classes: the teacher's number of classes (vocabulary).
        temperature: the temperature of the stored log-probabilities.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        if not self.manifest.get("complete"):
            raise DataError(
                f"teacher store {self.path}: unfinished build; rerun the distill cache build "
                "command that started it to finish it"
            )
        m = self.manifest
        self.task = get_task(m["task"])
        self.topk = int(m["topk"])
        self.classes = int(m["classes"])
        self.temperature = float(m["temperature"])
        self.logprob_dtype = m["logprob_dtype"]
        self.shards = [self._open_shard(entry) for entry in m["shards"]]
        self.starts = np.array([s.start for s in self.shards], dtype=np.int64)
        self.items = int(m["items"])

    def _open_shard(self, entry: Mapping[str, Any]) -> _Shard:
        name = entry["name"]
        directory = self.path / name
        sizes = expected_sizes(entry, self.logprob_dtype)
        arrays = {}
        for key, (file, dtype, per) in shard_files(self.logprob_dtype).items():
            path = directory / file
            have = path.stat().st_size if path.is_file() else None
            if have != sizes[key]:
                state = "is missing" if have is None else f"has {have:,} bytes"
                raise DataError(
                    f"teacher store {self.path}: shard {name} is truncated: {file} {state}, "
                    f"expected {sizes[key]:,}; rerun the distill cache build command (it "
                    "repairs the shard)"
                )
            n = sizes[key] // np.dtype(dtype).itemsize
            arrays[key] = _map(path, dtype, (n // 2, 2) if per == "item" else (n,))
        start, stop = entry["items"]
        return _Shard(name, int(start), int(stop), arrays)

    # -- identity ----------------------------------------------------------------------------

    def check(self, identity: Mapping[str, Any], *, where: str, rebuild: str) -> None:
        """Raise :class:`ConfigError` in one line naming what differs (teacher, tokenizer,
        data, temperature, ...) when the store was not built for ``identity``."""
        differences = identity_differences(self.manifest.get("identity", {}), identity)
        if differences:
            raise ConfigError(
                f"{where}: teacher store {self.path} was built for another "
                f"{'; '.join(differences)}; rebuild it: {rebuild}"
            )

    # -- reading -----------------------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        """Bytes of the store's files."""
        return int(sum(a.nbytes for s in self.shards for a in s.arrays.values()))

    @property
    def positions(self) -> int:
        """The number of positions (tokens) stored."""
        return int(self.manifest["positions"])

    def describe(self) -> str:
        """One line: where, what, how big."""
        p = self.manifest.get("top_p")
        keep = f"top-{self.topk}" + (f", top-p {p:g}" if p is not None else "")
        per = self.nbytes / max(1, self.positions)
        return (
            f"teacher store {self.path}: {self.positions:,} positions of {self.items:,} items "
            f"({keep}, {self.logprob_dtype}, T = {self.temperature:g}), "
            f"{self.nbytes / 2**20:.1f} MiB, {per:.0f} bytes/position"
        )

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One item's ``(ids [E], logprobs [E], rest [P], counts [P])`` as stored (copies)."""
        if not 0 <= index < self.items:
            raise DataError(
                f"teacher store {self.path} holds items 0..{self.items - 1}, but a batch asks "
                f"for item {index}: it was built for other training data; rebuild it"
            )
        shard = self.shards[int(np.searchsorted(self.starts, index, side="right")) - 1]
        (p0, e0), (p1, e1) = shard.arrays["items"][index - shard.start : index - shard.start + 2]
        a = shard.arrays
        return (
            np.array(a["ids"][e0:e1]),
            np.array(a["logprobs"][e0:e1]),
            np.array(a["rest"][p0:p1]),
            np.array(a["counts"][p0:p1]),
        )

    def _logprobs(self, raw: np.ndarray) -> torch.Tensor:
        if self.logprob_dtype == "bfloat16":
            return torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16).float()
        return torch.from_numpy(raw).float()

    def lookup(
        self,
        batch: Mapping[str, Any],
        compute: Callable[[Mapping[str, Any]], Any] | None = None,
    ) -> TopK:
        """The stored :class:`TopK` of a batch, over the task's logits positions
        (``[N, L−1, w]`` for a causal LM, ``[N, w]`` for a classifier), on the batch's device.

        ``w`` is the most ids any position of the batch keeps (``k`` unless the store was
        built with top-p); a position keeping fewer has log-probability ``-inf`` in its last
        slots (:func:`distill.losses.stored.topk_divergence` folds those into the rest).
        Positions where no loss applies hold a uniform placeholder over ids ``0..w−1``.
        ``compute`` (the teacher's forward) is never called: a missing item is a
        :class:`DataError`.
        """
        index = batch["index"].tolist()
        mask = self.task.positions(batch)
        if mask is None:
            mask = torch.ones(self.task.targets(batch).shape, dtype=torch.bool)
        mask = mask.detach().cpu().bool()
        per_row = mask.reshape(len(index), -1).sum(dim=1).tolist()
        parts = [self.item(i) for i in index]
        for i, wanted, (_, _, rest, _) in zip(index, per_row, parts, strict=True):
            if rest.shape[0] != wanted:
                raise DataError(
                    f"teacher store {self.path}: item {i} has {rest.shape[0]} stored positions "
                    f"but the batch has {wanted} loss positions for it: the store was built "
                    "from other data; rebuild it"
                )
        ids = torch.from_numpy(np.concatenate([p[0] for p in parts])).long()
        logprobs = self._logprobs(np.concatenate([p[1] for p in parts]))
        rest = torch.from_numpy(np.concatenate([p[2] for p in parts]))
        counts = torch.from_numpy(np.concatenate([p[3] for p in parts]).astype(np.int64))
        width = int(counts.max()) if counts.numel() else self.topk
        rows_ids, rows_lp = padded_rows(ids, logprobs, counts, width)
        shape = (*mask.shape, width)
        out_ids = torch.arange(width).expand(shape).clone()
        out_lp = torch.full(shape, -math.log(width))
        out_rest = torch.full(mask.shape, -math.inf)
        out_ids[mask], out_lp[mask], out_rest[mask] = rows_ids, rows_lp, rest
        device = batch_device(batch)
        return TopK(out_ids.to(device), out_lp.to(device), out_rest.to(device))

    def flush(self) -> None:
        """Nothing to write: the store is read-only."""


def padded_rows(
    ids: torch.Tensor, logprobs: torch.Tensor, counts: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat entries (``counts[p]`` of them for position ``p``, in order) as ``[P, width]`` rows;
    slots past a position's count hold id ``slot`` and log-probability ``-inf``."""
    positions = counts.shape[0]
    if positions and bool((counts == width).all()):
        return ids.view(positions, width), logprobs.view(positions, width)
    out_ids = torch.arange(width).expand(positions, width).clone()
    out_lp = torch.full((positions, width), -math.inf)
    row = torch.repeat_interleave(torch.arange(positions), counts)
    first = torch.cumsum(counts, 0) - counts
    slot = torch.arange(ids.shape[0]) - torch.repeat_interleave(first, counts)
    out_ids[row, slot], out_lp[row, slot] = ids, logprobs
    return out_ids, out_lp


# --- writing -----------------------------------------------------------------------------------


class ShardWriter:
    """Appends one process's positions to its shard, resumable after a kill.

    ``items.i64`` is the commit log: a batch's entries are written (and fsynced) to the data
    files first, then the batch's item rows. Reopening a shard keeps the longest prefix of
    whole batches whose data is all on disk, cuts every file to it and goes on from there, so
    a build killed at any moment ends with the bytes of an uninterrupted one (batches are the
    same, so the teacher's outputs are too).

    Args:
        directory: the shard's directory (created).
        start, stop: the items ``[start, stop)`` this shard holds.
        batch_size: items per teacher batch (the resume point is a multiple of it).
        logprob_dtype: a key of :data:`LOGPROB_DTYPES`.
    """

    def __init__(
        self, directory: Path, start: int, stop: int, batch_size: int, logprob_dtype: str
    ) -> None:
        self.directory = directory
        self.start, self.stop, self.batch_size = start, stop, batch_size
        self.logprob_dtype = logprob_dtype
        self.files = {k: directory / f for k, (f, _, _) in shard_files(logprob_dtype).items()}
        self.dtypes = {k: np.dtype(d) for k, (_, d, _) in shard_files(logprob_dtype).items()}
        directory.mkdir(parents=True, exist_ok=True)
        self.done, self.positions, self.entries = self._recover()

    def _recover(self) -> tuple[int, int, int]:
        """Cut the files to the last whole batch on disk; return (items, positions, entries)
        done."""
        (self.directory / SHARD_META).unlink(missing_ok=True)
        size = {k: p.stat().st_size if p.is_file() else 0 for k, p in self.files.items()}
        rows = size["items"] // 16
        offsets = np.zeros((0, 2), np.int64)
        if rows:
            offsets = np.fromfile(self.files["items"], np.int64, 2 * rows).reshape(rows, 2)
        item_bytes = {"rest": 4, "counts": 2}
        entry_bytes = {"ids": 4, "logprobs": self.dtypes["logprobs"].itemsize}
        done = rows - 1
        while done > 0:
            p, e = (int(x) for x in offsets[done])
            aligned = done == self.stop - self.start or done % self.batch_size == 0
            fits = all(p * b <= size[k] for k, b in item_bytes.items()) and all(
                e * b <= size[k] for k, b in entry_bytes.items()
            )
            if aligned and fits:
                break
            done = (done - 1) // self.batch_size * self.batch_size
        done = max(done, 0)
        p, e = (int(x) for x in offsets[done]) if rows else (0, 0)
        keep = {"items": 16 * (done + 1) if rows else 0}
        keep.update({k: p * b for k, b in item_bytes.items()})
        keep.update({k: e * b for k, b in entry_bytes.items()})
        for key, path in self.files.items():
            with open(path, "ab") as f:
                f.truncate(keep[key])
        if not rows:
            self._write("items", np.zeros((1, 2), np.int64))
        return done, p, e

    def _write(self, key: str, array: np.ndarray) -> None:
        """Append ``array`` to file ``key`` and make it durable."""
        with open(self.files[key], "ab") as f:
            f.write(np.ascontiguousarray(array, self.dtypes[key]).tobytes())
            f.flush()
            os.fsync(f.fileno())

    def append(
        self,
        per_item: Sequence[int],
        ids: torch.Tensor,
        logprobs: torch.Tensor,
        rest: torch.Tensor,
        counts: torch.Tensor,
    ) -> None:
        """Append one batch: ``per_item[j]`` positions for each of its items, and for the
        batch's positions in order ``ids``/``logprobs`` ``[P, k]`` (sorted by decreasing
        probability), ``rest`` ``[P]`` and ``counts`` ``[P]`` (the first ``counts[p]`` ids
        of position ``p`` are kept)."""
        keep = torch.arange(ids.shape[-1], device=ids.device) < counts[:, None]
        lp = logprobs[keep].cpu()
        if self.logprob_dtype == "bfloat16":
            lp_bits = lp.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
        else:
            lp_bits = lp.numpy().astype(np.float16)
        data = {
            "ids": ids[keep].cpu().numpy(),
            "logprobs": lp_bits,
            "rest": rest.float().cpu().numpy(),
            "counts": counts.cpu().numpy(),
        }
        for key, array in data.items():  # the data first, then the rows that commit it
            self._write(key, array)
        ends = np.cumsum(np.asarray(per_item, dtype=np.int64))
        entry_ends = np.cumsum(counts.cpu().numpy().astype(np.int64))
        rows = np.zeros((len(per_item), 2), np.int64)
        rows[:, 0] = self.positions + ends
        rows[:, 1] = self.entries + np.concatenate([[0], entry_ends])[ends]
        self._write("items", rows)
        self.done += len(per_item)
        self.positions += int(ends[-1]) if len(ends) else 0
        self.entries += int(entry_ends[-1]) if len(entry_ends) else 0

    def finish(self) -> dict[str, Any]:
        """Record the complete shard in ``shard.json``; return that record."""
        meta = {
            "name": self.directory.name,
            "items": [self.start, self.stop],
            "positions": self.positions,
            "entries": self.entries,
        }
        atomic_write_json(self.directory / SHARD_META, meta)
        fsync_dir(self.directory)
        return meta
