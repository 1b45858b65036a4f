"""KD of a tiny llama student with every strategy and teacher placement, for the FSDP tests:
``torchrun --nproc_per_node 2 _fsdp_runner.py OUT``. Each process writes ``OUT/rank<R>.pt``:
per setting, where the models were (the trainer's ``placement``: bytes of parameters this
process held), the student's final weights and whether it is an ordinary module again; and the
student's initial weights."""

from __future__ import annotations

import copy
import os
import sys

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from distill import KD  # noqa: E402
from distill.config import TrainConfig  # noqa: E402
from distill.data.collate import collate_text  # noqa: E402
from distill.models.hf import create_hf  # noqa: E402
from distill.training import Trainer, get_accelerator  # noqa: E402

SETTINGS = [
    ("ddp", "replicate"),
    ("ddp", "shard"),
    ("fsdp", "shard"),
    ("fsdp", "replicate"),
    ("fsdp", "cpu_offload"),
]


def llama(hidden: int, layers: int) -> torch.nn.Module:
    config = {
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": 2, "num_key_value_heads": 1,
        "max_position_embeddings": 32, "vocab_size": 64,
    }
    return create_hf("", config=config, task="causal_lm")


def main(out: str) -> None:
    torch.manual_seed(0)
    teacher, student = llama(32, 2), llama(16, 2)
    generator = torch.Generator().manual_seed(1)
    data = []
    for i in range(16):
        ids = torch.randint(0, 64, (6 + i % 5,), generator=generator)
        data.append({"input_ids": ids, "labels": ids.clone()})
    found: dict = {"initial": {k: v.clone() for k, v in student.state_dict().items()}}
    for strategy, placement in SETTINGS:
        config = TrainConfig(
            epochs=1, optimizer={"name": "adamw", "lr": 0.01}, strategy=strategy,
            teacher_placement=placement,
        )
        trained = copy.deepcopy(student)
        method = KD(copy.deepcopy(teacher), trained, temperature=2.0, alpha=0.5, task="causal_lm")
        trainer = Trainer(
            config, task="causal_lm", batch_size=4, progress=False, device="cpu",
            collate=collate_text,
        )
        result = trainer.fit(method, data, None, {})
        found[f"{strategy}/{placement}"] = {
            "placement": result.placement,
            "weights": {k: v.clone() for k, v in trained.state_dict().items()},
            "plain": all(type(p) is torch.nn.Parameter for p in trained.parameters()),
            "class": type(trained).__name__,
        }
    rank = get_accelerator("cpu").process_index
    torch.save(found, os.path.join(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    main(sys.argv[1])
