"""Validated settings shared by recipes, stages and the trainer (pydantic models).

Field names here are part of the recipe contract (see DESIGN.md). Every model forbids unknown
keys so a typo is reported instead of silently ignored.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import did_you_mean
from .tracking import check_tracker_names


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, recursively for nested mappings (new dicts; the
    arguments are not changed)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def format_value(value: Any) -> str:
    """``repr(value)``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model an annotation holds: itself, or inside ``list[...]``,
    ``dict[str, ...]``, ``X | None``..."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _allowed_keys(model: type[BaseModel], path: list[str]) -> list[str]:
    """The field names of the (nested) pydantic model at ``path`` (list indices and mapping
    keys along the path are stepped over)."""
    current: type[BaseModel] | None = model
    for part in path:
        fields = current.model_fields if current is not None else {}
        if part in fields:
            current = _model_in(fields[part].annotation)
        elif not (part.isdigit() or current is None):
            return []
    fields = current.model_fields if current is not None else {}
    return [k for k in fields if k != "train"]


def validation_message(
    exc: ValidationError,
    model: type[BaseModel],
    prefix: str = "",
    rename: dict[str, str] | None = None,
) -> str:
    """One line for a pydantic validation error: each problem names the field (its dotted path
    under ``prefix``, or as ``rename`` maps its first part), the value and what would be
    right; problems are joined with ``"; "``."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if rename and loc and loc[0] in rename:
            where = rename[loc[0]] + "".join(f".{p}" for p in loc[1:])
        else:
            where = ".".join([prefix, *loc]) if prefix else ".".join(loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = _allowed_keys(model, loc[:-1])
            hint = did_you_mean(loc[-1], allowed)
            listed = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
            lines.append(f"{where}: unknown key{hint}{listed}")
            continue
        message = err["msg"]
        message = message[0].lower() + message[1:] if message else message
        message = message.replace("input should be", "must be").replace("value error, ", "")
        message = " ".join(message.split())
        if kind == "missing":
            lines.append(f"{where}: required field is missing")
        elif not loc or (kind == "value_error" and isinstance(err.get("input"), dict)):
            # A rule over several fields of a section: its message names them.
            lines.append(f"{where}: {message}" if where else message)
        else:
            lines.append(f"{where}: {message}, got {format_value(err.get('input'))}")
    return "; ".join(lines)


class Strict(BaseModel):
    """Base for recipe sections: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class OptimizerConfig(Strict):
    """Optimizer: ``sgd`` (momentum, optional Nesterov), ``adamw`` or ``adam``."""

    name: Literal["sgd", "adamw", "adam"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(5.0e-4, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError("each beta must be in [0, 1)")
        return betas

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimizerConfig:
        if self.nesterov and (self.name != "sgd" or self.momentum == 0):
            raise ValueError(
                "nesterov: true needs the sgd optimizer with a momentum greater than 0, got "
                f"optimizer {self.name!r} with momentum {self.momentum}"
            )
        return self


class ScheduleConfig(Strict):
    """Learning-rate schedule, applied per optimizer step.

    - ``cosine``: linear warm-up over ``warmup_epochs``, then cosine decay to ``min_lr_ratio``·lr.
    - ``step``: warm-up, then lr·gamma^k after each of ``milestones`` (epochs); when
      ``milestones`` is empty, every ``step_size`` epochs.
    - ``onecycle``: linear rise from lr/``div_factor`` to lr over ``warmup_epochs`` (30% of the
      run when 0), then cosine decay to lr/(``div_factor``·``final_div_factor``).
    - ``constant``: warm-up, then lr.
    """

    name: Literal["cosine", "step", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    step_size: int = Field(30, gt=0)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0, le=1)
    div_factor: float = Field(25.0, ge=1)
    final_div_factor: float = Field(1.0e4, ge=1)


FSDP_CONFLICTS: dict[str, str] = {
    "precision fp16": "its loss scaling would see only each process's shard of the gradients; "
    "use bf16, or strategy ddp",
    "channels_last": "FSDP shards contiguous parameters only; set it to false, or use "
    "strategy ddp",
    "sync_batchnorm": "set it to false, or use strategy ddp",
    "compile": "set it to false, or use strategy ddp",
}
"""What strategy ``fsdp`` refuses, and what to do instead."""


class TrainConfig(Strict):
    """How one phase of one stage trains. The recipe's ``train`` section gives the defaults and
    any stage may override any field.

    Speed options: ``channels_last`` stores conv weights and inputs in NHWC order (faster conv
    kernels on recent CPUs and GPUs); ``compile`` applies ``torch.compile`` to every model of
    the method (opt-in: compilation takes tens of seconds, repaid on long runs).

    Several processes: ``sync_batchnorm`` converts the trained models' BatchNorm layers to
    SyncBatchNorm, so batch statistics are computed over the global batch (GPU only).

    Trackers: ``log_with`` lists the experiment trackers that get the run's metrics
    (``tensorboard``, ``mlflow``, ``wandb``; see :mod:`distill.tracking`). A run reads it from
    the recipe's ``train`` section.

    How models spread over processes (docs/distributed.md): ``strategy`` ``ddp`` replicates
    every model on every process; ``fsdp`` shards the trained models with FSDP, block by
    block (``fsdp_blocks``: class names of the blocks, e.g. ``LlamaDecoderLayer``; default:
    a Hugging Face model's ``_no_split_modules``, a zoo model's stages). ``teacher_placement``
    puts teachers on every process whole (``replicate``), sharded for inference (``shard``)
    or sharded with the shards in host memory (``cpu_offload``); default ``shard`` under
    ``fsdp``, ``replicate`` under ``ddp``. With one process both are no-ops.
    """

    epochs: int = Field(10, gt=0)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    grad_accum_steps: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    max_bad_steps: int = Field(0, ge=0)
    channels_last: bool = False
    compile: bool = False
    sync_batchnorm: bool = False
    log_with: list[str] = Field(default_factory=list)
    strategy: Literal["ddp", "fsdp"] = "ddp"
    teacher_placement: Literal["shard", "replicate", "cpu_offload"] | None = None
    fsdp_blocks: list[str] = Field(default_factory=list)

    @field_validator("log_with")
    @classmethod
    def _known_trackers(cls, names: list[str]) -> list[str]:
        return check_tracker_names(names)

    @field_validator("strategy")
    @classmethod
    def _shardable(cls, strategy: str, info: ValidationInfo) -> str:
        if strategy != "fsdp":
            return strategy
        given = info.data
        conflicts = {
            "precision fp16": given.get("precision") == "fp16",
            "channels_last": given.get("channels_last"),
            "sync_batchnorm": given.get("sync_batchnorm"),
            "compile": given.get("compile"),
        }
        for name, found in conflicts.items():
            if found:
                raise ValueError(f"fsdp does not go with {name}: {FSDP_CONFLICTS[name]}")
        return strategy

    @field_validator("fsdp_blocks", mode="before")
    @classmethod
    def _block_list(cls, names: Any) -> Any:
        return [names] if isinstance(names, str) else names

    @property
    def placement(self) -> str:
        """Where teachers go: ``teacher_placement``, or the strategy's default."""
        return self.teacher_placement or ("shard" if self.strategy == "fsdp" else "replicate")

    @property
    def shards(self) -> bool:
        """Whether some model is sharded (on several processes): strategy ``fsdp``, or a
        teacher placement other than ``replicate``."""
        return self.strategy == "fsdp" or self.placement != "replicate"

    @model_validator(mode="after")
    def _warmup_within_run(self) -> TrainConfig:
        if self.schedule.warmup_epochs > self.epochs:
            raise ValueError(
                f"schedule.warmup_epochs ({self.schedule.warmup_epochs}) must not exceed "
                f"epochs ({self.epochs})"
            )
        return self


TRAIN_FIELDS: frozenset[str] = frozenset(TrainConfig.model_fields)


def merged_train(train: TrainConfig, overrides: dict[str, Any] | None) -> TrainConfig:
    """``train`` with ``overrides`` merged in (nested sections key by key), validated.

    Raises:
        ValueError: a merged field is invalid; the message names each problem by its dotted
            path (for a pydantic field validator to report under the overriding field).
    """
    if not overrides:
        return train
    try:
        return TrainConfig.model_validate(deep_merge(train.model_dump(), overrides))
    except ValidationError as exc:
        raise ValueError(validation_message(exc, TrainConfig)) from None


class DataConfig(Strict):
    """Which data, how much of it, and how it is batched.

    Image sets (``digits``, ``fashion-mnist``, registered ones) take ``dir``, ``subset``,
    ``val_fraction`` and ``augment``. Text sets (``text``, ``jsonl``, ``python-stdlib``) take
    ``files`` (files, folders or globs; ``python-stdlib`` needs none, ``dir`` overrides where
    the standard library is), ``tokenizer`` (``byte`` or a local Hugging Face tokenizer
    folder), ``seq_len``, ``subset`` (training sequences), ``val_fraction``,
    ``test_fraction``, ``max_files`` and ``split_by`` (``auto``, ``file`` or ``block``).
    ``image_size``: height = width of the images; a ``folder`` dataset decodes its images at
    that size, other datasets are resized to it (``null``: the dataset's own size).
    """

    name: str = "digits"
    dir: str | None = None
    image_size: int | None = Field(None, gt=0)
    subset: int | None = Field(None, gt=0)
    val_fraction: float | None = Field(None, gt=0, lt=1)
    batch_size: int = Field(128, gt=0)
    eval_batch_size: int | None = Field(None, gt=0)
    augment: Literal["none", "standard"] = "none"
    num_workers: int = Field(0, ge=0)
    files: list[str] | None = None
    tokenizer: str | None = None
    seq_len: int | None = Field(None, ge=2)
    test_fraction: float | None = Field(None, ge=0, lt=1)
    max_files: int | None = Field(None, gt=0)
    split_by: Literal["auto", "file", "block"] | None = None

    def given(self) -> set[str]:
        """The fields the recipe set (others keep their defaults)."""
        return set(self.model_fields_set)


class ModelConfig(Strict):
    """A named model instance.

    - ``arch``: the architecture, by source prefix (:func:`distill.models.create`): a zoo
      name (``resnet20``), ``hf:PATH``, ``timm:NAME``, ``torchvision:NAME``.
    - ``checkpoint``: a ``checkpoints/<model>.pt`` of an earlier run (or a plain state dict)
      to start from; such a model counts as trained.
    - ``config``: a model configuration, for sources that build from one (``hf:``).
    - ``weights``: a weights file, for sources that load one (``timm:``, ``torchvision:``).
    - ``options``: further keyword arguments of the source.
    """

    arch: str
    checkpoint: str | None = None
    config: dict[str, Any] | None = None
    weights: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    def source_options(self) -> dict[str, Any]:
        """The keyword arguments this entry gives the model's source."""
        given = {"config": self.config, "weights": self.weights}
        return {**{k: v for k, v in given.items() if v is not None}, **self.options}
