"""Speed of distillation: what each step costs, measured side by side in one process.

Every row is one training epoch over the same Fashion-MNIST subset, the same models and the
same batch size, run through distill's real ``Trainer`` (no validation). Rows are measured
alternating (row A, row B, ... then again), ``--repeats`` times; the table shows medians and
ratios to two references: the student trained alone, and the student alone plus one teacher
forward per batch (the cost floor of online distillation).

    python benchmarks/speed.py                           # CPU, about 5 minutes on 2 cores
    python benchmarks/speed.py --markdown docs/benchmarks.md   # rewrite the speed section
    python benchmarks/speed.py --device cuda             # on a GPU (its rows say so)

Peak memory: on CUDA, ``torch.cuda.max_memory_allocated`` over the epoch; on CPU (Linux), the
growth of the process's peak resident memory over the epoch (reset before each row through
``/proc/self/clear_refs``).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from distill.cache import CacheSettings, TeacherCache, ViewDataset
from distill.config import TrainConfig
from distill.data import load_data
from distill.losses import fsp_matrix
from distill.methods import KD, Supervised
from distill.models import count_parameters, create
from distill.teachers import Teacher
from distill.training import Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fsp_matrix import _status_bytes, fsp_broadcast, mib  # noqa: E402

BEGIN = "<!-- speed:begin -->"
END = "<!-- speed:end -->"


def measure(fn: Callable[[], float | None], device: torch.device) -> tuple[float, int | None]:
    """Run ``fn``; return (seconds, peak extra bytes). ``fn`` may return its own seconds."""
    peak: int | None = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
                clear.write("5")
            base = _status_bytes("VmRSS:")
        except OSError:
            base = None
    started = time.perf_counter()
    own = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = own if own is not None else time.perf_counter() - started
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    elif base is not None:
        peak = max(0, _status_bytes("VmHWM:") - base)
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--teacher", default="resnet8")
    parser.add_argument("--student", default="cnn-2")
    parser.add_argument("--images", type=int, default=5120, help="training images per epoch")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows")
    parser.add_argument("--markdown", type=Path, help="write the table into this file")
    args = parser.parse_args()

    device = torch.device(args.device)
    bundle = load_data(
        "fashion-mnist", subset=args.images + 1000, val_fraction=1000 / (args.images + 1000)
    )
    train = Subset(bundle.train, range(min(args.images, len(bundle.train))))
    torch.manual_seed(0)
    teacher = create(args.teacher, num_classes=10, in_channels=1).to(device).eval()
    student = create(args.student, num_classes=10, in_channels=1).to(device)
    cfg = TrainConfig(epochs=1)

    def epoch(method, data=train, config=cfg) -> float:  # noqa: ANN001
        trainer = Trainer(config, batch_size=args.batch_size, progress=False, device=args.device)
        return trainer.fit(method, data, None, {}).seconds

    def teacher_forward() -> None:
        with torch.no_grad():
            for x, _ in DataLoader(train, batch_size=args.batch_size):
                teacher(x.to(device))

    base_views = ViewDataset(bundle.train, views=1, seed=0)
    views = Subset(base_views, range(len(train)))

    def cached(which: str) -> float:
        store = TeacherCache(len(base_views), 10, "bench", CacheSettings())
        method = KD(Teacher(teacher, store=store), student)
        if which == "warm":
            epoch(method, views)  # fill, untimed
        return epoch(method, views)

    def kd_bf16() -> float:
        return epoch(KD(Teacher(teacher, precision="bf16"), student))

    def kd_channels_last() -> float:
        return epoch(KD(teacher, student), config=TrainConfig(epochs=1, channels_last=True))

    rows: dict[str, Callable[[], float | None]] = {
        "student alone": lambda: epoch(Supervised(student)),
        "teacher forward only": teacher_forward,
        "online KD": lambda: epoch(KD(teacher, student)),
        "cached KD, filling epoch": lambda: cached("fill"),
        "cached KD, warm epoch": lambda: cached("warm"),
        "online KD, teacher in bf16": kd_bf16,
        "online KD, channels_last": kd_channels_last,
    }
    if args.compile:
        rows["online KD, torch.compile"] = lambda: epoch(
            KD(
                create(args.teacher, num_classes=10, in_channels=1).to(device).eval(),
                create(args.student, num_classes=10, in_channels=1),
            ),
            config=TrainConfig(epochs=1, compile=True),
        )
    torchdistill_version = None
    try:
        import torchdistill  # type: ignore[import-not-found]

        rows["torchdistill DistillationBox KD"] = torchdistill_row(teacher, student, train, args)
        torchdistill_version = torchdistill.__version__
    except ImportError:
        pass

    for fn in rows.values():  # warm-up: allocator, kernels, data in cache
        measure(fn, device)
    samples: dict[str, list[tuple[float, int | None]]] = {k: [] for k in rows}
    for _ in range(args.repeats):
        for name, fn in rows.items():
            samples[name].append(measure(fn, device))

    med = {k: statistics.median(s for s, _ in v) for k, v in samples.items()}
    peaks = {k: max((p for _, p in v if p is not None), default=None) for k, v in samples.items()}
    alone = med["student alone"]
    td = "torchdistill DistillationBox KD"
    floor = alone + med["teacher forward only"]

    fsp_rows = fsp_table(device, args.repeats)
    dml_rows = dml_table(device, args.repeats, args.batch_size, args.student)

    label = device_label(device)
    lines = [
        BEGIN,
        f"Measured on {label}, torch {torch.__version__}"
        + (f", torchdistill {torchdistill_version}" if torchdistill_version else "")
        + f"; teacher `{args.teacher}` "
        f"({count_parameters(teacher):,} params), student `{args.student}` "
        f"({count_parameters(student):,} params), Fashion-MNIST, {len(train):,} images per "
        f"epoch, batch {args.batch_size}; median of {args.repeats} alternating repetitions.",
        "",
        "| row | seconds / epoch | × student alone | × (student + teacher forward) | peak memory |",
        "|---|---|---|---|---|",
    ]
    for name in rows:
        lines.append(
            f"| {name} | {med[name]:.3f} | {med[name] / alone:.2f} | {med[name] / floor:.2f} "
            f"| {mib(peaks[name])} |"
        )
    if torchdistill_version:
        ours, cached = med["online KD"] / med[td], med["cached KD, warm epoch"] / med[td]
        lines += [
            "",
            f"Against torchdistill's DistillationBox: our online KD {ours:.2f}× its epoch "
            f"(target ≤ 1.0×: {'met' if ours <= 1.0 else 'missed'}), our warm cached KD "
            f"{cached:.2f}× (target ≤ 0.4×: {'met' if cached <= 0.4 else 'missed'}).",
        ]
    lines += [
        "",
        "`fsp_matrix` (one batched matrix product) against the broadcast formulation that "
        "builds `[N, C1, C2, H·W]`, forward + backward:",
        "",
        "| case | ours (ms) | broadcast (ms) | speed-up | ours peak | broadcast peak |",
        "|---|---|---|---|---|---|",
        *fsp_rows,
        "",
        "Deep mutual learning, one step of a cohort of K = 2 against two single-model steps:",
        "",
        "| row | ms / step | ratio |",
        "|---|---|---|",
        *dml_rows,
        "",
        "Regenerate: `python benchmarks/speed.py --markdown docs/benchmarks.md`"
        + (" --compile" if args.compile else "")
        + (
            " in an environment where torchdistill installs (it needs torchvision: "
            "`python -m venv /tmp/td-venv && /tmp/td-venv/bin/pip install torch==2.14.1 "
            "torchvision==0.29.1 torchdistill==1.1.5 && /tmp/td-venv/bin/pip install -e .`, "
            "then `/tmp/td-venv/bin/python benchmarks/speed.py ...`)."
            if torchdistill_version
            else ""
        ),
        END,
    ]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        write_section(args.markdown, table)


def torchdistill_row(teacher, student, train, args) -> Callable[[], float]:  # noqa: ANN001
    """torchdistill's own machinery, one epoch per call: a ``DistillationBox`` built by
    ``get_distillation_box`` from its training config (the equivalent of its sample KD
    YAML), with forward hooks on both models' last layers feeding its io dicts, its data
    loader (``BaseDatasetWrapper``, random sampler), its ``KDLoss`` inside a
    ``WeightedSumLoss`` and its SGD; driven as its example scripts drive it
    (``pre_epoch_process``, ``forward_process``, ``post_forward_process``). Same teacher (a
    copy), same student architecture and initial weights, data and batch size as our rows;
    T = 4, α = 0.9 (torchdistill's ``alpha`` weighs the CE term: 0.1)."""
    import copy

    from torch.utils.data import RandomSampler
    from torchdistill.core.distillation import get_distillation_box  # type: ignore[import-not-found]

    def last_layer(model: torch.nn.Module) -> str:
        return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]

    t_model, s_model = copy.deepcopy(teacher), copy.deepcopy(student)
    t_name, s_name = last_layer(t_model), last_layer(s_model)
    config = {
        "num_epochs": 1,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
            "kwargs": {"batch_size": args.batch_size, "num_workers": 0, "drop_last": False},
            "requires_supp": True,
        },
        "teacher": {
            "forward_proc": "forward_batch_only",
            "sequential": [],
            "forward_hook": {"input": [], "output": [t_name]},
            "requires_grad": False,
        },
        "student": {
            "forward_proc": "forward_batch_only",
            "adaptations": None,
            "sequential": [],
            "forward_hook": {"input": [], "output": [s_name]},
            "requires_grad": True,
            "frozen_modules": [],
        },
        "optimizer": {
            "key": "SGD",
            "kwargs": {"lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
        },
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {
                "sub_terms": {
                    "kd": {
                        "criterion": {
                            "key": "KDLoss",
                            "kwargs": {
                                "student_module_path": s_name,
                                "student_module_io": "output",
                                "teacher_module_path": t_name,
                                "teacher_module_io": "output",
                                "temperature": 4.0,
                                "alpha": 0.1,
                                "reduction": "batchmean",
                            },
                        },
                        "weight": 1.0,
                    }
                }
            },
        },
    }
    device = torch.device(args.device)
    box = get_distillation_box(
        t_model, s_model, {"train": train}, config, device, [], False, 1.0
    )

    def run() -> float:
        started = time.perf_counter()
        box.pre_epoch_process(epoch=0)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
        box.post_epoch_process()
        return time.perf_counter() - started

    return run


