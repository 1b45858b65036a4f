"""Run ``distill cache build`` in this process and SIGKILL it at a chosen write (kill test).

Usage: python _store_kill_runner.py POINT N -- distill-arguments...
POINT is where the N-th event kills the process:
  data    after the N-th write of a data file (ids, log-probabilities, rest or counts)
  commit  after the N-th write of a batch's item rows (the commit of a whole batch)
  none    never (an uninterrupted build)
"""

from __future__ import annotations

import os
import signal
import sys

import distill.cache.offline as offline
from distill.cli import main


def install(point: str, n: int) -> None:
    count = {"n": 0}
    original = offline.ShardWriter._write

    def write(self, key, array):  # noqa: ANN001, ANN202
        original(self, key, array)
        event = "commit" if key == "items" else "data"
        if event == point:
            count["n"] += 1
            if count["n"] == n:
                os.kill(os.getpid(), signal.SIGKILL)

    offline.ShardWriter._write = write


if __name__ == "__main__":
    point, n = sys.argv[1], int(sys.argv[2])
    assert sys.argv[3] == "--"
    install(point, n)
    sys.exit(main(sys.argv[4:]))
