"""Model files: the weights of a trained model, with what is needed to rebuild it.

Two forms: :func:`save_model` writes our checkpoint file (``checkpoints/NAME.pt``: weights,
architecture, classes), which recipes load back with ``models.NAME.checkpoint``;
:func:`save_safetensors` writes a folder in a format other tools read (``models/NAME/``:
``model.safetensors`` and ``config.json``). Hugging Face models are saved with
``save_pretrained`` instead (:func:`distill.models.hf.save_hf`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import CheckpointError
from distill.files import atomic_save, safe_load, write_folder
from distill.taps import unwrap

MODEL_FORMAT = "distill-model/1"


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


def save_safetensors(model: nn.Module, directory: str | os.PathLike, **meta: Any) -> None:
    """Write ``directory`` whole or not at all (:func:`distill.files.write_folder`):
    ``model.safetensors`` (the state dict, loadable with ``safetensors.torch.load_file``) and
    ``config.json`` (``arch`` and ``meta``, e.g. ``num_classes``, ``in_channels``)."""
    from safetensors.torch import save_file

    inner = unwrap(model)
    arch = getattr(inner, "arch", type(inner).__name__)

    def fill(staging: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()}
        save_file(state, str(staging / "model.safetensors"), metadata={"arch": arch})
        config = {"arch": arch, **meta}
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    write_folder(directory, fill)
