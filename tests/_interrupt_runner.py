"""Run ``distill run`` in this process and SIGKILL it at a chosen point (for the kill test).

Usage: python _interrupt_runner.py POINT N -- distill-run-arguments...
POINT is where the N-th event kills the process:
  step   N-th training step (inside an epoch)
  epoch  after the N-th epoch's metrics line (between epochs)
  stage  after the N-th model checkpoint at a stage's end (between stages)
  write  halfway through the N-th atomic checkpoint write
  none   never (an uninterrupted run)
"""

from __future__ import annotations

import os
import signal
import sys

import distill.files as checkpoint
import distill.methods.base as base
import distill.pipeline as pipeline
from distill.cli import main


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def counter(n: int):  # noqa: ANN201
    count = {"n": 0}

    def tick() -> bool:
        count["n"] += 1
        return count["n"] == n

    return tick


def install(point: str, n: int) -> None:
    tick = counter(n)
    if point == "step":
        original_init = base.Output.__init__

        def init(self, *args, **kwargs):  # noqa: ANN001, ANN202
            original_init(self, *args, **kwargs)
            if tick():
                kill()

        base.Output.__init__ = init
    elif point == "epoch":
        original_append = pipeline.Pipeline._append_metrics

        def append(self, *args, **kwargs):  # noqa: ANN001, ANN202
            original_append(self, *args, **kwargs)
            if tick():
                kill()

        pipeline.Pipeline._append_metrics = append
    elif point == "stage":
        original_save_model = pipeline.save_model

        def save_model(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            original_save_model(*args, **kwargs)
            if tick():
                kill()

        pipeline.save_model = save_model
    elif point == "write":
        original_write = checkpoint.atomic_write_bytes

        def write(path, fill):  # noqa: ANN001, ANN202
            if not tick():
                return original_write(path, fill)

            def half_then_die(f):  # noqa: ANN001, ANN202
                import io

                buffer = io.BytesIO()
                fill(buffer)
                data = buffer.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                kill()

            return original_write(path, half_then_die)

        checkpoint.atomic_write_bytes = write
    elif point != "none":
        raise SystemExit(f"unknown point {point}")


if __name__ == "__main__":
    point, n = sys.argv[1], int(sys.argv[2])
    install(point, n)
    sys.exit(main(sys.argv[4:]))
