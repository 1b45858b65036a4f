"""``distill cache build``: run a stage's teacher once over its training data into a store.

The store (format in :mod:`distill.cache.offline`) keeps, per loss position of every training
item, the teacher's top-``k`` ids, their log-probabilities at the stage's temperature (of the
standardised logits when the stage sets ``standardize``) and the log of the leftover mass;
with ``top_p``, a position keeps only as many ids as reach that probability (at most ``k``).

Under ``torchrun`` every process takes a contiguous share of the items and writes its own
shard; the main process then writes the manifest that joins them. A build that is killed
resumes where its shards' last whole batch ends (same command, same number of processes), and
ends with the bytes of an uninterrupted build.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data.batches import as_item
from ..devices import to_device
from ..errors import ConfigError, DataError, did_you_mean
from ..files import atomic_write_json
from ..losses import standardize, topk_from_logits
from ..recipe import Recipe
from ..teachers import Teacher
from .offline import (
    LOGPROB_DTYPES,
    MANIFEST,
    MAX_TOPK,
    SHARD_META,
    STORE_FORMAT,
    ShardWriter,
    TeacherStore,
    identity_differences,
    read_manifest,
    shard_name,
)
from .online import transform_description

#: Manifest fields that must agree for a build to resume (or to count as done).
PLAN_FIELDS = (
    "identity", "classes", "topk", "top_p", "logprob_dtype", "batch_size", "processes",
)


def check_build_options(topk: int, top_p: float | None, dtype: str, batch_size: int | None) -> None:
    """ConfigError for an option out of range (the vocabulary bound of ``topk`` is checked
    once the teacher's is known)."""
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        raise ConfigError(f"--topk must be an integer from 1 to the vocabulary size, got {topk!r}")
    if top_p is not None and not (0.0 < top_p <= 1.0):
        raise ConfigError(f"--top-p must be in (0, 1], got {top_p!r}")
    if dtype not in LOGPROB_DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(LOGPROB_DTYPES)}, got {dtype!r}")
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")


