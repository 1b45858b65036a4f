"""Memory and speed of KD on GPUs with each strategy and teacher placement (docs/distributed.md).

One launch trains the same KD phase (a llama student from a llama teacher, random tokens,
AdamW, bf16) with ``ddp``/``fsdp`` and each ``teacher_placement``, through distill's real
``Trainer``, and prints per setting: the parameter bytes each process held (teacher, student),
its peak GPU memory (``torch.cuda.max_memory_allocated``, the largest over processes) and
tokens per second over the whole job (after one warm-up epoch). It needs two GPUs or more::

    torchrun --nproc_per_node 2 benchmarks/fsdp.py                # about 2 minutes
    torchrun --nproc_per_node 8 benchmarks/fsdp.py --teacher-layers 32 --hidden 2048

Sizes are options (``--hidden``, ``--teacher-layers``, ``--student-layers``, ``--vocab``,
``--seq-len``, ``--batch-size`` per process); the defaults make a 0.4B teacher and a 0.1B
student. Nothing is downloaded: the models are freshly initialised. ``--device cpu`` runs
the same on CPU processes (no peak memory), to try the script at small sizes::

    OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/fsdp.py --device cpu \
        --hidden 64 --teacher-layers 2 --student-layers 1 --vocab 128 --seq-len 32 --steps 2
"""

from __future__ import annotations

import argparse
import copy

import torch

from distill import KD
from distill.config import TrainConfig
from distill.data.collate import collate_text
from distill.models import count_parameters
from distill.models.hf import create_hf
from distill.training import Trainer, get_accelerator

SETTINGS = [
    ("ddp", "replicate"),
    ("ddp", "shard"),
    ("fsdp", "replicate"),
    ("fsdp", "shard"),
    ("fsdp", "cpu_offload"),
]


def llama(hidden: int, layers: int, vocab: int, seq_len: int) -> torch.nn.Module:
    config = {
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": max(1, hidden // 64),
        "num_key_value_heads": max(1, hidden // 256), "max_position_embeddings": seq_len,
        "vocab_size": vocab,
    }
    return create_hf("", config=config, task="causal_lm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--teacher-layers", type=int, default=24)
    parser.add_argument("--student-layers", type=int, default=6)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per epoch")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    args = parser.parse_args()
    accelerator = get_accelerator(args.device)
    cuda = args.device == "cuda"
    processes = accelerator.num_processes
    torch.manual_seed(0)
    teacher = llama(args.hidden, args.teacher_layers, args.vocab, args.seq_len)
    student = llama(args.hidden // 2, args.student_layers, args.vocab, args.seq_len)
    size = args.steps * args.batch_size * processes
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (size, args.seq_len), generator=generator)
    data = [{"input_ids": row, "labels": row} for row in ids]
    rows = []
    for strategy, placement in SETTINGS:
        config = TrainConfig(
            epochs=2, optimizer={"name": "adamw", "lr": 1e-4}, precision="bf16",
            strategy=strategy, teacher_placement=placement,
        )
        method = KD(copy.deepcopy(teacher), copy.deepcopy(student), temperature=1.0,
                    alpha=0.5, task="causal_lm")
        trainer = Trainer(config, task="causal_lm", batch_size=args.batch_size, progress=False,
                          device=args.device, collate=collate_text)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            result = trainer.fit(method, data, None, {})
        except torch.OutOfMemoryError:  # the same on every process: each holds as much
            rows.append((strategy, placement, None, None, None))
            continue
        peak = torch.tensor([torch.cuda.max_memory_allocated() if cuda else 0.0],
                            device=accelerator.device)
        peak = accelerator.reduce(peak, reduction="max").item() if processes > 1 else peak.item()
        seconds = result.history[-1]["seconds"]  # the second epoch: warm
        tokens = size * (args.seq_len - 1) / seconds
        rows.append((strategy, placement, result.placement, peak, tokens))
    if accelerator.is_main_process:
        name = torch.cuda.get_device_name() if cuda else "CPU process"
        print(f"{processes} × {name}; teacher {count_parameters(teacher) / 1e6:.0f}M, student "
              f"{count_parameters(student) / 1e6:.0f}M parameters; bf16; batch "
              f"{args.batch_size} × {args.seq_len} tokens per process\n")
        print("| strategy | teacher | teacher GiB/process | student GiB/process "
              "| peak GiB/process | tokens/s |")
        print("|---|---|---|---|---|---|")
        gib = 2.0**30
        for strategy, placement, where, peak, tokens in rows:
            if where is None:
                print(f"| {strategy} | {placement} | | | out of memory | |")
                continue
            held = [where[n]["parameter_bytes"] / gib for n in ("teacher", "student")]
            print(f"| {strategy} | {placement} | {held[0]:.2f} | {held[1]:.2f} | "
                  f"{peak / gib if cuda else float('nan'):.2f} | {tokens:,.0f} |")


if __name__ == "__main__":
    main()
