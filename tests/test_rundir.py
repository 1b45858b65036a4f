"""The run folder: paths that would leave it, folders of other files, the lock, and clean-ups
that touch only what a run made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.errors import CheckpointError, ConfigError
from distill.files import atomic_write_text, is_temporary
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe
from distill.rundir import LOCK, RunFolder


def one_stage(tiny_recipe: dict) -> dict:
    tiny_recipe["stages"] = tiny_recipe["stages"][:1]
    tiny_recipe["train"]["epochs"] = 1
    return tiny_recipe


@pytest.mark.parametrize(
    "parts",
    [("/etc", "passwd"), ("..", "x.pt"), ("checkpoints", "..", "..", "x"), ("models", "/tmp")],
)
def test_a_path_outside_the_folder_is_refused(tmp_path: Path, parts: tuple[str, ...]) -> None:
    folder = RunFolder(tmp_path / "run")
    with pytest.raises(ConfigError, match="outside the run folder"):
        folder.path(*parts)


def test_paths_inside_the_folder_are_given(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    assert folder.path("checkpoints", "a", "b.pt") == tmp_path / "run/checkpoints/a/b.pt"
    assert folder.path("models", "x", "..", "y") == tmp_path / "run/models/x/../y"


def test_a_folder_of_other_files_is_refused_and_left_alone(
    tmp_path: Path, tiny_recipe: dict
) -> None:
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    files = {
        "report.md": "my report",
        "recipe.yaml": "my recipe",
        "metrics.jsonl": "my metrics\n",
        "sub/.draft.abcdefgh.tmp": "mine too",
    }
    for name, content in files.items():
        (out / name).write_text(content)
    with pytest.raises(ConfigError, match="holds files that are not a distill run"):
        Pipeline(parse_recipe(one_stage(tiny_recipe)), out, progress=False).run()
    assert {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} == set(files)
    for name, content in files.items():
        assert (out / name).read_text() == content


def test_an_empty_folder_or_one_with_a_prepared_cache_is_used(
    tmp_path: Path, tiny_recipe: dict
) -> None:
    for name in ("empty", "cached"):
        out = tmp_path / name
        out.mkdir()
        if name == "cached":
            (tmp_path / "big-disk").mkdir()
            (out / "cache").symlink_to(tmp_path / "big-disk")
        Pipeline(parse_recipe(one_stage(tiny_recipe)), out, progress=False).run()
        assert (out / "summary.json").is_file()
        assert not (out / LOCK).exists(), "the lock is released at the end"


def test_a_lock_of_a_live_process_refuses_and_a_dead_ones_is_taken_over(
    tmp_path: Path, tiny_recipe: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LOCK).write_text(f"{live.pid} {os.uname().nodename}\n")
        with pytest.raises(ConfigError, match=rf"in use by another distill run \(pid {live.pid}\)"):
            Pipeline(parse_recipe(one_stage(tiny_recipe)), out, progress=False).run()
        assert (out / LOCK).read_text().startswith(str(live.pid)), "another's lock is kept"
    finally:
        live.kill()
        live.wait()
    # The same pid, now dead: a lock left by a killed run.
    Pipeline(parse_recipe(one_stage(tiny_recipe)), out, progress=False).run()
    assert f"taking over the lock of a run that stopped without releasing it (pid {live.pid})" in (
        capsys.readouterr().out
    )
    assert not (out / LOCK).exists()


def test_a_lock_from_another_machine_is_refused(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    (tmp_path / LOCK).write_text("12345 some-other-host\n")
    with pytest.raises(ConfigError, match="on some-other-host \\(pid 12345\\).*delete"):
        folder.lock()


def test_a_lock_cut_short_is_taken_over(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path, log=lambda _m: None)
    (tmp_path / LOCK).write_text("")
    folder.lock()
    assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())
    folder.unlock()
    assert not (tmp_path / LOCK).exists()


def test_clean_up_removes_only_the_runs_own_temporaries(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    ours = [
        tmp_path / ".progress.json.k2j_9x0a.tmp",
        tmp_path / "checkpoints/s/p/.epoch_0001.pt.abcdefgh.tmp",
    ]
    ours_dir = tmp_path / "models/.student.0123abcd.tmp"
    theirs = [
        tmp_path / ".notes.tmp",
        tmp_path / "draft.tmp",
        tmp_path / "sub/.x.ABCDEFGH.tmp",
        tmp_path / "sub/.x.abc.tmp",
    ]
    for path in [*ours, *theirs]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (ours_dir / "inside").mkdir(parents=True)
    assert all(is_temporary(p) for p in [*ours, ours_dir])
    assert not any(is_temporary(p) for p in theirs)
    folder.clean_temporaries()
    assert not any(p.exists() for p in [*ours, ours_dir])
    assert all(p.exists() for p in theirs)


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary(tmp_path: Path) -> None:
    class Boom(RuntimeError):
        pass

    def half_then_fail(f: object) -> None:
        f.write(b"half")  # type: ignore[attr-defined]
        raise Boom

    from distill.files import atomic_write_bytes

    atomic_write_text(tmp_path / "a.txt", "whole")
    with pytest.raises(Boom):
        atomic_write_bytes(tmp_path / "a.txt", half_then_fail)
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "whole"


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps({"format": "distill-progress/1", "phases": []}),
        json.dumps({"format": "distill-progress/1", "phases": {"a/b": {"history": 3}}}),
        json.dumps({"format": "something-else", "phases": {}}),
    ],
)
def test_damaged_progress_names_the_file_and_the_way_out(tmp_path: Path, content: str) -> None:
    (tmp_path / "progress.json").write_text(content)
    with pytest.raises(CheckpointError) as exc:
        RunFolder(tmp_path).read_progress()
    message = str(exc.value)
    assert "progress.json is damaged" in message and "restore the file" in message
    assert "\n" not in message