def keep_top_p(
    logprobs: torch.Tensor, rest: torch.Tensor, top_p: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(counts, rest)``: how many of each position's ids (sorted by decreasing probability)
    to keep — the fewest whose mass reaches ``top_p``, all ``k`` when ``top_p`` is ``None`` —
    and the log of the mass outside the kept ids."""
    k = logprobs.shape[-1]
    if top_p is None:
        return torch.full(rest.shape, k, dtype=torch.long, device=rest.device), rest
    counts = ((logprobs.exp().cumsum(dim=-1) < top_p).sum(dim=-1) + 1).clamp(max=k)
    kept = torch.arange(k, device=logprobs.device) < counts[..., None]
    dropped = torch.cat([logprobs.masked_fill(kept, -math.inf), rest[..., None]], dim=-1)
    return counts, torch.logsumexp(dropped, dim=-1)


def build_store(
    recipe: Recipe,
    stage: str,
    out: str | Path,
    *,
    topk: int = 64,
    top_p: float | None = None,
    dtype: str = "float16",
    batch_size: int | None = None,
    device: str = "auto",
    data: Any = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the teacher store of ``recipe``'s stage ``stage`` to ``out``; return its manifest.

    Args:
        recipe: the recipe (the stage's teacher must be loaded from a checkpoint or weights,
            or need no training: a store of a teacher that an earlier stage trains cannot be
            built before the run).
        stage: a ``kd`` stage's name (as in ``summary.json``).
        out: the store's directory: new, empty, or an unfinished or finished build of the
            same store (resumed, or left as it is).
        topk: ids kept per position, 1 to the vocabulary size.
        top_p: keep only the fewest ids reaching this probability (at most ``topk``).
        dtype: ``float16`` or ``bfloat16`` log-probabilities.
        batch_size: items per teacher batch (default: the recipe's evaluation batch size).
        device: ``auto``, ``cpu`` or ``cuda``.
        data: a :class:`~distill.data.DataBundle` (or text data) to use instead of
            ``recipe.data``, as for :class:`~distill.pipeline.Pipeline`.
        log: where progress lines go (the main process's ``print`` by default).
    """
    from ..methods.base import TeacherLogitsFields
    from ..pipeline import Pipeline

    check_build_options(topk, top_p, dtype, batch_size)
    names = recipe.stage_names()
    if stage not in names:
        raise ConfigError(
            f"--stage: no stage {stage!r} in {recipe.source}{did_you_mean(stage, names)}; "
            f"stages: {', '.join(names)}"
        )
    index = names.index(stage)
    spec = recipe.stages[index]
    if not isinstance(spec, TeacherLogitsFields):
        raise ConfigError(
            f"--stage {stage}: a {spec.method} stage does not read a teacher store; "
            "teacher_logits is a field of kd stages"
        )
    teacher_name: str = spec.teacher  # type: ignore[attr-defined]
    model_spec = recipe.models[teacher_name]
    trained_here = [
        names[i] for i, s in enumerate(recipe.stages[:index]) if teacher_name in s.produces()
    ]
    if trained_here and not (model_spec.checkpoint or model_spec.weights):
        raise ConfigError(
            f"--stage {stage}: its teacher {teacher_name!r} is trained by stage "
            f"{trained_here[0]!r} of this recipe, so it does not exist before the run; train it "
            f"first and point models.{teacher_name}.checkpoint at its checkpoint (e.g. --set "
            f"models.{teacher_name}.checkpoint=RUN/checkpoints/{teacher_name}.pt)"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; a teacher store is a directory")

    pipeline = Pipeline(recipe, out, data=data, progress=False, device=device, log=log)
    acc, log = pipeline.accelerator, pipeline.log
    bundle = pipeline._load_data()
    train = bundle.train
    if transform_description(train) != "none":
        raise ConfigError(
            f"--stage {stage}: the training data has a random transform, so an item has no one "
            "teacher output to store; use cache: teacher (it keeps views) instead"
        )
    pipeline._build_models(bundle)
    temperature = float(spec.temperature)  # type: ignore[attr-defined]
    identity = pipeline.store_identity(teacher_name, spec, temperature, bundle)  # type: ignore[arg-type]
    model = pipeline.models[teacher_name].to(acc.device)
    renorm = pipeline._renormalizer(teacher_name, bundle)
    teacher = Teacher(model, pipeline.task, spec.teacher_precision, renormalize=renorm)  # type: ignore[attr-defined]
    collate = bundle.collate or torch.utils.data.default_collate
    batch_size = batch_size or recipe.data.eval_batch_size or recipe.data.batch_size
    classes = int(teacher.compute(to_device(collate([as_item(train[0], 0)]), acc.device)).shape[-1])
    if topk > classes:
        raise ConfigError(
            f"--topk must be an integer from 1 to the vocabulary size {classes} (the teacher "
            f"{teacher_name!r} predicts {classes} classes), got {topk}"
        )
    plan = {
        "format": STORE_FORMAT,
        "complete": False,
        "identity": identity,
        "task": pipeline.task.name,
        "classes": classes,
        "topk": topk,
        "top_p": top_p,
        "logprob_dtype": dtype,
        "temperature": temperature,
        "batch_size": batch_size,
        "processes": acc.num_processes,
        "items": len(train),
        "recipe": recipe.source,
        "stage": stage,
        "teacher": teacher_name,
        "distill": __version__,
    }
    existing = _existing(out, plan)
    if existing is not None:
        log(f"{out}: the store is complete already ({existing['positions']:,} positions)")
        return existing
    acc.wait_for_everyone()  # every process has read the directory before it is written
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / MANIFEST, plan)
    acc.wait_for_everyone()

    rank, processes, n = acc.process_index, acc.num_processes, len(train)
    start, stop = rank * n // processes, (rank + 1) * n // processes
    writer = ShardWriter(out / shard_name(rank, processes), start, stop, batch_size, dtype)
    if writer.done:
        log(f"{out}: resuming after {writer.done:,} items of shard {rank}")
    standardized = bool(identity["standardize"])
    mark = 0.25  # progress lines at each quarter of the shard
    for first in range(start + writer.done, stop, batch_size):
        items = [as_item(train[i], i) for i in range(first, min(first + batch_size, stop))]
        batch = to_device(collate(items), acc.device)
        logits = teacher.compute(batch)
        if standardized:
            logits = standardize(logits)
        top = topk_from_logits(logits, topk, temperature)
        mask = pipeline.task.positions(batch)
        if mask is None:
            mask = torch.ones(top.rest.shape, dtype=torch.bool, device=top.rest.device)
        per_item = mask.reshape(len(items), -1).sum(dim=1).tolist()
        logprobs = top.logprobs[mask]
        counts, rest = keep_top_p(logprobs, top.rest[mask], top_p)
        writer.append(per_item, top.ids[mask], logprobs, rest, counts)
        if writer.done >= mark * (stop - start):
            log(f"{out}: {writer.done:,}/{stop - start:,} items of shard {rank}")
            mark = writer.done / (stop - start) + 0.25
    writer.finish()
    acc.wait_for_everyone()
    if acc.is_main_process:
        shards = [
            read_json(out / shard_name(r, processes) / SHARD_META) for r in range(processes)
        ]
        manifest = {
            **plan,
            "complete": True,
            "positions": sum(s["positions"] for s in shards),
            "entries": sum(s["entries"] for s in shards),
            "shards": shards,
        }
        atomic_write_json(out / MANIFEST, manifest)
    acc.wait_for_everyone()
    return read_manifest(out)


def read_json(path: Path) -> dict[str, Any]:
    """A shard's ``shard.json``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"teacher store shard record {path} is unreadable ({exc})") from None


def _existing(out: Path, plan: Mapping[str, Any]) -> dict[str, Any] | None:
    """The manifest of a finished build of ``plan`` in ``out`` (nothing left to do), ``None``
    when there is something to build (nothing there, or an unfinished or damaged build of the
    same plan); ConfigError when ``out`` holds anything else."""
    if not out.exists():
        return None
    if not (out / MANIFEST).is_file():
        if any(out.iterdir()):
            raise ConfigError(
                f"--out {out}: holds other files and no {MANIFEST}; a store needs a new or "
                "empty directory"
            )
        return None
    manifest = read_manifest(out)
    differ = identity_differences(manifest.get("identity") or {}, plan["identity"])
    differ += [
        f"{k} (store {manifest.get(k)}, now {plan[k]})"
        for k in PLAN_FIELDS
        if k != "identity" and manifest.get(k) != plan[k]
    ]
    if differ:
        shown = "; ".join(differ)
        raise ConfigError(
            f"--out {out}: holds a store of another build ({shown}); choose another --out, or "
            "delete it to build this one"
        )
    if not manifest.get("complete"):
        return None
    try:
        TeacherStore(out)
    except DataError:
        return None  # a damaged shard: the build repairs it
    return manifest
