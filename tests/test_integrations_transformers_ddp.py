"""DistillationTrainer on two processes (CPU, gloo, torch.distributed.run): the student is
wrapped in DDP, the teacher is not, and one step gives the gradient of the token mean over the
micro-batches of both processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import distill  # noqa: E402
from distill.data.collate import collate_text  # noqa: E402

TESTS = Path(__file__).resolve().parent
RUNNER = TESTS / "_hf_ddp_runner.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_gradient_of_the_whole_step(tmp_path: Path) -> None:
    from _hf_ddp_runner import LENGTHS
    from test_integrations_transformers import gradients_of, llama, sequences

    src = Path(distill.__file__).resolve().parents[1]
    path = os.pathsep.join([str(src), str(TESTS), os.environ.get("PYTHONPATH", "")])
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(RUNNER),
        str(tmp_path),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(tmp_path / "grads.pt", weights_only=True)
    assert saved["wrapped"] == "DistributedDataParallel"
    # 4 sequences of unequal token counts, 2 micro-batches of 1 on each process.
    teacher, student = llama(0), llama(1)
    method = distill.KD(teacher, student, temperature=2.0, alpha=0.5, task="causal_lm")
    expected = gradients_of(method(collate_text(sequences(LENGTHS, prompt={1: 4}))).loss, student)
    assert saved["grads"].keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(saved["grads"][name], grad, rtol=0, atol=1e-6, msg=name)
