"""Crash-safe checkpoint files.

Every write goes to a temporary file in the same directory, is flushed and fsynced, then
renamed over the target, so a checkpoint on disk is always whole. Loading uses
``torch.load(weights_only=True)``: a checkpoint can never run code.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CheckpointError

MODEL_FORMAT = "distill-model/1"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, write: Any) -> None:
    """Write a file atomically: ``write(fileobj)`` fills a temporary file that then replaces
    ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to ``path`` atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` atomically (indented, UTF-8)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def safe_load(path: str | os.PathLike) -> Any:
    """Load a checkpoint with ``weights_only=True``; a missing or damaged file raises
    :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, pickled code...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); it may "
            "be truncated or not a distill checkpoint"
        ) from exc


def rng_state() -> dict[str, Any]:
    """Every RNG state that training consumes, in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "key": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    npk = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            npk["key"].numpy().astype(np.uint32),
            npk["pos"],
            npk["has_gauss"],
            npk["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_model(model: nn.Module, path: str | os.PathLike, **meta: Any) -> None:
    """Save a model's weights with what is needed to rebuild it (``arch``, classes, channels)."""
    if "num_classes" not in meta:
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        meta["num_classes"] = linears[-1].out_features if linears else None
    payload = {
        "format": MODEL_FORMAT,
        "arch": getattr(model, "arch", type(model).__name__),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **meta,
    }
    atomic_save(payload, path)


def load_model_weights(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    name: str = "model",
    num_classes: int | None = None,
) -> None:
    """Load weights saved by :func:`save_model` (or a plain state dict) into ``model``.

    Raises:
        CheckpointError: the file is missing or damaged, holds another architecture, or was
            trained for another number of classes than ``num_classes``.
    """
    payload = safe_load(path)
    if isinstance(payload, dict) and payload.get("format") == MODEL_FORMAT:
        saved_classes = payload.get("num_classes")
        if num_classes is not None and saved_classes is not None and saved_classes != num_classes:
            raise CheckpointError(
                f"checkpoint {path} was trained for {saved_classes} classes but the data has "
                f"{num_classes}; {name} must predict the same classes as the data (and as the "
                "models it teaches)"
            )
        arch = getattr(model, "arch", None)
        if arch is not None and payload.get("arch") != arch:
            raise CheckpointError(
                f"checkpoint {path} holds a {payload.get('arch')!r} model but {name} is "
                f"{arch!r}; set models.{name}.arch to {payload.get('arch')!r} or use another file"
            )
        state = payload["state_dict"]
    elif isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state = payload
    else:
        raise CheckpointError(f"checkpoint {path} is not a model checkpoint")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"checkpoint {path} does not fit {name}: {first[1] if len(first) > 1 else first[0]}"
        ) from exc
