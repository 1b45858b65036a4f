"""Language models where the vocabulary dominates: seconds per step and peak memory of KD,
side by side in one process, against the student alone and TRL's GKDTrainer.

At the issue's shape (a 2-layer llama student with hidden size 256, a 4-layer teacher with
hidden size 512, a 32,000-token vocabulary, sequences of 512 tokens, batches of 4), every row
takes optimizer steps (AdamW) on the same batches of random token ids, from the same initial
student:

- student alone (cross-entropy);
- online KD, dense: the JSD (β = 0.5, T = 1) to the live teacher plus the CE term, α = 0.5;
- online KD, chunked: the same with ``chunk_tokens`` (the loss a chunk of tokens at a time);
- KD from the offline store: the teacher's top-k written once by ``distill cache build``'s
  code path, read back with ``teacher_logits`` (dense student logits), and the same chunked;
- TRL's ``GKDTrainer`` (``trl.experimental.gkd``), off-policy (``lmbda=0``, no generation),
  the same β, models and batches: its own ``training_step`` and optimizer step. TRL is not a
  dependency of distill; the row appears when ``trl`` is importable.

Rows are measured alternating (A, B, ..., then again) ``--repeats`` times; the table shows
medians. Peak memory is the growth of the process's peak resident memory over the row's steps
(reset before each row), or ``torch.cuda.max_memory_allocated`` on a GPU.

    python benchmarks/lm_speed.py                                  # about 15 minutes on 2 cores
    python benchmarks/lm_speed.py --markdown docs/benchmarks.md    # rewrite the lm-speed section
    python benchmarks/lm_speed.py --quick                          # a smaller shape, a smoke run

TRL in a separate folder (the repository's environment stays as it is), e.g.::

    pip install --target /tmp/trl-site --no-deps trl datasets pandas pyarrow dill \\
        multiprocess xxhash requests
    PYTHONPATH=/tmp/trl-site python benchmarks/lm_speed.py
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distill.cache.build import build_store
from distill.cache.offline import TeacherStore
from distill.data.collate import collate_text
from distill.data.text import TextData, TokenBlocks
from distill.methods import KD, Supervised
from distill.models import count_parameters, create
from distill.recipe import parse_recipe
from distill.teachers import Teacher

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fsp_matrix import mib  # noqa: E402
from speed import device_label, measure, replace_section  # noqa: E402

BEGIN, END = "<!-- lm-speed:begin -->", "<!-- lm-speed:end -->"
GPU_BEGIN, GPU_END = "<!-- lm-speed-gpu:begin -->", "<!-- lm-speed-gpu:end -->"
TEMPERATURE, ALPHA, BETA, LR = 1.0, 0.5, 0.5, 1e-4


def llama(hidden: int, layers: int, vocab: int, seq: int) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": seq,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
    }


def random_text(vocab: int, seq: int, items: int) -> TextData:
    """``items`` sequences of ``seq`` random token ids (a seeded stream), as a text set."""
    tokens = torch.randint(0, vocab, (items * seq,), generator=torch.Generator().manual_seed(0))
    blocks = TokenBlocks(tokens, torch.arange(items) * seq, torch.full((items,), seq))
    return TextData(
        name="random", train=blocks, val=blocks, test=None, tokenizer=None,
        collate=collate_text, vocab_size=vocab, pad_id=0, seq_len=seq,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--student", default="256x2", help="hidden x layers (256x2)")
    parser.add_argument("--teacher", default="512x4", help="hidden x layers (512x4)")
    parser.add_argument("--chunk", type=int, default=256, help="chunk_tokens (256)")
    parser.add_argument("--topk", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="vocab 4000, seq 128, 1 repeat")
    parser.add_argument("--markdown", type=Path, help="write the table into this file")
    parser.add_argument("--peak-row", type=int, help=argparse.SUPPRESS)  # one row's peak (child)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.vocab, args.seq, args.repeats = 4000, 128, 1
    device = torch.device(args.device)
    if args.peak_row is not None:
        print(f"PEAK {row_peak(args, device)}")
        return
    work = Path(tempfile.mkdtemp(prefix="lm-speed-"))
    started = time.perf_counter()
    rows, info = bench(args, device, work, build=True)
    build_seconds = time.perf_counter() - started
    for fn in rows.values():  # warm-up: allocator, kernels, the store's pages
        fn()
    times: dict[str, list[float]] = {k: [] for k in rows}
    for _ in range(args.repeats):
        for name, fn in rows.items():
            seconds, _ = measure(fn, device)
            times[name].append(seconds / args.steps)
            print(f"{name}: {seconds / args.steps:.3f} s/step", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    peak = peaks(rows, device, work)
    write_table(args, device, rows, med, peak, info, build_seconds)


def bench(
    args: argparse.Namespace, device: torch.device, work: Path, build: bool
) -> tuple[dict[str, Callable[[], None]], dict[str, Any]]:
    """The rows (each a function taking ``--steps`` steps on its own copy of the student),
    and what the table says about the models and the store. The models and batches are the
    same in every process (seeded); ``build`` writes the store under ``work`` (else it is
    read from there)."""
    (sh, sl), (th, tl) = (map(int, x.split("x")) for x in (args.student, args.teacher))
    student_config = llama(sh, sl, args.vocab, args.seq)
    teacher_config = llama(th, tl, args.vocab, args.seq)
    torch.manual_seed(0)
    teacher = create("hf:", config=teacher_config, task="causal_lm").to(device).eval()
    student = create("hf:", config=student_config, task="causal_lm").to(device)
    n_batches = 2
    data = random_text(args.vocab, args.seq, n_batches * args.batch)
    batches = [
        {k: v.to(device) for k, v in collate_text(
            [{**data.train[i], "index": torch.tensor(i)} for i in range(b, b + args.batch)]
        ).items()}
        for b in range(0, n_batches * args.batch, args.batch)
    ]
    if build:  # the offline store, written by the code of `distill cache build`, once
        torch.save(teacher.state_dict(), work / "teacher.pt")
        recipe = parse_recipe({
            "task": "causal_lm",
            "data": {"name": "python-stdlib", "seq_len": args.seq, "batch_size": args.batch},
            "models": {
                "teacher": {"arch": "hf:", "config": teacher_config,
                            "checkpoint": str(work / "teacher.pt")},
                "student": {"arch": "hf:", "config": student_config},
            },
            "stages": [{"method": "kd", "teacher": "teacher", "student": "student",
                        "temperature": TEMPERATURE, "alpha": ALPHA,
                        "loss": {"kind": "jsd", "beta": BETA}}],
        })
        build_store(recipe, "student", work / "store", topk=args.topk, data=data,
                    device=args.device, log=lambda _: None)
    store = TeacherStore(work / "store")

    def kd(teacher_: Any, model: torch.nn.Module, chunk: int | None = None) -> KD:
        return KD(teacher_, model, TEMPERATURE, ALPHA, loss="jsd", beta=BETA,
                  task="causal_lm", chunk_tokens=chunk)

    def stepper(make: Callable[[torch.nn.Module], Any]) -> Callable[[], None]:
        model = copy.deepcopy(student)
        method = make(model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
        state = {"i": 0}

        def run() -> None:
            for _ in range(args.steps):
                batch = batches[state["i"] % len(batches)]
                state["i"] += 1
                method(batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        return run

    from_store = Teacher(None, "causal_lm", store=store)
    rows: dict[str, Callable[[], None]] = {
        "student alone": stepper(lambda m: Supervised(m, task="causal_lm")),
        "online KD, dense": stepper(lambda m: kd(teacher, m)),
        f"online KD, chunked ({args.chunk} tokens)": stepper(lambda m: kd(teacher, m, args.chunk)),
        f"KD from the offline store (top-{args.topk})": stepper(lambda m: kd(from_store, m)),
        "KD from the offline store, chunked": stepper(lambda m: kd(from_store, m, args.chunk)),
    }
    info = {
        "student": f"llama {sh}×{sl} ({count_parameters(student):,} parameters)",
        "teacher": f"llama {th}×{tl} ({count_parameters(teacher):,} parameters)",
        "store": store,
        "trl": None,
    }
    try:
        rows["TRL GKDTrainer (lmbda = 0)"], info["trl"] = trl_row(
            teacher, student, batches, args, work
        )
    except ImportError as exc:
        print(f"no TRL row: {exc}")
    return rows, info


def write_table(
    args: argparse.Namespace, device: torch.device, rows: dict[str, Any], med: dict[str, float],
    peak: dict[str, int | None], info: dict[str, Any], build_seconds: float,
) -> None:
    names = list(rows)
    alone, dense, chunked, stored = names[0], names[1], names[2], names[3]
    trl = names[5] if len(names) > 5 else None
    store = info["store"]
    per_position = store.nbytes / store.positions
    dense_bytes = 2 * args.vocab
    gpu = device.type == "cuda"
    begin, end = (GPU_BEGIN, GPU_END) if gpu else (BEGIN, END)
    lines = [
        begin,
        f"Measured on {device_label(device)}, torch {torch.__version__}"
        + (f", TRL {info['trl']}" if info["trl"] else "")
        + f"; student {info['student']}, teacher {info['teacher']}, vocabulary "
        f"{args.vocab:,}, sequences of {args.seq} tokens, batches of {args.batch}; random token "
        f"ids; AdamW; median of {args.repeats} alternating repetitions of {args.steps} steps; "
        + (
            "peak memory: the most GPU memory allocated during one step above what was "
            "allocated before it (`torch.cuda.max_memory_allocated`)."
            if gpu
            else "peak memory: the growth of the resident memory over one step, in a fresh "
            "process."
        ),
        "",
        "| row | ms / step | × student alone | × TRL | peak memory | × dense KD's peak |",
        "|---|---|---|---|---|---|",
    ]
    for name in rows:
        vs_trl = f"{med[name] / med[trl]:.2f}" if trl else "—"
        vs_dense = (
            f"{peak[name] / peak[dense]:.2f}" if peak[name] is not None and peak[dense] else "—"
        )
        lines.append(
            f"| {name} | {1000 * med[name]:.1f} | {med[name] / med[alone]:.2f} | {vs_trl} "
            f"| {mib(peak[name])} | {vs_dense} |"
        )
    lines += [
        "",
        f"The store: {per_position:.0f} bytes per token at k = {args.topk} (int32 ids, float16 "
        f"log-probabilities, float32 rest, uint16 count, plus 16 bytes per sequence) against "
        f"{dense_bytes:,} for dense float16 logits: {100 * per_position / dense_bytes:.2f}%. "
        f"Building it (models, data, one teacher forward) took {build_seconds:.0f} s for "
        f"{store.positions:,} tokens.",
        "",
        "Targets:",
        "",
    ]
    lines += targets(med, peak, alone, dense, chunked, stored, trl, per_position / dense_bytes)
    lines += [
        "",
        "Regenerate: `PYTHONPATH=/tmp/trl-site python benchmarks/lm_speed.py "
        + ("--device cuda " if gpu else "")
        + "--markdown docs/benchmarks.md` (TRL installed under /tmp/trl-site as in the "
        "script's docstring).",
        end,
    ]
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        heading = "## Language models at scale" + (" on a GPU" if gpu else "")
        replace_section(args.markdown, begin, end, table, heading)


def peaks(
    rows: dict[str, Callable[[], None]], device: torch.device, work: Path
) -> dict[str, int | None]:
    """Peak memory of one step of each row: ``max_memory_allocated`` on a GPU; on the CPU,
    the growth of the peak resident memory over one step, each row in a fresh process (one
    process's freed memory stays resident and would hide the next row's peak)."""
    if device.type == "cuda":
        return {name: measure(fn, device)[1] for name, fn in rows.items()}
    found: dict[str, int | None] = {}
    for index, name in enumerate(rows):
        command = [sys.executable, *sys.argv, "--peak-row", str(index), "--work", str(work)]
        proc = subprocess.run(command, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("PEAK ")]
        found[name] = int(lines[-1].split()[1]) if lines and lines[-1] != "PEAK None" else None
        print(f"{name}: peak {mib(found[name])}", flush=True)
    return found


def row_peak(args: argparse.Namespace, device: torch.device) -> int | None:
    """In a child process: one warm-up step of row ``--peak-row``, then the peak growth of the
    resident memory over one more step. glibc's malloc serves every block over 128 KiB by
    ``mmap`` here (a fixed threshold), so freed tensors leave the process at once."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    args.steps = 1
    rows, _ = bench(args, device, args.work, build=False)
    fn = list(rows.values())[args.peak_row]
    fn()
    libc.malloc_trim(0)
    return measure(fn, device)[1]