def fsp_table(device: torch.device, repeats: int) -> list[str]:
    rows = []
    for case in [(64, 32, 64, 16), (64, 16, 16, 32)]:
        n, c1, c2, hw = case

        def make(n: int = n, c1: int = c1, c2: int = c2, hw: int = hw) -> tuple[torch.Tensor, ...]:
            a = torch.randn(n, c1, hw, hw, device=device, requires_grad=True)
            b = torch.randn(n, c2, hw, hw, device=device, requires_grad=True)
            return a, b

        def ours(make: Callable = make) -> None:
            a, b = make()
            fsp_matrix(a, b).sum().backward()

        def broadcast(make: Callable = make) -> None:
            a, b = make()
            fsp_broadcast(a, b).sum().backward()

        ours(), broadcast()
        t_ours, t_broad, p_ours, p_broad = [], [], [], []
        for _ in range(repeats):
            s, p = measure(ours, device)
            t_ours.append(s)
            p_ours.append(p)
            s, p = measure(broadcast, device)
            t_broad.append(s)
            p_broad.append(p)
        a, b = statistics.median(t_ours), statistics.median(t_broad)
        rows.append(
            f"| N={n}, C={c1}/{c2}, {hw}×{hw} | {1e3 * a:.1f} | {1e3 * b:.1f} | {b / a:.0f}× "
            f"| {mib(max((p for p in p_ours if p is not None), default=None))} "
            f"| {mib(max((p for p in p_broad if p is not None), default=None))} |"
        )
    return rows


