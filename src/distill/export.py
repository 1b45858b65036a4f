"""Export a model a run trained, for deployment.

``distill export RUN --model NAME --format safetensors|hf|onnx [--out PATH] [--force]``
rebuilds the model from the run's recipe (``RUN/recipe.yaml``: its architecture and source
options, with what the checkpoint recorded of the task and data) and loads the weights of
``RUN/checkpoints/NAME.pt``, then writes:

- ``safetensors``: the state dict (``RUN/export/NAME.safetensors``), with the architecture in
  the file's metadata; any model.
- ``hf``: a transformers model folder, ``save_pretrained``'s (``RUN/export/NAME/``), which
  ``from_pretrained`` loads; ``hf:`` models only.
- ``onnx``: ``torch.onnx.export`` with a dynamic batch dimension (``RUN/export/NAME.onnx``), for
  models on images (zoo, timm, torchvision), inputs ``[N, C, H, W]`` shaped as the run's data.
  When onnxruntime is installed, its logits on a random batch must match PyTorch's to
  :data:`ONNX_TOLERANCE`, or nothing is written.

Nothing is replaced without ``force``; files appear whole or not at all (written beside the
target, then renamed).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError, DistillError, did_you_mean
from .files import atomic_write_bytes, safe_load
from .models import create, load_model_weights
from .recipe import Recipe, load_recipe
from .taps import unwrap
from .tasks import get_task

__all__ = ["FORMATS", "ONNX_TOLERANCE", "Export", "export_model", "load_trained", "parse_shape"]

ONNX_TOLERANCE = 1e-4
"""Largest difference allowed between onnxruntime's and PyTorch's logits."""


@dataclass
class Export:
    """What :func:`export_model` needs to write one model, and what it wrote.

    Attributes:
        run: the run directory.
        name: the model's name in the recipe.
        model: the rebuilt model with its trained weights (eval mode).
        recipe: the run's recipe.
        input_shape: ``(C, H, W)`` of one input, when given.
        path: the file or folder written.
        note: a line on what was written or checked.
    """

    run: Path
    name: str
    model: nn.Module
    recipe: Recipe
    input_shape: tuple[int, ...] | None = None
    path: Path | None = None
    note: str = ""

    @property
    def arch(self) -> str:
        return str(getattr(self.model, "arch", type(self.model).__name__))


def _is_transformers(model: nn.Module) -> bool:
    return callable(getattr(unwrap(model), "save_pretrained", None))


def write_safetensors(job: Export, out: Path) -> None:
    """The state dict as safetensors (tensors that share memory, such as tied embeddings,
    are written as copies: the file format does not share)."""
    from safetensors.torch import save

    state, seen = {}, set()
    for key, value in job.model.state_dict().items():
        tensor = value.detach().cpu().contiguous()
        pointer = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        state[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    data = save(state, metadata={"format": "pt", "arch": job.arch})
    atomic_write_bytes(out, lambda f: f.write(data))


def write_hf(job: Export, out: Path) -> None:
    """``save_pretrained`` of a transformers model."""
    from .models.hf import save_hf

    if not _is_transformers(job.model):
        raise ConfigError(
            f"--format hf: model {job.name!r} ({job.arch}) is not a transformers model; hf "
            "writes hf: models. Use --format safetensors or onnx"
        )
    save_hf(job.model, out)


def write_onnx(job: Export, out: Path) -> None:
    """``torch.onnx.export`` with a dynamic batch, checked against onnxruntime if installed."""
    if _is_transformers(job.model):
        raise ConfigError(
            f"--format onnx: model {job.name!r} ({job.arch}) is a transformers model; export it "
            "with --format hf (transformers models go to ONNX with Hugging Face's optimum)"
        )
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"--format onnx needs the {' and '.join(missing)} package(s), which are not "
            "installed: pip install 'distill[export]'"
        )
    shape = job.input_shape or _image_shape(job.recipe)
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, *shape, generator=generator)
    staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    quiet = logging.getLogger("torch.onnx")  # notes on optional packages (torchvision ops)
    level = quiet.level
    try:
        quiet.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # the exporter's own deprecations
            torch.onnx.export(
                job.model,
                (example,),
                str(staging),
                input_names=["inputs"],
                output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                dynamo=True,
                external_data=False,  # one file (the weights inside; under 2 GB)
                verbose=False,
            )
        job.note = _check_onnx(job.model, staging, torch.randn(3, *shape, generator=generator))
        os.replace(staging, out)
    finally:
        quiet.setLevel(level)
        staging.unlink(missing_ok=True)


def _image_shape(recipe: Recipe) -> tuple[int, ...]:
    """``(C, H, W)`` of the run's data."""
    from .data import load_data

    d = recipe.data
    try:
        bundle = load_data(d.name, dir=d.dir, subset=d.subset, val_fraction=d.val_fraction)
    except DistillError as exc:
        raise ConfigError(
            f"--format onnx takes the input shape from the run's data, which cannot be read "
            f"({exc}); give it with --input-shape C,H,W"
        ) from None
    size = getattr(bundle, "image_size", None)
    if not size:
        raise ConfigError(
            f"--format onnx: the run's data ({d.name}) is not images; give the shape of one "
            "input with --input-shape"
        )
    return (bundle.in_channels, *size)