def targets(
    med: dict[str, float], peak: dict[str, int | None], alone: str, dense: str, chunked: str,
    stored: str, trl: str | None, store_share: float,
) -> list[str]:
    """One line per target: the measured value, met or missed by how much."""

    def verdict(value: float, limit: float) -> str:
        if value <= limit:
            return "met"
        return f"**missed** by {100 * (value / limit - 1):.0f}%"

    out = [
        f"- KD from the offline store ≤ 1.15× the student alone: "
        f"{med[stored] / med[alone]:.2f}× ({verdict(med[stored] / med[alone], 1.15)}).",
    ]
    if trl is not None:
        ratio = med[dense] / med[trl]
        out.append(f"- online KD (dense) ≤ 1.0× TRL's step: {ratio:.2f}× ({verdict(ratio, 1.0)}).")
    else:
        out.append("- online KD ≤ 1.0× TRL's step: not measured (trl not importable).")
    if peak[chunked] is not None and peak[dense]:
        ratio = peak[chunked] / peak[dense]
        out.append(
            f"- chunked peak memory ≤ 0.35× dense: {ratio:.2f}× ({verdict(ratio, 0.35)})."
        )
    out.append(
        f"- store ≤ 1% of dense float16 bytes at k = 64: {100 * store_share:.2f}% "
        f"({verdict(store_share, 0.01)})."
    )
    return out


