"""Experiment trackers: a run's metrics where people already look, through Accelerate's tracker
classes (``accelerate.tracking``).

A recipe asks for them with ``train.log_with: [tensorboard, mlflow, wandb]``. Everything stays
on disk inside the run folder (nothing is sent anywhere):

- ``tensorboard``: event files under ``RUN/logs/tensorboard`` (``tensorboard --logdir
  RUN/logs/tensorboard``);
- ``mlflow``: a local SQLite store ``RUN/logs/mlflow.db`` (``mlflow ui --backend-store-uri
  sqlite:///RUN/logs/mlflow.db``), artifacts in ``RUN/logs/mlflow-artifacts``;
- ``wandb``: an offline run under ``RUN/logs/wandb`` (``wandb sync`` uploads it, if wanted).

What is logged, on the main process only:

- at the start, the recipe as the run's configuration, flattened to dotted keys
  (``train.optimizer.lr``), and as YAML text (TensorBoard) or an artifact (MLflow);
- after every epoch of every phase, at a step that counts the epochs of the whole run:
  ``train/<stage>/<phase>/<part>`` (the epoch's mean loss and loss parts), ``lr/<stage>/<phase>``
  and ``val/<model>/<metric>``;
- at the end, ``final/<model>/<split>_<metric>`` from the summary, and the run's plots: as
  images in TensorBoard and W&B, as artifacts in MLflow.

:class:`Tracking` is what the pipeline drives (start, each epoch, the end); :data:`TRACKERS`
names the trackers.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError, did_you_mean

__all__ = ["TRACKERS", "Tracker", "Tracking", "check_tracker_names", "flatten_config"]


def flatten_config(value: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """A nested recipe as ``{"train.optimizer.lr": 0.05, "stages.0.method": "train", ...}``:
    mappings and lists flattened to dotted keys (list items by index), ``None`` and empty
    containers as text, so that every tracker takes the values as they are."""
    flat: dict[str, bool | int | float | str] = {}
    if isinstance(value, Mapping) and value:
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, (list, tuple)) and value:
        items = enumerate(value)
    else:
        if isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:
            flat[prefix] = "null" if value is None else str(value)
        return flat
    for key, item in items:
        flat.update(flatten_config(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


class Tracker:
    """One tracker of a run: an Accelerate ``GeneralTracker`` writing inside the run folder.

    Subclasses set ``package`` (what to install), ``module`` and ``needs`` (what must import),
    and build the Accelerate tracker in :meth:`create`.
    """

    package: ClassVar[str]
    module: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, logs: Path, run_name: str) -> None:
        self.logs = logs
        self.tracker = self.create(logs, run_name)
        start = getattr(self.tracker, "start", None)
        if callable(start):  # Accelerate >= 1.0 starts trackers lazily
            start()

    def create(self, logs: Path, run_name: str) -> Any:
        raise NotImplementedError

    def where(self) -> str:
        """Where the logs are, and how to look at them."""
        raise NotImplementedError

    def config(self, flat: dict[str, Any], recipe_file: Path) -> None:
        self.tracker.store_init_configuration(flat)

    def log(self, values: dict[str, float], step: int) -> None:
        self.tracker.log(values, step=step)

    def images(self, paths: list[Path], step: int) -> None:
        """Log the PNG plots ``paths`` (default: as images, ``plots/<name>``)."""
        self.tracker.log_images({f"plots/{p.stem}": [read_png(p)] for p in paths}, step=step)

    def finish(self) -> None:
        self.tracker.finish()


def read_png(path: Path) -> Any:
    """A PNG as a uint8 ``[H, W, 3]`` array."""
    import matplotlib.image
    import numpy as np

    image = matplotlib.image.imread(path)[..., :3]
    return (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)


class TensorBoardTracker(Tracker):
    package = "tensorboard"
    module = "tensorboard"

    def create(self, logs: Path, run_name: str) -> Any:
        from accelerate.tracking import TensorBoardTracker

        return TensorBoardTracker("tensorboard", logs)

    def where(self) -> str:
        folder = self.logs / "tensorboard"
        return f"tensorboard: {folder} (view: tensorboard --logdir {folder})"

    def config(self, flat: dict[str, Any], recipe_file: Path) -> None:
        super().config(flat, recipe_file)
        self.tracker.log({"recipe": recipe_file.read_text(encoding="utf-8")}, step=0)

    def images(self, paths: list[Path], step: int) -> None:
        images = {f"plots/{p.stem}": read_png(p)[None] for p in paths}
        self.tracker.log_images(images, step=step, dataformats="NHWC")
        self.tracker.writer.flush()


class MLflowTracker(Tracker):
    """A local SQLite store, ``RUN/logs/mlflow.db``, with artifacts in
    ``RUN/logs/mlflow-artifacts`` (MLflow 3 refuses its plain-file store by default; SQLite is
    the local store it recommends)."""

    package = "mlflow"
    module = "mlflow"
    needs = ("sqlalchemy", "alembic")  # the SQLite store's (in mlflow, not in mlflow-skinny)

    def create(self, logs: Path, run_name: str) -> Any:
        import mlflow
        from accelerate.tracking import MLflowTracker

        logs.mkdir(parents=True, exist_ok=True)
        self.store = logs / "mlflow.db"
        self.previous_uri = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(f"sqlite:///{self.store.resolve()}")
        artifacts = (logs / "mlflow-artifacts").resolve().as_uri()
        return MLflowTracker(experiment_name="distill", logging_dir=artifacts, run_name=run_name)

    def where(self) -> str:
        return f"mlflow: {self.store} (view: mlflow ui --backend-store-uri sqlite:///{self.store})"

    def config(self, flat: dict[str, Any], recipe_file: Path) -> None:
        super().config(flat, recipe_file)
        self.tracker.log_artifact(str(recipe_file))

    def images(self, paths: list[Path], step: int) -> None:
        for path in paths:
            self.tracker.log_artifact(str(path), "plots")

    def finish(self) -> None:
        import mlflow

        super().finish()
        mlflow.set_tracking_uri(self.previous_uri)


class WandBTracker(Tracker):
    package = "wandb"
    module = "wandb"

    def create(self, logs: Path, run_name: str) -> Any:
        from accelerate.tracking import WandBTracker

        logs.mkdir(parents=True, exist_ok=True)
        return WandBTracker("distill", name=run_name, dir=str(logs), mode="offline")

    def where(self) -> str:
        return f"wandb: {self.logs / 'wandb'} (offline; upload with: wandb sync DIR)"


TRACKERS: dict[str, type[Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "mlflow": MLflowTracker,
    "wandb": WandBTracker,
}
"""The trackers ``train.log_with`` may name."""


def check_tracker_names(names: list[str]) -> list[str]:
    """``names`` when each is a key of :data:`TRACKERS` and none repeats.

    Raises:
        ValueError: an unknown name (with the closest known one) or a repeated one.
    """
    for name in names:
        if name not in TRACKERS:
            raise ValueError(
                f"unknown tracker {name!r}{did_you_mean(name, TRACKERS)}; known trackers: "
                f"{', '.join(TRACKERS)}"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"tracker {repeated[0]!r} is named twice")
    return names


class Tracking:
    """The trackers of one run.

    Args:
        names: keys of :data:`TRACKERS` (the recipe's ``train.log_with``).
        main: whether this is the main process (the only one that logs).

    Raises:
        ConfigError: a tracker whose package is not installed (on every process, before
            anything is written).
    """

    def __init__(self, names: list[str], *, main: bool = True) -> None:
        check_tracker_names(list(names))
        for name in names:
            kind = TRACKERS[name]
            if any(importlib.util.find_spec(m) is None for m in (kind.module, *kind.needs)):
                raise ConfigError(
                    f"train.log_with: tracker {name!r} needs the {kind.package} package, which "
                    f"is not installed: pip install {kind.package}"
                )
        self.names = list(names) if main else []
        self.trackers: list[Tracker] = []
        self.locations: list[str] = []

    def start(self, run_dir: Path, raw_recipe: dict[str, Any], log: Callable[[str], None]) -> None:
        """Start every tracker under ``RUN/logs`` and log the recipe (``RUN/recipe.yaml``)."""
        if not self.names:
            return
        flat = flatten_config(raw_recipe)
        for name in self.names:
            tracker = TRACKERS[name](Path(run_dir) / "logs", Path(run_dir).resolve().name)
            tracker.config(flat, Path(run_dir) / "recipe.yaml")
            self.trackers.append(tracker)
            self.locations.append(tracker.where())
            log(f"logging to {self.locations[-1]}")

    def log_epoch(
        self,
        stage: str,
        phase: str,
        record: dict[str, Any],
        finished: Mapping[str, dict[str, Any]],
    ) -> None:
        """Log an epoch's record (see :class:`~distill.training.Trainer`) of phase ``phase``
        of ``stage``. ``finished`` holds the run's finished phases (``progress.json``'s
        ``phases``), whose epochs come before this one in the run's step count."""
        if not self.trackers:
            return
        step = sum(len(done.get("history", [])) for done in finished.values())
        step += int(record["epoch"])
        values: dict[str, float] = {
            f"train/{stage}/{phase}/{part}": float(value) for part, value in record["train"].items()
        }
        if record.get("lr") is not None:
            values[f"lr/{stage}/{phase}"] = float(record["lr"])
        for model, metrics in (record.get("val") or {}).items():
            for metric, value in metrics.items():
                if isinstance(value, (int, float)):
                    values[f"val/{model}/{metric}"] = float(value)
        for tracker in self.trackers:
            tracker.log(values, step)

    def finish(self, summary: dict[str, Any], run_dir: Path) -> None:
        """Log the summary's final metrics and the run's plots (``RUN/*.png``); close."""
        if not self.trackers:
            return
        step = sum(int(stage.get("epochs", 0)) for stage in summary.get("stages", []))
        values = {
            f"final/{model}/{key}": float(value)
            for model, entry in summary.get("models", {}).items()
            for key, value in entry.items()
            if key.startswith(("val_", "test_")) and isinstance(value, (int, float))
        }
        plots = sorted(Path(run_dir).glob("*.png"))
        for tracker in self.trackers:
            tracker.log(values, step)
            if plots:
                tracker.images(plots, step)
            tracker.finish()
        self.trackers = []

    def where(self) -> list[str]:
        """One line per tracker started: where its logs are, and how to view them."""
        return list(self.locations)
