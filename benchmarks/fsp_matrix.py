"""FSP matrices: distill's batched matrix product against the broadcast formulation.

The broadcast formulation, found in public FSP code, multiplies ``[N, C1, 1, h·w]`` by
``[N, 1, C2, h·w]`` and averages the last dimension, so it materialises an
``[N, C1, C2, h·w]`` tensor; :func:`distill.losses.fsp_matrix` is one ``bmm`` and never does.
Both are timed on forward + backward (what a training step does) and their peak memory is
measured: on CPU (Linux) as the growth of the process's peak resident memory over the step, on
CUDA with ``torch.cuda.max_memory_allocated``.

    python benchmarks/fsp_matrix.py                 # CPU, prints a Markdown table
    python benchmarks/fsp_matrix.py --device cuda --large
    python benchmarks/fsp_matrix.py --markdown docs/fsp_matrix.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from distill.losses import fsp_matrix

# name -> (N, C1, H1, C2, H2): two maps of one FSP pair, square sizes.
CASES: dict[str, tuple[int, int, int, int, int]] = {
    "small (CPU test size)": (16, 16, 8, 32, 4),
    "CIFAR ResNet section 1": (64, 16, 32, 16, 32),
    "CIFAR ResNet 1 → 2 (pooled)": (64, 16, 32, 32, 16),
    "CIFAR ResNet 2 → 3 (pooled)": (64, 32, 16, 64, 8),
}
LARGE_CASES: dict[str, tuple[int, int, int, int, int]] = {
    "WRN-40-2 section 1, batch 128": (128, 32, 32, 32, 32),
    "ResNet32x4 section 1, batch 128": (128, 64, 32, 64, 32),
}


def fsp_broadcast(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """The broadcast formulation: an ``[N, C1, C2, h·w]`` product, then its mean."""
    h, w = min(first.shape[2], second.shape[2]), min(first.shape[3], second.shape[3])
    if first.shape[2:] != (h, w):
        first = F.adaptive_max_pool2d(first, (h, w))
    if second.shape[2:] != (h, w):
        second = F.adaptive_max_pool2d(second, (h, w))
    a = first.flatten(2).unsqueeze(2)  # [N, C1, 1, hw]
    b = second.flatten(2).unsqueeze(1)  # [N, 1, C2, hw]
    return (a * b).mean(dim=-1)


IMPLEMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "bmm": fsp_matrix,
    "broadcast": fsp_broadcast,
}


def make_inputs(case: tuple[int, ...], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    n, c1, h1, c2, h2 = case
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(n, c1, h1, h1, generator=generator).to(device).requires_grad_()
    second = torch.randn(n, c2, h2, h2, generator=generator).to(device).requires_grad_()
    return first, second


def step(name: str, first: torch.Tensor, second: torch.Tensor) -> None:
    first.grad = second.grad = None
    IMPLEMENTATIONS[name](first, second).sum().backward()


def seconds_per_step(name: str, case: tuple[int, ...], device: str, repeat: int) -> float:
    first, second = make_inputs(case, device)
    step(name, first, second)  # warm-up
    times = []
    for _ in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        step(name, first, second)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _status_bytes(key: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024  # reported in kB
    raise KeyError(key)


def peak_bytes(name: str, case: tuple[int, ...], device: str) -> int | None:
    """Extra peak memory of one forward + backward beyond the inputs (None: cannot measure)."""
    first, second = make_inputs(case, device)
    step(name, first, second)  # one-time allocations (kernels, caches) are not the method's
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(name, first, second)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    try:
        # Linux: writing 5 to clear_refs resets the peak resident size (VmHWM) to the current.
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
    except OSError:
        return None
    base = _status_bytes("VmRSS:")
    step(name, first, second)
    return max(0, _status_bytes("VmHWM:") - base)  # RSS may shrink during the step


def mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeat", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--large", action="store_true", help="add batch-128 cases (GBs)")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU available")

    if args.threads:
        torch.set_num_threads(args.threads)
    cases = {**CASES, **(LARGE_CASES if args.large else {})}
    where = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    lines = [
        f"FSP matrix, forward + backward, median of {args.repeat} steps; {where}; "
        f"torch {torch.__version__}.",
        "",
        "| case | N, C1×H1², C2×H2² | [N,C1,C2,hw] tensor | bmm time | broadcast time "
        "| speed-up | bmm peak | broadcast peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, case in cases.items():
        n, c1, h1, c2, h2 = case
        hw = min(h1, h2) ** 2
        times = {k: seconds_per_step(k, case, args.device, args.repeat) for k in IMPLEMENTATIONS}
        peaks = {k: peak_bytes(k, case, args.device) for k in IMPLEMENTATIONS}
        # The matrices agree (float32 sums in a different order).
        first, second = make_inputs(case, args.device)
        torch.testing.assert_close(
            fsp_matrix(first, second), fsp_broadcast(first, second), rtol=1e-4, atol=1e-5
        )
        lines.append(
            f"| {label} | {n}, {c1}×{h1}², {c2}×{h2}² | {mib(n * c1 * c2 * hw * 4)} "
            f"| {times['bmm'] * 1e3:.2f} ms | {times['broadcast'] * 1e3:.2f} ms "
            f"| {times['broadcast'] / times['bmm']:.0f}× | {mib(peaks['bmm'])} "
            f"| {mib(peaks['broadcast'])} |"
        )
        print(lines[-1] if len(lines) > 5 else "\n".join(lines), flush=True)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
