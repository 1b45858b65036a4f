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
    try:
        import torchdistill  # noqa: F401

        rows["torchdistill KD loop"] = torchdistill_row(teacher, student, train, args)
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
    floor = alone + med["teacher forward only"]

    fsp_rows = fsp_table(device, args.repeats)
    dml_rows = dml_table(device, args.repeats, args.batch_size, args.student)

    label = device_label(device)
    lines = [
        BEGIN,
        f"Measured on {label}, torch {torch.__version__}; teacher `{args.teacher}` "
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
        + (" --compile" if args.compile else ""),
        END,
    ]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        write_section(args.markdown, table)


def torchdistill_row(teacher, student, train, args) -> Callable[[], float]:  # noqa: ANN001
    """torchdistill's KD loss module in a plain loop on the same models and data."""
    from torchdistill.losses.mid_level import KDLoss  # type: ignore[import-not-found]

    criterion = KDLoss(
        student_module_path="student", teacher_module_path="teacher", temperature=4.0, alpha=0.9
    )

    def run() -> float:
        optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
        started = time.perf_counter()
        for x, y in DataLoader(train, batch_size=args.batch_size, shuffle=True):
            with torch.no_grad():
                t = teacher(x)
            s = student(x)
            loss = criterion({"student": {"output": s}, "teacher": {"output": t}}, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
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