def trl_row(
    teacher: torch.nn.Module, student: torch.nn.Module, batches: list[dict[str, torch.Tensor]],
    args: argparse.Namespace, work: Path,
) -> tuple[Callable[[], None], str]:
    """TRL's GKDTrainer, off-policy: its ``training_step`` (the student and teacher forwards,
    its generalised JSD, the backward) and its optimizer's step, on the same batches."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pyarrow
        import trl
        from datasets import Dataset
        from datasets.table import InMemoryTable
        from trl.experimental.gkd import GKDConfig, GKDTrainer

    from distill.data.tokenizers import byte_tokenizer

    config = GKDConfig(
        output_dir=str(work / "trl"), lmbda=0.0, beta=BETA, temperature=TEMPERATURE,
        seq_kd=False, max_length=args.seq, per_device_train_batch_size=args.batch,
        learning_rate=LR, use_cpu=args.device == "cpu", report_to=[], disable_dropout=True,
        bf16=False, fp16=False, logging_strategy="no", save_strategy="no",
    )
    # A placeholder dataset (the trainer asks for one; the batches are ours), built with a
    # fingerprint of its own: hashing it needs pickling pyarrow types, which fails with some
    # pyarrow/dill pairs.
    chat = {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
    table = InMemoryTable(pyarrow.Table.from_pylist([chat] * args.batch))
    trainer = GKDTrainer(
        model=copy.deepcopy(student), teacher_model=teacher, args=config,
        train_dataset=Dataset(table, fingerprint="lm-speed"), processing_class=byte_tokenizer(),
    )
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # what train() sets before its steps
    state = {"i": 0}

    def run() -> None:
        for _ in range(args.steps):
            batch = batches[state["i"] % len(batches)]
            state["i"] += 1
            inputs = {k: v for k, v in batch.items() if k != "index"}
            trainer.training_step(trainer.model, inputs)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)

    return run, trl.__version__


if __name__ == "__main__":
    main()