def dml_table(device: torch.device, repeats: int, batch: int, arch: str) -> list[str]:
    from distill.methods import DML

    torch.manual_seed(0)
    a, b = (
        create(arch, num_classes=10, in_channels=1).to(device),
        create(arch, num_classes=10, in_channels=1).to(device),
    )
    x = torch.randn(batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    dml = DML({"a": a, "b": b})
    opt_dml = torch.optim.SGD(dml.trainable_parameters(), lr=0.01)
    singles = [Supervised(a), Supervised(b)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.01) for m in (a, b)]

    def dml_step() -> None:
        for _ in range(10):
            loss = dml(x, y).loss
            opt_dml.zero_grad()
            loss.backward()
            opt_dml.step()

    def two_steps() -> None:
        for _ in range(10):
            for method, opt in zip(singles, opts, strict=True):
                loss = method(x, y).loss
                opt.zero_grad()
                loss.backward()
                opt.step()

    dml_step(), two_steps()
    t_dml, t_two = [], []
    for _ in range(repeats):
        t_dml.append(measure(dml_step, device)[0] / 10)
        t_two.append(measure(two_steps, device)[0] / 10)
    d, t = statistics.median(t_dml), statistics.median(t_two)
    return [
        f"| DML step, K = 2 (`{arch}` × 2) | {1e3 * d:.2f} | {d / t:.2f} |",
        f"| two single-model steps | {1e3 * t:.2f} | 1.00 |",
    ]


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads"


def replace_section(path: Path, begin: str, end: str, section: str, heading: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the part
    of ``path`` between those markers, or append it under ``heading`` if they are absent."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    section = section.rstrip("\n")
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head + section + tail
    else:
        text = (text.rstrip() or "# Benchmarks") + f"\n\n{heading}\n\n{section}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def write_section(path: Path, table: str) -> None:
    replace_section(path, BEGIN, END, table, "## Speed")


if __name__ == "__main__":
    main()
