"""Crash-safe files.

Every write goes to a temporary file in the same directory, is flushed and fsynced, then
renamed over the target, so a file on disk is always whole. Loading uses
``torch.load(weights_only=True)``: a checkpoint can never run code.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, DiskFullError

#: The names of the temporary files and folders of :func:`atomic_write_bytes` and
#: :func:`write_folder`: ``.NAME.XXXXXXXX.tmp`` (8 random characters).
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def is_temporary(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as this module's temporary files are (so a clean-up after a
    crash removes those, and nothing of anyone else's)."""
    return _TEMPORARY.fullmatch(Path(path).name) is not None


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` durable (fsync the directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, write: Any) -> None:
    """Write a file atomically: ``write(fileobj)`` fills a temporary file that then replaces
    ``path``."""
    path = Path(path)
    with disk_full_said(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


@contextlib.contextmanager
def disk_full_said(path: Path) -> Iterator[None]:
    """Turn "no space left on device" (or a full quota) while writing ``path`` into a
    :class:`~distill.errors.DiskFullError` that names it."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or isinstance(exc, DiskFullError):
            raise
        raise DiskFullError(
            f"no space left on device while writing {path}; nothing of that write is kept and "
            "the files written before it are whole: free some space",
        ) from exc


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` atomically."""
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to ``path`` atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON to ``path`` atomically (indented, UTF-8)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def safe_load(path: str | os.PathLike) -> Any:
    """Load a checkpoint with ``weights_only=True``; a missing or damaged file raises
    :class:`CheckpointError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, pickled code...
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({load_problem(exc)}); it may be truncated or "
            "not a distill checkpoint"
        ) from exc


def load_problem(exc: BaseException) -> str:
    """One line for why ``torch.load(weights_only=True)`` refused a file: the point of torch's
    long refusal of pickled code is kept ("refused: the file would need to run code to load",
    and which code)."""
    text = " ".join(str(exc).split())
    if "Weights only load failed" in text:
        named = re.search(r"GLOBAL (\S+)", text)
        code = f" ({named.group(1)})" if named else ""
        return f"refused: the file would need to run code to load{code}"
    return f"{type(exc).__name__}: {text[:200]}"


def _fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` (and the folders themselves) to disk."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def write_folder(target: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Write a folder whole or not at all: ``fill(staging)`` writes its files into a hidden
    sibling folder (``.NAME.*.tmp``), which, once flushed to disk, is renamed to ``target``.

    An existing ``target`` is first renamed aside (``.NAME.*.old``), the new folder renamed
    into place, then the old one deleted; a crash between those renames leaves ``target``
    missing (never half-written) and the old copy beside it. If ``fill`` or a rename fails,
    the staging folder is removed and an old ``target`` is put back.
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    # mkdir (not mkdtemp, which makes it private to the owner) so the umask applies as usual.
    staging = parent / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    staging.mkdir()
    old: Path | None = None
    try:
        with disk_full_said(target):
            fill(staging)
            _fsync_tree(staging)
        if target.exists():
            old = parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
            os.rename(target, old)
        os.rename(staging, target)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and old.exists() and not target.exists():
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
