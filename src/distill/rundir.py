"""The run folder (``--out``): which folders a run may write into, who holds one, where in it a
run may write, and its progress state (``progress.json``).

- A run writes only into a new or empty folder (but for a ``cache`` folder made in
  advance), or into one that holds a ``distill`` run (its ``progress.json``); a folder of
  other files is refused, so none of them is overwritten.
- While a run writes, it holds the folder's lock, ``.distill.lock``, which names its process;
  a second run into the folder is refused, naming that process, and the lock of a process
  that no longer runs is taken over.
- Every path a run writes is built by :meth:`RunFolder.path`, which refuses one that would
  leave the folder.
- Clean-ups only remove what a run itself made: its temporary files
  (:func:`distill.files.is_temporary`), its epoch checkpoints, the weights of stages that are
  trained again.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError
from .files import is_temporary

PROGRESS = "progress.json"
PROGRESS_FORMAT = "distill-progress/1"
LOCK = ".distill.lock"


class RunFolder:
    """The folder of one run.

    Args:
        root: the folder (``--out``).
        log: where one-line messages go.
    """

    def __init__(self, root: str | os.PathLike, log: Callable[[str], None] = print) -> None:
        self.root = Path(root)
        self.log = log
        self._lock_text: str | None = None

    def path(self, *parts: str) -> Path:
        """``root/parts...``; :class:`ConfigError` if it would lie outside the folder (an
        absolute part, or ``..``)."""
        path = self.root.joinpath(*parts)
        root = os.path.abspath(self.root)
        if os.path.commonpath([root, os.path.abspath(path)]) != root:
            raise ConfigError(
                f"{path}: would be written outside the run folder {self.root}; names in a "
                "recipe must be plain names, not paths"
            )
        return path

    # -- what the folder holds -----------------------------------------------------------

    def check_usable(self) -> None:
        """Refuse a file, or a folder that holds files but no run (nothing is written then)."""
        if self.root.exists() and not self.root.is_dir():
            raise ConfigError(f"--out {self.root}: exists and is not a folder")
        if not self.root.is_dir() or (self.root / PROGRESS).exists():
            return
        # A ``cache`` folder may be prepared in advance (a link to a larger disk, say).
        others = sorted(p.name for p in self.root.iterdir() if p.name not in (LOCK, "cache"))
        if others:
            listed = ", ".join(others[:3]) + (
                f" and {len(others) - 3} more" if len(others) > 3 else ""
            )
            raise ConfigError(
                f"--out {self.root}: holds files that are not a distill run ({listed}); choose "
                "a new or empty folder, so that none of them is overwritten"
            )

    def read_progress(self) -> dict[str, Any] | None:
        """The run's progress state, ``None`` when the folder holds no run yet.

        Raises:
            CheckpointError: ``progress.json`` cannot be read, or is not a run's progress; the
                message names the file and how to recover.
        """
        path = self.root / PROGRESS
        if not path.exists():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            problem = _progress_problem(state)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problem = " ".join(str(exc).split())[:120]
        if problem is not None:
            raise CheckpointError(
                f"{path} is damaged ({problem}), so the run cannot be resumed from it: restore "
                "the file, or move the folder away and start the run again"
            )
        return state

    def clean_temporaries(self) -> None:
        """Remove the temporary files of writes that a crash cut short (never whole, never
        needed); nothing else."""
        for path in sorted(self.root.rglob(".*.tmp"), reverse=True):
            if not is_temporary(path):
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    # -- the lock ------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the folder's lock (creating the folder).

        Raises:
            ConfigError: another process holds it; the message names it.
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"--out {self.root}: cannot write there ({exc.strerror}); choose a writable folder"
            ) from None
        path = self.root / LOCK
        mine = f"{os.getpid()} {socket.gethostname()}\n"
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over(path)
                continue
            except OSError as exc:
                raise ConfigError(
                    f"--out {self.root}: cannot write there ({exc.strerror}); choose a "
                    "writable folder"
                ) from None
            with os.fdopen(fd, "w") as f:
                f.write(mine)
            self._lock_text = mine
            return
        raise ConfigError(f"--out {self.root}: another run keeps taking its lock ({path})")

    def _take_over(self, path: Path) -> None:
        """Remove the lock at ``path`` if the process that took it no longer runs."""
        try:
            pid_text, _, host = path.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):
            pid, host = 0, ""  # cut short when it was written: nobody holds it
        if pid and host and host != socket.gethostname():
            raise ConfigError(
                f"--out {self.root}: in use by a distill run on {host} (pid {pid}); wait for "
                f"it to end, or delete {path} if no run uses the folder"
            )
        if pid and _running(pid):
            raise ConfigError(
                f"--out {self.root}: in use by another distill run (pid {pid}); wait for it to "
                "end or stop it, or choose another --out"
            )
        self.log(
            f"{self.root}: taking over the lock of a run that stopped without releasing it "
            f"(pid {pid or 'unknown'})"
        )
        path.unlink(missing_ok=True)

    def unlock(self) -> None:
        """Release the lock, if this process holds it."""
        if self._lock_text is None:
            return
        path = self.root / LOCK
        try:
            if path.read_text() == self._lock_text:
                path.unlink()
        except OSError:
            pass
        self._lock_text = None


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _progress_problem(state: Any) -> str | None:
    """What makes ``state`` not a run's progress (``None``: nothing)."""
    if not isinstance(state, dict) or state.get("format") != PROGRESS_FORMAT:
        return f"not a {PROGRESS_FORMAT} file"
    phases = state.get("phases")
    if not isinstance(phases, dict) or not isinstance(state.get("started", {}), dict):
        return "its phases are not a mapping"
    for key, record in phases.items():
        if not (
            isinstance(record, dict)
            and isinstance(record.get("history"), list)
            and all(isinstance(r, dict) for r in record["history"])
            and isinstance(record.get("seconds"), (int, float))
        ):
            return f"the record of phase {key!r} is incomplete"
    return None
