"""The ``distill`` command.

Exit codes: 0 success; 2 a problem with the input (recipe, data, checkpoint, arguments) or
with the machine (disk full, a folder that cannot be written), reported in one line without a
traceback (``--debug`` shows it); 130 stopped by SIGINT (Ctrl-C), 143 by SIGTERM, with the
command that resumes the run. Warnings are one line each too.

Signals are handled from the first line of :func:`main`, before the heavy imports (torch), so
that a stop at any moment ends with that one line; while the command shuts down, further
signals are ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shlex
import signal
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import DistillError, Interrupted

#: ``distill layers`` limits, so that a typo does not ask for gigabytes.
MAX_INPUT_SIZE = 4096
MAX_IN_CHANNELS = 512


def _fresh_dir(base: Path) -> Path:
    """``base``, or ``base-2``, ``base-3``... whichever does not exist yet."""
    candidate, k = base, 2
    while candidate.exists():
        candidate, k = base.with_name(f"{base.name}-{k}"), k + 1
    return candidate


def _cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import Pipeline
    from .recipe import load_recipe
    from .report import results_table

    recipe = load_recipe(args.recipe, overrides=args.set or [])
    if args.data_dir:
        recipe.data.dir = args.data_dir
    if args.out is None:
        if args.resume:
            raise DistillError("--resume needs --out DIR: the directory of the run to continue")
        out = _fresh_dir(Path("runs") / Path(args.recipe).stem)
    else:
        out = Path(args.out)
    pipeline = Pipeline(
        recipe, out, resume=args.resume, progress=not args.quiet, device=args.device
    )
    pipeline.log(f"distill {__version__}: running {args.recipe} into {out}")
    summary = pipeline.run()
    if pipeline.is_main:
        print()
        print(results_table(summary))
        print(f"\nwrote {out}/summary.json, metrics.jsonl, report.md and plots")
        for line in pipeline.tracking.where():
            print(f"tracker logs: {line}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEMO_TASKS, demo_recipe, gain_lines
    from .pipeline import Pipeline
    from .recipe import parse_recipe
    from .report import results_table

    data = args.data or DEMO_TASKS[args.task]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    raw = demo_recipe(data, methods, data_dir=args.data_dir)
    recipe = parse_recipe(raw, overrides=args.set or [], source=f"demo ({data})")
    out = Path(args.out) if args.out else _fresh_dir(Path("runs") / f"demo-{data}")
    args.resolved_out = str(out)
    pipeline = Pipeline(
        recipe, out, resume=args.resume, progress=not args.quiet, device=args.device
    )
    teacher, student = (recipe.models[n] for n in ("teacher", "student"))
    pipeline.log(
        f"distill {__version__} demo on {data}: teacher {teacher.arch}, students "
        f"{student.arch}; writing {out}"
    )
    summary = pipeline.run()
    if pipeline.is_main:
        print()
        print(results_table(summary))
        print("\n".join(gain_lines(summary)))
        print(f"\nwrote {out}/summary.json, metrics.jsonl, report.md and plots")
        for line in pipeline.tracking.where():
            print(f"tracker logs: {line}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import available

    print("\n".join(available()))
    return 0


def _cmd_layers(args: argparse.Namespace) -> int:
    import torch

    from .errors import ConfigError
    from .models import create
    from .taps import layer_shapes

    if not (1 <= args.input_size <= MAX_INPUT_SIZE and 1 <= args.in_channels <= MAX_IN_CHANNELS):
        raise ConfigError(
            f"--input-size must be from 1 to {MAX_INPUT_SIZE} and --in-channels from 1 to "
            f"{MAX_IN_CHANNELS}, got {args.input_size} and {args.in_channels}"
        )
    # Offered to any source that takes them (zoo, timm:, torchvision:, ...), as a run does.
    offered = {"task": "classification", "num_classes": args.num_classes}
    model = create(args.arch, defaults={**offered, "in_channels": args.in_channels})
    shape = [1, args.in_channels, args.input_size, args.input_size]
    try:
        sample = torch.zeros(shape)
        found = layer_shapes(model, sample)
    except (RuntimeError, MemoryError) as exc:  # too small for its pooling, out of memory...
        problem = " ".join(str(exc).split())[:200]
        raise ConfigError(
            f"{args.arch} cannot run on an input of shape {shape}: {problem}"
        ) from None
    rows = [
        (name, kind, "not run" if shape is None else str(list(shape)))
        for name, kind, shape in found
        if args.depth is None or name.count(".") < args.depth
    ]
    widths = [max(len(row[i]) for row in [("name", "type", ""), *rows]) for i in range(2)]
    print(f"{args.arch}: output shapes for an input of shape {list(sample.shape)}")
    print(f"{'name':<{widths[0]}}  {'type':<{widths[1]}}  output shape")
    for name, kind, shape in rows:
        print(f"{name:<{widths[0]}}  {kind:<{widths[1]}}  {shape}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model, parse_shape

    shape = parse_shape(args.input_shape) if args.input_shape else None
    job = export_model(
        args.run, args.model, args.format, args.out, force=args.force, input_shape=shape
    )
    print(f"wrote {job.path} ({job.note})")
    return 0


def _cmd_cache_build(args: argparse.Namespace) -> int:
    from .cache.build import build_store
    from .recipe import load_recipe

    recipe = load_recipe(args.recipe, overrides=args.set or [])
    if args.data_dir:
        recipe.data.dir = args.data_dir
    manifest = build_store(
        recipe,
        args.stage,
        args.out,
        topk=args.topk,
        top_p=args.top_p,
        dtype=args.dtype,
        batch_size=args.batch_size,
        device=args.device,
    )
    from .training import get_accelerator

    if get_accelerator(args.device).is_main_process:
        from .cache.offline import TeacherStore

        store = TeacherStore(args.out)
        dense = 2 * store.classes
        per = store.nbytes / max(1, store.positions)
        print(store.describe())
        print(
            f"{per:.0f} bytes/position against {dense:,} for dense float16 logits "
            f"({100 * per / dense:.2f}%); read it with teacher_logits: {args.out} in stage "
            f"{manifest['stage']!r}"
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distill",
        description="Knowledge distillation for PyTorch: train a small student to mimic a "
        "large teacher.",
    )
    parser.add_argument("--version", action="version", version=f"distill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--out", help="run directory (default: a new folder under runs/)")
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override a recipe field by dotted path, value in YAML syntax, "
            "e.g. --set train.epochs=2 --set stages.2.temperature=2 (repeatable)",
        )
        p.add_argument(
            "--resume",
            action="store_true",
            help="continue the interrupted run in --out where it stopped",
        )
        p.add_argument("--data-dir", help="directory holding the dataset files")
        p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        p.add_argument("--quiet", action="store_true", help="no progress bars or epoch lines")
        p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")

    run = sub.add_parser("run", help="run a YAML recipe")
    run.add_argument("recipe", help="path to the recipe (YAML)")
    common(run)
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser(
        "demo", help="train a teacher, a student alone and a distilled student; print a table"
    )
    demo.add_argument(
        "--task",
        default="image",
        choices=["image", "lm"],
        help="image: a classifier on digits (default); lm: a causal language model on the "
        "Python standard library's source",
    )
    demo.add_argument(
        "--data", default=None, help="digits (default for --task image), fashion-mnist"
    )
    demo.add_argument(
        "--methods", default="kd", help="comma-separated methods to add, e.g. kd (default: kd)"
    )
    common(demo)
    demo.set_defaults(func=_cmd_demo)

    models = sub.add_parser("models", help="list the model zoo's architectures")
    models.set_defaults(func=_cmd_models, debug=False)

    layers = sub.add_parser(
        "layers",
        help="list a model's layer names with their output shapes (to choose the layers "
        "of fitnets, fsp and at)",
    )
    layers.add_argument(
        "arch",
        help="a model: a zoo architecture (resnet20; see `distill models`), timm:NAME or "
        "torchvision:NAME (with `pip install 'distill[vision]'`)",
    )
    layers.add_argument("--input-size", type=int, default=28, help="image height = width (28)")
    layers.add_argument("--in-channels", type=int, default=1, help="image channels (1)")
    layers.add_argument("--num-classes", type=int, default=10, help="classes (10)")
    layers.add_argument(
        "--depth", type=int, default=None, help="only names with at most this many parts"
    )
    layers.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    layers.set_defaults(func=_cmd_layers)

    export = sub.add_parser(
        "export",
        help="write a model a run trained for deployment: safetensors, a transformers folder "
        "(hf) or ONNX",
    )
    export.add_argument("run", help="the run directory (the --out of distill run)")
    export.add_argument("--model", required=True, help="the model's name in the run's recipe")
    export.add_argument(
        "--format", required=True, metavar="FORMAT", help="safetensors, hf (hf: models) or onnx"
    )
    export.add_argument(
        "--out", help="file (folder for hf) to write; default RUN/export/NAME.safetensors, "
        "RUN/export/NAME/ or RUN/export/NAME.onnx"
    )
    export.add_argument("--force", action="store_true", help="replace --out if it exists")
    export.add_argument(
        "--input-shape", metavar="C,H,W", help="onnx: the shape of one input (default: the "
        "run's data)"
    )
    export.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    export.set_defaults(func=_cmd_export)

    cache = sub.add_parser("cache", help="offline teacher outputs: distill cache build ...")
    cache_sub = cache.add_subparsers(dest="cache_command", required=True, metavar="COMMAND")
    build = cache_sub.add_parser(
        "build",
        help="run a kd stage's teacher once over its training data and write its top-k "
        "log-probabilities per token to a store (read with teacher_logits: PATH); under "
        "torchrun each process writes a shard; an interrupted build resumes",
    )
    build.add_argument("recipe", help="path to the recipe (YAML)")
    build.add_argument("--stage", required=True, help="the kd stage whose teacher to store")
    build.add_argument("--out", required=True, help="the store's directory")
    build.add_argument("--topk", type=int, default=64, help="ids kept per token (64)")
    build.add_argument(
        "--top-p", type=float, default=None, metavar="P",
        help="keep only the fewest ids whose probability reaches P (at most --topk)",
    )
    build.add_argument(
        "--dtype", default="float16", help="log-probabilities in float16 (default) or bfloat16"
    )
    build.add_argument(
        "--batch-size", type=int, default=None, help="items per teacher batch (default: the "
        "recipe's eval batch size)"
    )
    build.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a recipe field (as run)"
    )
    build.add_argument("--data-dir", help="directory holding the dataset files")
    build.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    build.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    build.set_defaults(func=_cmd_cache_build)
    return parser


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def _signals_handled() -> Iterator[None]:
    """While active, SIGINT and SIGTERM raise :class:`Interrupted` naming the signal (the
    training loop defers them to a step boundary while it runs); the previous handlers come
    back afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:  # noqa: ARG001
        raise Interrupted(f"stopped by {signal.Signals(signum).name}", signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ignore_signals() -> None:
    """Shutting down: further stop signals are ignored (until :func:`_signals_handled`
    restores the handlers)."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    text = " ".join(str(message).split())
    print(f"distill: warning: {text} ({category.__name__})", file=sys.stderr)


def _os_problem(exc: OSError) -> str:
    """One line for an error of the machine (disk full, a file that cannot be written...)."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device{where}; free some space"
    return f"{exc.strerror or exc}{where}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``distill`` console script."""
    with _signals_handled(), warnings.catch_warnings():
        try:
            args = build_parser().parse_args(argv)
        except Interrupted as exc:
            _ignore_signals()
            print(f"distill: {exc}", file=sys.stderr)
            return 128 + exc.signum
        if not getattr(args, "debug", False):
            warnings.showwarning = _one_line_warning
        try:
            return _run_command(args)
        except Interrupted as exc:  # a stop while cleaning up after another ending
            _ignore_signals()
            print(f"distill: {exc}", file=sys.stderr)
            return 128 + exc.signum


def _run_command(args: argparse.Namespace) -> int:
    ok = False
    try:
        code = args.func(args)
        ok = True
        return code
    except DistillError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        resume = f"; resume with: {_resume_command(args)}" if _resumable(exc, args) else ""
        print(f"distill: error: {exc}{resume}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        _ignore_signals()
        after = ""
        if args.command in ("run", "demo"):
            kept = "" if exc.checkpointed else "; the last whole checkpoint is kept"
            after = f"{kept}. Resume with: {_resume_command(args)}"
        print(f"distill: {exc}{after}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:  # raised by code that handles SIGINT itself
        _ignore_signals()
        print(f"distill: stopped by SIGINT. Resume with: {_resume_command(args)}", file=sys.stderr)
        return 128 + signal.SIGINT
    except BrokenPipeError:  # `distill models | head`: the reader stopped reading
        with contextlib.suppress(OSError, ValueError, AttributeError):  # no more writes to it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print("distill: error: the output was closed before it was all written", file=sys.stderr)
        return 2
    except OSError as exc:
        if getattr(args, "debug", False):
            traceback.print_exc()
        resume = f"; resume with: {_resume_command(args)}" if _resumable(exc, args) else ""
        print(f"distill: error: {_os_problem(exc)}{resume}", file=sys.stderr)
        return 2
    finally:
        _end_distributed(ok)


def _resumable(exc: Exception, args: argparse.Namespace) -> bool:
    """Whether a run can be resumed once the cause is fixed: a stop for a non-finite value,
    an error of the machine (a full disk...)."""
    from .errors import DiskFullError, NonFiniteLossError

    resumable = (NonFiniteLossError, DiskFullError, OSError)
    return args.command in ("run", "demo") and isinstance(exc, resumable)


def _end_distributed(ok: bool) -> None:
    """Leave the process group cleanly (an abandoned one can abort the process at exit).

    After a run that ended normally, every process first waits for the others (the main one
    writes the report last), so that no process tears its connections down while another
    still uses them. After an error the others may never arrive: no waiting then.
    """
    if "torch" not in sys.modules:  # stopped before torch was imported: no process group
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if ok:
            dist.barrier()
        dist.destroy_process_group()


def _resume_command(args: argparse.Namespace) -> str:
    out = getattr(args, "resolved_out", None) or getattr(args, "out", None) or "DIR"
    sets = "".join(f" --set {shlex.quote(s)}" for s in (getattr(args, "set", None) or []))
    if args.command == "run":
        return f"distill run {args.recipe} --out {out}{sets} --resume"
    if args.command == "demo":
        data = f" --data {args.data}" if args.data else ""
        return (
            f"distill demo --task {args.task}{data} --methods {args.methods} --out {out}{sets} "
            "--resume"
        )
    if args.command == "cache":
        return "the same distill cache build command (a build resumes by itself)"
    return "the same command with --resume"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