def _check_onnx(model: nn.Module, path: Path, inputs: torch.Tensor) -> str:
    """Compare onnxruntime's logits on ``inputs`` with PyTorch's; a line saying how close."""
    if importlib.util.find_spec("onnxruntime") is None:
        return "onnxruntime is not installed: the file was not checked"
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["logits"], {"inputs": inputs.numpy()})
    with torch.no_grad():
        expected = model(inputs).float()
    gap = (torch.from_numpy(got).float() - expected).abs().max().item()
    if not gap <= ONNX_TOLERANCE:
        raise DistillError(
            f"--format onnx: onnxruntime's logits differ from PyTorch's by {gap:.2e} (more than "
            f"{ONNX_TOLERANCE:g}); nothing was written"
        )
    return f"onnxruntime gives PyTorch's logits to {gap:.1e} on a batch of {inputs.shape[0]}"


Writer = Callable[[Export, Path], None]

FORMATS: dict[str, tuple[str, Writer]] = {
    "safetensors": (".safetensors", write_safetensors),
    "hf": ("", write_hf),
    "onnx": (".onnx", write_onnx),
}
"""Format -> (suffix of the default output name, writer)."""


def load_trained(run: Path, name: str) -> tuple[nn.Module, Recipe]:
    """Model ``name`` of run ``run``, rebuilt and with its trained weights, in eval mode."""
    recipe_file = run / "recipe.yaml"
    if not recipe_file.is_file():
        raise ConfigError(f"{run}: not a distill run directory (it has no recipe.yaml)")
    checkpoint = run / "checkpoints" / f"{name}.pt"
    if not checkpoint.is_file():
        trained = sorted(p.stem for p in (run / "checkpoints").glob("*.pt"))
        raise ConfigError(
            f"--model {name!r}: the run {run} did not train a model of that name"
            f"{did_you_mean(name, trained)}; trained models: {', '.join(trained) or 'none'}"
        )
    try:
        recipe = load_recipe(recipe_file)
    except ConfigError as exc:
        raise ConfigError(f"{recipe_file}: {exc}") from None
    if name not in recipe.models:
        raise ConfigError(f"--model {name!r}: {recipe_file} has no model of that name")
    spec = recipe.models[name]
    payload = safe_load(checkpoint)
    meta = payload if isinstance(payload, dict) else {}
    task = get_task(meta.get("task", recipe.task))
    # What the run's data told the model's source, as the checkpoint recorded it.
    try:
        defaults = task.model_options(types.SimpleNamespace(**meta))
    except AttributeError:
        defaults = {"task": task.name}
    options = {k: v for k, v in spec.source_options().items() if k != "weights"}
    try:
        model = create(spec.arch, defaults=defaults, **options)
    except ConfigError as exc:
        raise ConfigError(f"models.{name}.arch: {exc}") from None
    load_model_weights(model, checkpoint, name=name)
    return model.eval(), recipe


def export_model(
    run: str | os.PathLike[str],
    name: str,
    format: str,
    out: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    input_shape: Sequence[int] | None = None,
) -> Export:
    """Write model ``name`` of run ``run`` in ``format`` (a key of :data:`FORMATS`).

    Args:
        run: the run directory (``distill run``'s ``--out``).
        name: the model's name in the run's recipe.
        format: ``safetensors``, ``hf`` or ``onnx``.
        out: the file (folder for ``hf``) to write; default ``RUN/export/NAME.<suffix>``.
        force: replace ``out`` if it exists.
        input_shape: ``(C, H, W)`` of one input for ``onnx`` (default: from the run's data).

    Returns:
        The :class:`Export`, with ``note`` saying what was checked.

    Raises:
        ConfigError: not a run directory, a model the run did not train, an unknown format, a
            format that does not fit the model, ``out`` exists (without ``force``).
        DistillError: the ONNX file does not reproduce the model's logits.
    """
    if format not in FORMATS:
        raise ConfigError(
            f"--format {format!r}: unknown format{did_you_mean(format, FORMATS)}; formats: "
            f"{', '.join(FORMATS)}"
        )
    run = Path(run)
    suffix, writer = FORMATS[format]
    target = Path(out) if out is not None else run / "export" / f"{name}{suffix}"
    if (target.exists() or target.is_symlink()) and not force:
        raise ConfigError(f"--out {target}: exists; pass --force to replace it")
    model, recipe = load_trained(run, name)
    job = Export(run, name, model, recipe, tuple(input_shape) if input_shape else None, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        writer(job, target)
    job.note = job.note or f"{format} of {job.arch}"
    return job


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,28,28"`` -> ``(1, 28, 28)``.

    Raises:
        ConfigError: not comma-separated positive integers.
    """
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(size < 1 for size in shape):
        raise ConfigError(
            f"--input-shape {text!r}: give the shape of one input as positive integers, "
            "e.g. 1,28,28 (channels, height, width)"
        )
    return shape
