"""Hugging Face transformers models as a model source (``arch: hf:...``); nothing is downloaded.

```python
from distill.models.hf import create_hf, save_hf
teacher = create_hf("runs/teacher-lm")                      # a folder written by save_pretrained
student = create_hf("", config={"model_type": "llama", "hidden_size": 64,
                                "intermediate_size": 128, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "vocab_size": 300})
logits = student(input_ids=ids).logits                     # [N, L] -> [N, L, V]
save_hf(student, "out/models/student", tokenizer)          # loadable by from_pretrained
```

In a recipe, ``arch: hf:PATH`` loads the saved model in the folder ``PATH``; ``arch: hf:`` with
``config: {model_type: llama, ...}`` builds a new one with freshly initialised weights. The
task picks the head (:data:`TASKS`). ``transformers`` is imported only when a model is made
(``pip install transformers``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError, did_you_mean
from distill.files import write_folder
from distill.taps import unwrap

__all__ = ["DTYPES", "OPTIONS", "TASKS", "create_hf", "save_hf"]

TASKS: dict[str, str] = {
    "causal_lm": "AutoModelForCausalLM",
    "classification": "AutoModelForSequenceClassification",
}
"""Task name -> the transformers Auto class that builds its model (``[N, L] -> [N, L, V]`` logits
for ``causal_lm``, ``[N, L] -> [N, num_classes]`` for ``classification``)."""

DTYPES: dict[str, torch.dtype | str] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "auto": "auto",
}
"""Names accepted by ``dtype``: the dtype the weights are stored in; ``auto`` keeps the saved
model's own (transformers' ``dtype="auto"``)."""

OPTIONS = ("task", "config", "num_classes", "vocab_size", "dtype")
"""The options :func:`create_hf` accepts besides the path."""

CONFIG_FILE = "config.json"
FAMILY_EXAMPLES = "llama, qwen2, mistral, gpt2"


def _transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise ConfigError(
            "hf: models need the transformers package, which is not installed; "
            "run `pip install transformers`"
        ) from None
    return transformers


def _describe(exc: BaseException, limit: int = 300) -> str:
    """An exception in one line: its type and its message's lines joined, shortened."""
    message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_options(
    arch: str, unknown: Mapping[str, Any], task: str, num_classes: int | None, dtype: str | None
) -> None:
    if unknown:
        names = ", ".join(repr(name) for name in sorted(unknown))
        hint = did_you_mean(sorted(unknown)[0], OPTIONS) if len(unknown) == 1 else ""
        raise ConfigError(
            f"{arch!r}: unknown option{'s' if len(unknown) > 1 else ''} {names}{hint}; "
            f"hf: models take {', '.join(OPTIONS)}"
        )
    if not isinstance(task, str) or task not in TASKS:
        raise ConfigError(
            f"{arch!r}: unknown task {task!r}{did_you_mean(str(task), TASKS)}; "
            f"hf: models serve {', '.join(TASKS)}"
        )
    if dtype is not None and (not isinstance(dtype, str) or dtype not in DTYPES):
        raise ConfigError(
            f"{arch!r}: dtype {dtype!r} is not one of {', '.join(DTYPES)}"
            f"{did_you_mean(str(dtype), DTYPES)}"
        )
    if num_classes is None:
        return
    if task != "classification":
        raise ConfigError(
            f"{arch!r}: num_classes={num_classes!r} applies to task 'classification' only, "
            f"not {task!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"{arch!r}: num_classes must be an integer >= 2, got {num_classes!r}")


def create_hf(
    path: str | os.PathLike[str],
    *,
    task: str = "causal_lm",
    config: Mapping[str, Any] | None = None,
    num_classes: int | None = None,
    vocab_size: int | None = None,
    dtype: str | None = None,
    **unknown: Any,
) -> nn.Module:
    """A transformers model: loaded from the local folder ``path``, or new from ``config``.

    - ``path`` given (the text after ``hf:``): the model saved in that folder (``config.json``
      plus weights, as ``save_pretrained`` writes them), loaded with ``local_files_only=True``
      and never with remote code. ``config``, if given, overrides fields of the saved
      ``config.json`` that leave the weights' shapes alone (``pad_token_id``, dropouts,
      ``attn_implementation``, ...); its ``model_type``, if given, must be the saved one.
    - ``path`` empty: a new model from ``config`` (required): ``AutoConfig.for_model(model_type,
      **rest)`` and a model built from it, its weights drawn from torch's RNG
      (``torch.manual_seed`` beforehand makes them reproducible). Fields left out take
      transformers' defaults, which for most families describe a full-size model: give at
      least the sizes.

    Args:
        path: a folder holding a saved model, or ``""`` for a new model.
        task: a key of :data:`TASKS`; ``causal_lm`` gives ``input_ids [N, L] -> logits
            [N, L, V]``, ``classification`` gives ``[N, L] -> [N, num_classes]`` (the head of a
            causal LM folder loaded for classification starts freshly initialised; decoder-only
            families pick each row's last non-padding token, so their config needs
            ``pad_token_id`` for batches of more than one row).
        config: ``model_type`` plus fields of that family's transformers config. Fields the
            config class does not know are refused (transformers would keep them silently
            and build the defaults).
        num_classes: ``classification`` only: the number of labels (``num_labels``). Required
            for a new model unless ``config`` sets ``num_labels``; a saved model keeps its own
            when it is left out.
        vocab_size: the number of token ids the data's tokenizer makes: the vocabulary of a
            new model whose ``config`` gives none (a run passes it from its data).
        dtype: a key of :data:`DTYPES`: the dtype the weights are held in. ``None`` is float32
            (trainable master weights; mixed precision comes from autocast); ``auto`` keeps
            the saved model's dtype.

    Returns:
        The model, carrying ``model.arch = "hf:" + path`` (checkpoints store it).

    Raises:
        ConfigError: a missing folder, a folder that holds no saved model or that transformers
            cannot load, a new model's ``config`` without a known ``model_type``, a field
            transformers rejects or does not know, an unknown task, dtype or option, or
            transformers not installed. Messages start with the arch (``'hf:PATH': ...``) so
            that the caller can prefix the recipe field.
    """
    path = os.fspath(path)
    arch = f"hf:{path}"
    _check_options(arch, unknown, task, num_classes, dtype)
    if config is not None and not isinstance(config, Mapping):
        raise ConfigError(
            f"{arch!r}: config must be a mapping (model_type plus fields), got {config!r}"
        )
    fields = dict(config or {})
    if not path and config is None:
        raise ConfigError(
            f"{arch!r}: name a saved model folder (hf:PATH) or describe a new model with "
            f"config: {{model_type: llama, hidden_size: ..., ...}}"
        )
    if task == "classification":
        _set_num_labels(arch, fields, num_classes, new=not path)
    if not path and vocab_size is not None:
        fields.setdefault("vocab_size", vocab_size)
    transformers = _transformers()
    auto = getattr(transformers, TASKS[task])
    torch_dtype = torch.float32 if dtype is None else DTYPES[dtype]
    model: nn.Module
    if path:
        folder = _model_folder(arch, path)
        built = _saved_config(transformers, arch, folder, fields)
        try:
            model = auto.from_pretrained(
                str(folder), config=built, local_files_only=True, dtype=torch_dtype
            )
        except Exception as exc:  # truncated or missing weights, shapes that do not fit, ...
            raise ConfigError(f"{arch!r}: transformers cannot load it: {_describe(exc)}") from None
    else:
        built = _new_config(transformers, arch, fields)
        try:
            model = auto.from_config(built, dtype=None if torch_dtype == "auto" else torch_dtype)
        except (ValueError, TypeError) as exc:
            raise ConfigError(
                f"{arch!r}: config.model_type {built.model_type!r} has no {task} model in "
                f"transformers: {_describe(exc)}"
            ) from None
    model.arch = arch
    return model


def _set_num_labels(
    arch: str, fields: dict[str, Any], num_classes: int | None, *, new: bool
) -> None:
    labels = fields.get("num_labels")
    if new and num_classes is None and labels is None:
        raise ConfigError(
            f"{arch!r}: a new classification model needs num_classes (the number of labels)"
        )
    if num_classes is not None and labels is not None and labels != num_classes:
        raise ConfigError(
            f"{arch!r}: config.num_labels={labels!r} contradicts num_classes={num_classes}; "
            "set only num_classes"
        )
    if num_classes is not None:
        fields["num_labels"] = num_classes


def _model_folder(arch: str, path: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.exists():
        raise ConfigError(f"{arch!r}: no such directory")
    if not folder.is_dir():
        raise ConfigError(f"{arch!r}: is a file, not a model folder")
    if not (folder / CONFIG_FILE).is_file():
        raise ConfigError(
            f"{arch!r}: not a model folder: a saved model holds {CONFIG_FILE} and its weights "
            f"(model.safetensors), as save_pretrained writes them"
        )
    return folder


def _saved_config(transformers: Any, arch: str, folder: Path, fields: dict[str, Any]) -> Any:
    """The folder's config with ``fields`` applied over it."""
    model_type = fields.pop("model_type", None)
    try:
        built, unused = transformers.AutoConfig.from_pretrained(
            str(folder), local_files_only=True, return_unused_kwargs=True, **fields
        )
    except Exception as exc:  # unreadable config.json, remote code, a rejected field value
        raise ConfigError(f"{arch!r}: {CONFIG_FILE}: {_describe(exc)}") from None
    if model_type is not None and model_type != built.model_type:
        raise ConfigError(
            f"{arch!r}: config.model_type {model_type!r} differs from the saved model's "
            f"{built.model_type!r}; leave it out to load the folder"
        )
    _refuse_unknown_fields(arch, built, list(unused))
    return built


def _new_config(transformers: Any, arch: str, fields: dict[str, Any]) -> Any:
    model_type = fields.pop("model_type", None)
    known_types = list(transformers.CONFIG_MAPPING.keys())
    if model_type is None:
        raise ConfigError(
            f"{arch!r}: config.model_type is missing; name a transformers model family, "
            f"e.g. model_type: llama ({FAMILY_EXAMPLES}, ...)"
        )
    if not isinstance(model_type, str) or model_type not in known_types:
        raise ConfigError(
            f"{arch!r}: config.model_type {model_type!r} is not a transformers model type"
            f"{did_you_mean(str(model_type), known_types)}; e.g. {FAMILY_EXAMPLES} "
            f"({len(known_types)} in transformers {transformers.__version__})"
        )
    try:
        built = transformers.AutoConfig.for_model(model_type, **fields)
    except Exception as exc:  # field type or consistency checks of the config class
        raise ConfigError(f"{arch!r}: config: {_describe(exc)}") from None
    # transformers keeps an unknown keyword as a free attribute that no model code reads, so
    # a typo such as num_hiden_layers would silently build the family's default (full) size.
    # Legacy keywords it translates (rope_theta, torch_dtype, num_labels, ...) are consumed
    # while the config is built and do not show up as attributes.
    declared = _declared_fields(built)
    stray = [name for name in fields if name in vars(built) and name not in declared]
    if declared:  # configs that are not dataclasses cannot be checked this way
        _refuse_unknown_fields(arch, built, stray)
    return built


def _declared_fields(built: Any) -> set[str]:
    """The config class's fields and their aliases (``attribute_map``)."""
    if not dataclasses.is_dataclass(built):
        return set()
    declared = {field.name for field in dataclasses.fields(built)}
    return declared | set(getattr(built, "attribute_map", {}) or {})


def _refuse_unknown_fields(arch: str, built: Any, stray: list[str]) -> None:
    if not stray:
        return
    allowed = sorted(name for name in _declared_fields(built) if not name.startswith("_"))
    names = ", ".join(f"config.{name}" for name in stray)
    listing = f"; its fields: {', '.join(allowed)}" if allowed else ""
    raise ConfigError(
        f"{arch!r}: {names}: not a field of {type(built).__name__}"
        f"{did_you_mean(stray[0], allowed)}{listing}"
    )


def save_hf(model: nn.Module, directory: str | os.PathLike[str], tokenizer: Any = None) -> None:
    """Save a transformers model (and its tokenizer) so that ``from_pretrained(directory)``
    loads it: ``config.json``, ``generation_config.json`` when the model has one, weights as
    ``model.safetensors``, and the tokenizer's files when ``tokenizer`` is given.

    ``model`` may be wrapped by DistributedDataParallel, DataParallel or ``torch.compile``: the
    wrapped transformers model is saved (so the weight names carry no ``module.`` or
    ``_orig_mod.`` prefix). Under data parallelism, call this on the main process only.

    The folder is written whole or not at all: everything goes into a hidden temporary sibling
    folder that is renamed to ``directory`` once its files are flushed to disk. An existing
    ``directory`` holding a saved model is replaced: it is first renamed aside
    (``.NAME.*.old``), the new folder renamed into place, then the old one deleted; a crash
    between those renames leaves ``directory`` missing (never half-written) and the old copy
    beside it. If saving fails, the temporary folder is removed and an old model is put back.

    Raises:
        ValueError: ``model`` (unwrapped) has no ``save_pretrained``.
        ConfigError: ``directory`` is a file, or a non-empty folder without ``config.json``
            (it is not overwritten, in case it holds something else).
    """
    inner = unwrap(model)
    if not callable(getattr(inner, "save_pretrained", None)):
        raise ValueError(
            f"save_hf saves transformers models (with save_pretrained), got "
            f"{type(inner).__name__}; use distill.models.save_model for other models"
        )
    target = Path(directory).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{target}: exists and is not a directory; cannot save a model there")
    if target.is_dir() and any(target.iterdir()) and not (target / CONFIG_FILE).is_file():
        raise ConfigError(
            f"{target}: not empty and holds no {CONFIG_FILE}, so it is not a saved model; "
            "refusing to replace it (choose another directory or empty it)"
        )

    def fill(staging: Path) -> None:
        hf_logging = _transformers().utils.logging
        shown = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one bar per shard written is noise in a run's log
        try:
            inner.save_pretrained(staging)
        finally:
            if shown:
                hf_logging.enable_progress_bar()
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)

    write_folder(target, fill)


