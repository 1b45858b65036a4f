"""Run a recipe: ordered stages, each made of phases, handing trained models to later stages.

Layout of a run directory (``--out DIR``)::

    recipe.yaml        the recipe as run (after --set overrides)
    progress.json      which phases are finished, with their histories (resume state)
    metrics.jsonl      one line per epoch per stage phase per evaluated model
    summary.json       final results (see DESIGN.md)
    report.md, *.png   tables and plots
    checkpoints/
      <model>.pt                      each trained model, written when its stage ends
      <stage>/<phase>/epoch_NNNN.pt   epoch checkpoints of the running phase
      <stage>/<phase>/final.pt        weights of the models a finished phase trained

Each phase's epoch checkpoints are removed once its ``final.pt`` is on disk. A resumed run
replays finished phases from their ``final.pt`` and continues the unfinished one from its
newest whole epoch checkpoint. Each finished phase is recorded with its stage's fingerprint
(:meth:`Recipe.stage_fingerprints`): after the recipe changed, ``--resume`` keeps the phases
of the stages whose fingerprint is unchanged and trains the others again. ``metrics.jsonl``
of a resumed run is rebuilt from the recorded histories, so it ends as an uninterrupted run's.
The folder's rules (which folders a run may use, its lock, where it may write) are
:mod:`distill.rundir`'s.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import Dataset, default_collate

from .cache import (
    TeacherCache,
    ViewDataset,
    check_cache_settings,
    dataset_fingerprint,
    model_fingerprint,
    transform_description,
)
from .data import DataBundle, load
from .data.batches import as_item
from .devices import model_device, to_device
from .errors import CheckpointError, ConfigError, DataError, DistillError
from .files import atomic_save, atomic_write_json, atomic_write_text, safe_load
from .methods import Phase, StageContext, TeacherFields
from .models import count_parameters, create, load_model_weights, save_model, save_trained
from .models.normalization import Renormalize, forget_input_normalization, renormalizer
from .recipe import Recipe, load_yaml, recipe_changes
from .rundir import PROGRESS_FORMAT, RunFolder
from .seeding import derive_seed, seed_everything
from .tasks import get_task
from .teachers import Teacher
from .tracking import Tracking
from .training import Trainer, check_finite, check_processes, evaluate, get_accelerator
from .training.fsdp import check_blocks, for_inference


class Pipeline:
    """Runs a :class:`~distill.recipe.Recipe` into an output directory.

    Args:
        recipe: the validated recipe.
        out_dir: the run directory.
        resume: continue a run interrupted in ``out_dir``.
        data: a :class:`~distill.data.DataBundle` to use instead of ``recipe.data`` (for users'
            own datasets through the Python API).
        progress: show progress bars and per-epoch lines.
        device: ``auto``, ``cpu`` or ``cuda``.
        log: where one-line messages go (default ``print``).
    """

    def __init__(
        self,
        recipe: Recipe,
        out_dir: str | os.PathLike,
        *,
        resume: bool = False,
        data: DataBundle | None = None,
        progress: bool = True,
        device: str = "auto",
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.recipe = recipe
        self.out = Path(out_dir)
        self.resume = resume
        self.bundle = data
        self.progress = progress
        self.device = device
        self.accelerator = get_accelerator(device)
        self.log = log or (print if self.accelerator.is_main_process else (lambda _msg: None))
        self.models: dict[str, nn.Module] = {}
        self.task = get_task(recipe.task)
        self.stage_names = recipe.stage_names()
        # The phase being built, and the teachers and training data it gets (see _teacher).
        self._phase: tuple[str, str] | None = None
        self._phase_teachers: list[Teacher] = []
        self._phase_data: Dataset | None = None
        # Models whose teacher inputs are re-normalised: name -> the line said about it.
        self.notes: dict[str, str] = {}
        self.state: dict[str, Any] = {}
        self.folder = RunFolder(self.out, self.log)
        self.fingerprints = dict(zip(self.stage_names, recipe.stage_fingerprints(), strict=True))
        self.tracking = Tracking(recipe.train.log_with, main=self.is_main)

    # -- setup ---------------------------------------------------------------------------

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def _prepare_out_dir(self) -> None:
        """Take the run folder: refuse a file or a folder of other files, take its lock and
        read its progress. A run already in the folder needs ``--resume``; then the finished
        phases of the stages whose part of the recipe changed are forgotten (said in the log)."""
        if self.is_main:
            self.folder.check_usable()
            self.folder.lock()
        self.accelerator.wait_for_everyone()
        state = self.folder.read_progress()
        started = state is not None and bool(state["phases"] or state.get("started"))
        if started and not self.resume:
            raise ConfigError(
                f"--out {self.out}: already holds a run; pass --resume to continue it (the "
                "stages whose part of the recipe is unchanged are kept), or choose another --out"
            )
        if self.resume and not started:
            self.log(f"--resume: {self.out} holds no run to continue yet; starting one")
        self.state = {
            "format": PROGRESS_FORMAT,
            "fingerprint": self.recipe.fingerprint(),
            "source": self.recipe.source,
            "phases": {},
            "started": {},
        }
        if started:
            assert state is not None
            self._keep_unchanged(state)
        # Every process has read the folder's state; only then may the main one write.
        self.accelerator.wait_for_everyone()
        if self.is_main:
            self.folder.clean_temporaries()
            atomic_write_text(
                self.folder.path("recipe.yaml"), yaml.safe_dump(self.recipe.raw, sort_keys=False)
            )
            self._save_state()
            self.folder.path("checkpoints").mkdir(exist_ok=True)
        self.accelerator.wait_for_everyone()

    def _keep_unchanged(self, old: dict[str, Any]) -> None:
        """Take over ``old`` progress for the stages whose fingerprint is unchanged; forget
        the finished phases of the others and remove the epoch checkpoints of those started."""
        same_recipe = old.get("fingerprint") == self.recipe.fingerprint()

        def unchanged(key: str, fingerprint: str | None) -> bool:
            stage = key.split("/", 1)[0]
            known = self.fingerprints.get(stage)
            return known is not None and (fingerprint or (known if same_recipe else None)) == known

        phases, started = old["phases"], old.get("started", {})
        kept = {k: r for k, r in phases.items() if unchanged(k, r.get("fingerprint"))}
        own = ("fingerprint", "source", "phases", "started")
        self.state.update({k: v for k, v in old.items() if k not in own})
        self.state["phases"] = kept
        self.state["started"] = {k: f for k, f in started.items() if unchanged(k, f)}
        place = {name: i for i, name in enumerate(self.stage_names)}
        dropped = sorted(
            {k.split("/", 1)[0] for k in [*phases, *started] if k not in kept},
            key=lambda name: (place.get(name, len(place)), name),
        )
        if same_recipe or not dropped:
            return
        if self.is_main:
            for stage in dropped:
                stage_dir = self.folder.path("checkpoints", stage)
                if stage_dir.is_dir():
                    for path in stage_dir.glob("*/epoch_*.pt"):
                        path.unlink(missing_ok=True)
        try:
            before = load_yaml(self.folder.path("recipe.yaml").read_text(encoding="utf-8"))
            changes = recipe_changes(before, self.recipe.raw)
        except (OSError, UnicodeDecodeError, DistillError):
            changes = ["the previous recipe.yaml cannot be read"]
        more = f"; and {len(changes) - 4} more" if len(changes) > 4 else ""
        shown = "; ".join(changes[:4]) + more
        kept_stages = sorted({k.split("/", 1)[0] for k in kept}, key=place.__getitem__)
        self.log(
            f"--resume: the recipe changed ({shown or 'nothing that changes weights'}); "
            f"trained again: {', '.join(dropped)}; kept: {', '.join(kept_stages) or 'none'}"
        )

    def _save_state(self) -> None:
        if self.is_main:
            atomic_write_json(self.folder.path("progress.json"), self.state)

    def _load_data(self) -> DataBundle:
        if self.bundle is None:
            name = self.recipe.data.name
            try:
                self.bundle = load(self.recipe.data, seed=self.recipe.seed)
            except (ConfigError, DataError) as exc:
                message = str(exc)
                prefix = "" if message.startswith("data.") else f"data ({name}): "
                raise type(exc)(prefix + message) from None
        if self.bundle.kind != self.task.data_kind:
            raise ConfigError(
                f"task: {self.task.name} runs on {self.task.data_kind} data, but data.name "
                f"{self.bundle.name!r} is {self.bundle.kind} data; choose a dataset of that kind "
                "or another task"
            )
        return self.bundle

    def _build_models(self, bundle: DataBundle) -> None:
        from_data = self.task.model_options(bundle)
        for name, spec in self.recipe.models.items():
            torch.manual_seed(derive_seed(self.recipe.seed, "model", name))
            try:
                model = create(spec.arch, defaults=from_data, **spec.source_options())
                self.task.check_model(model, bundle)
            except ConfigError as exc:
                raise ConfigError(f"models.{name}.arch: {exc}") from None
            if spec.checkpoint:
                try:
                    load_model_weights(
                        model, spec.checkpoint, name=name, num_classes=from_data.get("num_classes")
                    )
                except CheckpointError as exc:
                    raise CheckpointError(f"models.{name}.checkpoint: {exc}") from None
                forget_input_normalization(model)  # a run's checkpoint: trained on the data's
            self.models[name] = model

    # -- running -------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Run every stage (skipping finished phases when resuming); return the summary."""
        try:
            self._prepare_out_dir()
            return self._run()
        finally:
            self.folder.unlock()

    def _run(self) -> dict[str, Any]:
        self.tracking.start(self.out, self.recipe.raw, self.log)
        self.notes.update(self.state.get("notes", {}))  # said by phases finished before a resume
        bundle = self._load_data()
        self._check_same_data(bundle)
        self._build_models(bundle)
        collate = bundle.collate or default_collate
        sample = collate([as_item(bundle.train[i], i) for i in range(min(8, len(bundle.train)))])
        ctx = StageContext(
            models=self.models,
            sample_batch=sample,
            task=self.task,
            train_size=len(bundle.train),
            seed=self.recipe.seed,
            trained={n for n, m in self.recipe.models.items() if m.checkpoint or m.weights},
            make_teacher=lambda name, settings, temperature: self._teacher(
                name, settings, temperature, bundle
            ),
            tokenizer=getattr(bundle, "tokenizer", None),
        )
        for index, spec in enumerate(self.recipe.stages):
            check_processes(spec.train, self.accelerator, f"stages.{index}")
            self._check_cache(index, spec, ctx, bundle)
            spec.check(ctx)
        self._check_sharding()
        stage_results = []
        for index, (spec, stage_name) in enumerate(
            zip(self.recipe.stages, self.stage_names, strict=True)
        ):
            phases = spec.phases(ctx)
            stage_seconds = 0.0
            phase_results = []
            for order, phase in enumerate(phases):
                record = self._run_phase((index, order), stage_name, spec.method, phase, bundle)
                stage_seconds += record["seconds"]
                phase_results.append(record)
            ctx.trained.update(spec.produces())
            for name in spec.produces():  # trained here: it now takes the data's normalisation
                forget_input_normalization(self.models[name])
            if self.is_main:
                self._save_trained(spec.produces(), stage_name, bundle)
            primary = self.task.primary.name
            final_val = {}
            for record in phase_results:
                if record["history"]:
                    final_val.update(
                        {m: v[primary] for m, v in record["history"][-1]["val"].items()}
                    )
            stage_results.append(
                {
                    "name": stage_name,
                    "method": spec.method,
                    "models": spec.produces(),
                    "teachers": spec.uses(),
                    "epochs": sum(len(r["history"]) for r in phase_results),
                    "seconds": round(stage_seconds, 2),
                    f"val_{primary}": final_val,
                    "phases": [
                        {
                            "name": r["phase"],
                            "epochs": len(r["history"]),
                            "seconds": round(r["seconds"], 2),
                            "models": r["models"],
                            **({"placement": r["placement"]} if "placement" in r else {}),
                        }
                        for r in phase_results
                    ],
                    **spec.summary_fields(),
                }
            )
        summary = self._summarise(bundle, stage_results)
        if self.is_main:
            if self.resume:
                self._rewrite_metrics()
            atomic_write_json(self.folder.path("summary.json"), summary)
            from .report import write_report

            write_report(self.out, summary, self._read_metrics())
        self.tracking.finish(summary, self.out)
        return summary

    def _check_sharding(self) -> None:
        """Before anything trains: every ``train.fsdp_blocks`` class is in the stage's models;
        and a word when ``strategy: fsdp`` has one process, where it shards nothing."""
        for spec, stage_name in zip(self.recipe.stages, self.stage_names, strict=True):
            if spec.train.fsdp_blocks:
                models = {n: self.models[n] for n in [*spec.produces(), *spec.uses()]}
                where = f"stage {stage_name!r}: train.fsdp_blocks"
                check_blocks(spec.train.fsdp_blocks, models, where)
        if self.accelerator.num_processes == 1 and any(
            spec.train.strategy == "fsdp" for spec in self.recipe.stages
        ):
            self.log("train.strategy fsdp with one process: nothing to shard, models train whole")

    def _save_trained(self, names: list[str], stage_name: str, bundle: DataBundle) -> None:
        """Write each model a stage trained: ``checkpoints/NAME.pt`` (a recipe can start from
        it) and ``models/NAME/`` in its ecosystem's format (with the data's tokenizer)."""
        meta = self.task.model_options(bundle)
        for name in names:
            model = self.models[name]
            check_finite(model.state_dict(), f"model {name!r} (stage {stage_name!r})")
            path = self.folder.path("checkpoints", f"{name}.pt")
            save_model(model, path, stage=stage_name, **meta)
            tokenizer = getattr(bundle, "tokenizer", None)
            save_trained(model, self.folder.path("models", name), tokenizer=tokenizer, **meta)

    def _by_model(self, method: nn.Module, found: dict[str, Any]) -> dict[str, Any]:
        """``found`` (keyed by the method's attribute names) keyed by the recipe's model names,
        where the attribute holds one (a method's own modules, e.g. adapters, keep theirs)."""
        names = {id(model): name for name, model in self.models.items()}
        named = {}
        for attribute, value in found.items():
            module = method.get_submodule(attribute)
            module = module.module if isinstance(module, Teacher) else module
            named[names.get(id(module), attribute)] = value
        return named

    def _phase_dir(self, stage_name: str, phase: Phase) -> Path:
        phase_dir = self.folder.path("checkpoints", stage_name, phase.name)
        if phase_dir.exists() and not phase_dir.is_dir():
            raise CheckpointError(
                f"{phase_dir} should be the folder of a phase's checkpoints but is a file; "
                "move it away, then resume"
            )
        return phase_dir

    def _check_same_data(self, bundle: DataBundle) -> None:
        """Refuse to continue a run on other data than it started with (the data's content
        changed, or another ``--data-dir``, while its settings in the recipe did not)."""
        settings = self.recipe.data.model_dump(mode="json", exclude={"dir", "num_workers"})
        splits = [bundle.train, *([bundle.val] if bundle.val is not None else [])]
        found = {"fingerprint": "/".join(map(dataset_fingerprint, splits)), "settings": settings}
        known = self.state.get("data")
        trained = self.state["phases"] or self.state["started"]
        if trained and isinstance(known, dict) and known.get("settings") == settings:
            if known.get("fingerprint") != found["fingerprint"]:
                raise ConfigError(
                    f"--out {self.out}: this run was trained on other data than it is given now "
                    f"(the data's fingerprint was {known.get('fingerprint')}, now "
                    f"{found['fingerprint']}: another --data-dir or changed files?); resume "
                    "with the data it started with, or start a new run in another --out"
                )
        self.state["data"] = found

    def _restore(self, key: str, phase: Phase, phase_dir: Path) -> bool:
        """Load a finished phase's weights from its ``final.pt``; ``False`` (said in the log)
        when that file is missing or damaged: the phase is then trained again."""
        try:
            final = safe_load(phase_dir / "final.pt")
            for name in phase.models:
                self.models[name].load_state_dict(final["models"][name])
        except (CheckpointError, KeyError, TypeError, RuntimeError) as exc:
            problem = " ".join(str(exc).split())[:160]
            self.log(
                f"[{key}] {phase_dir / 'final.pt'} cannot be used ({problem}); training the "
                "phase again"
            )
            del self.state["phases"][key]
            return False
        return True

    def _run_phase(
        self,
        place: tuple[int, int],
        stage_name: str,
        method_name: str,
        phase: Phase,
        bundle: DataBundle,
    ) -> dict[str, Any]:
        index = place[0]
        key = f"{stage_name}/{phase.name}"
        phase_dir = self._phase_dir(stage_name, phase)
        done = self.state["phases"].get(key)
        if done is not None and self._restore(key, phase, phase_dir):
            self.log(f"[{stage_name}] {phase.name}: already finished, weights restored")
            return {"phase": phase.name, "models": phase.models, **done}
        self.state["started"][key] = self.fingerprints[stage_name]
        self._save_state()

        # Seeded so that adapters a method creates are the same in a resumed run.
        seed_everything(derive_seed(self.recipe.seed, index, stage_name, phase.name, "build"))
        self._phase, self._phase_teachers, self._phase_data = (stage_name, phase.name), [], None
        try:
            method = phase.build()
        finally:
            self._phase = None
        data = self.recipe.data
        resuming = self.resume and any(phase_dir.glob("epoch_*.pt"))
        if self.resume and self.is_main:
            self._rewrite_metrics()  # the lines of this phase come again, from its checkpoint

        def on_epoch_end(record: dict[str, Any]) -> None:
            self._append_metrics(stage_name, phase.name, method_name, record)
            self.tracking.log_epoch(stage_name, phase.name, record, self.state["phases"])

        def on_resume(history: list[dict[str, Any]]) -> None:
            if self.is_main:
                for record in history:
                    self._write_metric_lines(
                        self._metric_lines(stage_name, phase.name, method_name, record)
                    )

        trainer = Trainer(
            phase.config,
            task=self.task,
            batch_size=data.batch_size,
            eval_batch_size=data.eval_batch_size,
            num_workers=data.num_workers,
            seed=derive_seed(self.recipe.seed, index, stage_name, phase.name),
            checkpoint_dir=phase_dir,
            on_epoch_end=on_epoch_end,
            on_resume=on_resume,
            progress=self.progress,
            desc=f"[{stage_name}] {phase.name}",
            device=self.device,
            collate=bundle.collate,
        )
        eval_models = {name: self.models[name] for name in phase.models}
        train_data = self._phase_data if self._phase_data is not None else bundle.train
        started = time.perf_counter()
        result = trainer.fit(method, train_data, bundle.val, eval_models, resume=resuming)
        if phase.after is not None:
            phase.after(method)
        record: dict[str, Any] = {
            "history": result.history,
            "seconds": result.seconds,
            "method": method_name,
            "order": list(place),
            "fingerprint": self.fingerprints[stage_name],
        }
        if self.accelerator.num_processes > 1:  # parameter bytes per process, by model
            record["placement"] = self._by_model(method, result.placement)
        for teacher in self._phase_teachers:
            cache = teacher.store
            assert isinstance(cache, TeacherCache)
            cache.flush()
            self.log(f"[{stage_name}] {phase.name}: {cache.describe()}")
            record["cache"] = {
                "entries": cache.size,
                "bytes": cache.nbytes,
                "store": cache.settings.store,
                "views": cache.settings.views,
                "filled": round(cache.filled_fraction, 4),
                "teacher_calls": teacher.calls,
            }
        weights = {n: self.models[n].state_dict() for n in phase.models}
        for name, state in weights.items():
            check_finite(state, f"[{stage_name}] {phase.name}: model {name!r}")
        if self.is_main:
            atomic_save({"models": weights}, phase_dir / "final.pt")
            self.state["phases"][key] = record
            self.state["started"].pop(key, None)
            self._save_state()
            for path in phase_dir.glob("epoch_*.pt"):
                path.unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()
        self.log(f"[{stage_name}] {phase.name}: done in {time.perf_counter() - started:.1f} s")
        return {"phase": phase.name, "models": phase.models, **record}

    def _teacher(
        self,
        name: str,
        settings: TeacherFields | None,
        temperature: float,
        bundle: DataBundle,
    ) -> Teacher:
        """Model ``name`` as the teacher of the phase being built, with the stage's teacher
        settings: its precision, and, with ``cache: teacher``, an output cache under
        ``cache/<stage>/<phase>/`` (the phase then trains on the cache's views of the data)."""
        precision = settings.teacher_precision if settings is not None else "fp32"
        if getattr(settings, "teacher_logits", None) is not None:
            return self._store_teacher(name, settings, temperature, bundle)
        renorm = self._renormalizer(name, bundle)
        teacher = Teacher(self.models[name], self.task, precision, renormalize=renorm)
        cache_settings = settings.cache_settings() if settings is not None else None
        if cache_settings is None or self._phase is None:
            return teacher
        stage_name, phase_name = self._phase
        views = ViewDataset(bundle.train, cache_settings.views, seed=self.recipe.seed)
        cache_settings.views = views.views
        identity = {
            "teacher": model_fingerprint(teacher.module),
            "data": dataset_fingerprint(bundle.train),
            "transform": transform_description(bundle.train),
            "views": views.views,
            "seed": self.recipe.seed,
            "teacher_precision": precision,
            "renormalize": renorm.describe() if renorm is not None else None,
            "temperature": temperature if cache_settings.topk else None,
            "settings": [cache_settings.store, cache_settings.dtype, cache_settings.topk],
        }
        fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        collate = bundle.collate or default_collate
        device = model_device(teacher.module)
        probe = teacher.compute(to_device(collate([views[0]]), device))  # the outputs' shape
        teacher.calls = 0
        shape: tuple[int, ...] = tuple(probe.shape[1:])
        positions: Callable[[Any], tuple[int, ...]] | None = None
        seq_len = getattr(bundle, "seq_len", None)
        if len(shape) > 1 and seq_len:  # token outputs: batches pad to their longest item
            shape = (seq_len - 1, *shape[1:])
            positions = functools.partial(positions_shape, self.task)
        teacher.store = TeacherCache(
            len(views) * views.views,
            shape,
            fingerprint[:16],
            cache_settings,
            directory=self.folder.path("cache", stage_name, phase_name),
            temperature=temperature,
            log=self.log,
            positions=positions,
        )
        self._phase_teachers.append(teacher)
        self._phase_data = views
        return teacher

    def _check_cache(
        self, index: int, spec: Any, ctx: StageContext, bundle: DataBundle
    ) -> None:
        """Check a stage's teacher cache against its teachers' outputs and the data before
        anything trains (not when the stage starts, after the stages before it)."""
        settings = spec.cache_settings() if isinstance(spec, TeacherFields) else None
        if settings is None:
            return
        try:
            ViewDataset(bundle.train, settings.views, seed=self.recipe.seed)
            for name in spec.uses():
                classes = ctx.sample_logits(name).shape[-1]
                check_cache_settings(settings, classes)
        except ConfigError as exc:
            raise ConfigError(f"stages.{index}: {exc}") from None

    def store_identity(
        self, name: str, settings: TeacherFields | None, temperature: float, bundle: DataBundle
    ) -> dict[str, Any]:
        """What an offline teacher store for model ``name`` with a stage's settings depends on
        (see :func:`distill.cache.offline.store_identity`); ``distill cache build`` records
        it, a stage reading the store compares it."""
        from .cache.offline import store_identity

        renorm = self._renormalizer(name, bundle)
        return store_identity(
            task=self.task,
            teacher=self.models[name],
            precision=settings.teacher_precision if settings is not None else "fp32",
            train=bundle.train,
            tokenizer=getattr(bundle, "tokenizer", None),
            temperature=temperature,
            standardize=bool(getattr(settings, "standardize", False)),
            renormalize=renorm.describe() if renorm is not None else None,
        )

    def _store_teacher(
        self, name: str, settings: TeacherFields, temperature: float, bundle: DataBundle
    ) -> Teacher:
        """A teacher that answers from the stage's offline store (``teacher_logits``) and has
        no model: the store is refused, in one line naming what differs, unless it was built
        by this teacher on this data and tokenizer at this temperature. Before the run, a
        teacher that an earlier stage will train is not compared yet (it is when its phase
        starts)."""
        from .cache.offline import TeacherStore

        path = settings.teacher_logits  # type: ignore[attr-defined]
        store = TeacherStore(path)
        identity = self.store_identity(name, settings, temperature, bundle)
        spec = self.recipe.models[name]
        if self._phase is None and not (spec.checkpoint or spec.weights):
            identity["teacher"] = store.manifest.get("identity", {}).get("teacher")
        stage = self._phase[0] if self._phase else settings.stage_name()  # type: ignore[attr-defined]
        store.check(
            identity,
            where=f"stage {stage!r} teacher_logits",
            rebuild=f"distill cache build {self.recipe.source} --stage {stage} --out {path}",
        )
        if self._phase is not None:
            self.log(f"[{stage}] {self._phase[1]}: {store.describe()}")
        return Teacher(None, self.task, settings.teacher_precision, store=store)

    def _renormalizer(self, name: str, bundle: DataBundle) -> Renormalize | None:
        """What takes the data's normalisation to the one model ``name`` expects (its
        ``input_mean``/``input_std``, e.g. a timm model's ``pretrained_cfg``), or None when they
        agree or either is unknown; said once per model in the log and the report (when a
        phase is built, not in the checks before the run)."""
        model = self.models[name]
        mean, std = input_normalization_of(bundle)
        try:
            renorm = renormalizer(mean, std, model)
        except ConfigError as exc:
            raise ConfigError(f"models.{name}: {exc}") from None
        if self._phase is None or name in self.notes:
            return renorm
        arch = getattr(model, "arch", type(model).__name__)
        if renorm is not None:
            self.notes[name] = (
                f"Teacher `{name}` ({arch}) expects other input normalisation than the data: "
                f"its inputs are re-normalised {renorm.describe()}, "
                "x_t = ((x·std_d + mean_d) − mean_t)/std_t."
            )
        elif mean is None and getattr(model, "input_mean", None) is not None:
            self.notes[name] = (
                f"Teacher `{name}` ({arch}) expects inputs normalised with mean "
                f"{list(model.input_mean)} and std {list(model.input_std)}, but the data's "
                "normalisation is unknown (a dataset given without mean/std): its inputs are "
                "not re-normalised."
            )
        if name in self.notes:
            self.log(self.notes[name])
            self.state["notes"] = dict(self.notes)  # saved with the phase's progress
        return renorm

    # -- metrics -------------------------------------------------------------------------

    def _metric_lines(
        self, stage: str, phase: str, method: str, record: dict[str, Any]
    ) -> list[str]:
        """The ``metrics.jsonl`` lines of one epoch's record (one per evaluated model)."""
        lines = []
        for model, val in (record["val"] or {"": {}}).items():
            line = {
                "stage": stage,
                "phase": phase,
                "method": method,
                "epoch": record["epoch"],
                "model": model or None,
                "train": record["train"],
                **{f"val_{m.name}": val.get(m.name) for m in self.task.metrics_info},
                "seconds": record["seconds"],
                "lr": record["lr"],
            }
            lines.append(json.dumps(line))
        return lines

    def _append_metrics(self, stage: str, phase: str, method: str, record: dict[str, Any]) -> None:
        if self.is_main:
            self._write_metric_lines(self._metric_lines(stage, phase, method, record))

    def _write_metric_lines(self, lines: list[str]) -> None:
        if lines:
            with open(self.folder.path("metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
                f.flush()

    def _read_metrics(self) -> list[dict[str, Any]]:
        path = self.folder.path("metrics.jsonl")
        if not path.is_file():
            return []
        records = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if isinstance(record, dict):
                records.append(record)
        return records

    def _rewrite_metrics(self) -> None:
        """Write ``metrics.jsonl`` again from the histories of the finished phases, in the
        order of the recipe (a line cut by a crash, or of a phase trained again, is gone)."""
        finished = sorted(
            self.state["phases"].items(), key=lambda item: item[1].get("order", [1 << 30])
        )
        lines = []
        for key, record in finished:
            stage, phase = key.split("/", 1)
            method = record.get("method", "")
            for epoch in record["history"]:
                lines += self._metric_lines(stage, phase, method, epoch)
        atomic_write_text(self.folder.path("metrics.jsonl"), "".join(f"{line}\n" for line in lines))

    # -- summary -------------------------------------------------------------------------

    def _summarise(self, bundle: DataBundle, stages: list[dict[str, Any]]) -> dict[str, Any]:
        trained_by: dict[str, str] = {}
        seconds: dict[str, float] = {}
        for stage in stages:
            for name in stage["models"]:
                trained_by[name] = stage["name"]
                seconds[name] = seconds.get(name, 0.0) + stage["seconds"] / len(stage["models"])
        batch = self.recipe.data.eval_batch_size or 2 * self.recipe.data.batch_size
        splits = {"val": bundle.val, "test": bundle.test}
        # Models that were sharded are whole on the CPU now: they are evaluated sharded.
        sharded = [s.train for s in self.recipe.stages if s.train.shards]
        sharding = sharded[0] if sharded else self.recipe.train
        models: dict[str, Any] = {}
        for name, spec in self.recipe.models.items():
            if name not in trained_by and not spec.checkpoint and not spec.weights:
                continue  # declared but never trained nor loaded: nothing to report
            model = self.models[name]
            entry: dict[str, Any] = {
                "arch": spec.arch,
                "params": count_parameters(model),
                "trained_by": trained_by.get(name, "checkpoint" if spec.checkpoint else "weights"),
                "seconds": round(seconds.get(name, 0.0), 2),
            }
            # A teacher used as given (weights) is scored on inputs it expects, as it taught.
            renorm = renormalizer(*input_normalization_of(bundle), model)
            device = model_device(model)
            scored = model if renorm is None else nn.Sequential(renorm.to(device), model)
            scored = for_inference(scored, self.accelerator, sharding)
            for split, dataset in splits.items():
                if dataset is None:
                    continue
                found = evaluate(
                    scored,
                    dataset,
                    self.task,
                    batch_size=batch,
                    accelerator=self.accelerator,
                    collate=bundle.collate,
                )
                check_finite(found, f"model {name!r}: its {split} metrics")
                entry.update({f"{split}_{m}": found[m] for m in self.task.summary_metrics})
            models[name] = entry
        samples = None
        if self.is_main:
            samples = self.task.samples({n: self.models[n] for n in models}, bundle)
        return {
            "recipe": self.recipe.source,
            "task": self.task.name,
            **({"samples": samples} if samples is not None else {}),
            "seed": self.recipe.seed,
            "data": {
                "name": bundle.name,
                "train": len(bundle.train),
                "val": len(bundle.val),
                **({"test": len(bundle.test)} if bundle.test is not None else {}),
            },
            "models": models,
            "stages": stages,
            **({"notes": list(self.notes.values())} if self.notes else {}),
        }


def input_normalization_of(data: Any) -> tuple[Any, Any]:
    """The per-channel mean and std the data's inputs were normalised with (``None`` for data
    that has none, such as text)."""
    return getattr(data, "mean", None), getattr(data, "std", None)


def run_recipe(
    recipe: Recipe, out_dir: str | os.PathLike, *, resume: bool = False, **kwargs: Any
) -> dict[str, Any]:
    """Run ``recipe`` into ``out_dir`` and return the summary (see :class:`Pipeline`)."""
    return Pipeline(recipe, out_dir, resume=resume, **kwargs).run()


def remove_run(out_dir: str | os.PathLike) -> None:
    """Delete a run directory; a folder that holds files but no run is refused (left as is)."""
    RunFolder(out_dir).check_usable()
    shutil.rmtree(out_dir, ignore_errors=True)


def positions_shape(task: Any, batch: Any) -> tuple[int, ...]:
    """The positions a batch's outputs run over (``(L−1,)`` for a causal LM), from ``task``'s
    targets."""
    return tuple(task.targets(batch).shape[1:])
