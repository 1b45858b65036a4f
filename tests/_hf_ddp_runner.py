"""DistillationTrainer for one optimizer step of KD on tiny llamas, as the multi-process test
runs it: ``torchrun --nproc_per_node 2 _hf_ddp_runner.py OUT`` (or plain ``python`` for one
process). The main process saves the student's gradients of that step to ``OUT/grads.pt``."""

from __future__ import annotations

import os
import sys

import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

from test_integrations_transformers import (  # noqa: E402
    Gradients,
    arguments,
    llama,
    sequences,
)

import distill  # noqa: E402
from distill.data.collate import collate_text  # noqa: E402
from distill.integrations.transformers import DistillationTrainer  # noqa: E402

LENGTHS = [3, 11, 6, 14]


def main(out: str) -> None:
    teacher, student = llama(0), llama(1)
    method = distill.KD(teacher, student, temperature=2.0, alpha=0.5, task="causal_lm")
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    grab = Gradients()
    trainer = DistillationTrainer(
        method,
        args=arguments(
            out,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=len(LENGTHS) // processes,
            max_grad_norm=0.0,
        ),
        train_dataset=sequences(LENGTHS, prompt={1: 4}),
        data_collator=collate_text,
        callbacks=[grab],
    )
    trainer.train()
    wrapped = type(trainer.model_wrapped).__name__
    if trainer.accelerator.is_main_process:
        torch.save({"grads": grab.grads, "wrapped": wrapped}, os.path.join(out, "grads.pt"))
    # Leave together, with the process group torn down: a process that exits while gloo's
    # threads still run is aborted ("terminate called without an active exception").
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
