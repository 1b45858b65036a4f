"""The offline teacher store: `distill cache build`, the memory-mapped format, a kd stage that
reads it (and never runs its teacher), resuming a killed build to the same bytes, one shard per
process under torchrun, and every kind of bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from distill.cache import TeacherCache
from distill.cache.offline import TeacherStore, bytes_per_position
from distill.cli import main
from distill.data import load
from distill.data.batches import as_item
from distill.errors import DataError
from distill.losses import topk_from_logits
from distill.models import create
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe
from distill.teachers import Teacher

pytest.importorskip("transformers")

RUNNER = Path(__file__).with_name("_store_kill_runner.py")
TEMPERATURE = 2.0


def llama(hidden: int, layers: int = 1) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A corpus, two teachers' weights and a byte tokenizer with one special token renamed."""
    root = tmp_path_factory.mktemp("store")
    corpus = root / "corpus"
    corpus.mkdir()
    text = Path(json.__file__).read_text()[:9000]
    for i in range(3):
        (corpus / f"part{i}.txt").write_text(text[i * 3000 : (i + 1) * 3000])
    paths = {"root": root, "corpus": corpus}
    for name, seed in (("teacher", 0), ("other_teacher", 1)):
        torch.manual_seed(seed)
        model = create("hf:", config=llama(32, 2), task="causal_lm", vocab_size=259)
        with torch.no_grad():  # a peaked teacher, as a trained one is
            model.lm_head.weight.mul_(20.0)
        paths[name] = root / f"{name}.pt"
        torch.save(model.state_dict(), paths[name])
    from distill.data.tokenizers import byte_tokenizer

    folder = root / "tokenizer"
    byte_tokenizer().save_pretrained(folder)
    for file in folder.iterdir():
        file.write_text(file.read_text().replace("<|pad|>", "<|padding|>"))
    paths["tokenizer"] = folder
    return paths


def recipe(setup: dict[str, Path], **stage: Any) -> dict[str, Any]:
    return {
        "seed": 0,
        "task": "causal_lm",
        "data": {
            "name": "text",
            "files": [str(setup["corpus"])],
            "seq_len": 32,
            "batch_size": 16,
            "split_by": "block",
        },
        "models": {
            "teacher": {"arch": "hf:", "config": llama(32, 2), "checkpoint": str(setup["teacher"])},
            "student_kd": {"arch": "hf:", "config": llama(16)},
        },
        "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 3.0e-3}},
        "stages": [
            {
                "method": "kd",
                "teacher": "teacher",
                "student": "student_kd",
                "temperature": TEMPERATURE,
                "alpha": 0.5,
                "loss": {"kind": "jsd", "beta": 0.5},
                **stage,
            }
        ],
    }


def write(raw: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def build(recipe_file: Path, out: Path, *extra: str) -> int:
    return main(["cache", "build", str(recipe_file), "--stage", "student_kd", "--out", str(out),
                 *extra])


@pytest.fixture(scope="module")
def build_yaml(setup: dict[str, Path]) -> Path:
    """The recipe the stores are built from."""
    return write(recipe(setup), setup["root"] / "build.yaml")


@pytest.fixture(scope="module")
def store(setup: dict[str, Path], build_yaml: Path) -> Path:
    """A store at k = 8, built once for the module."""
    out = setup["root"] / "store-k8"
    assert build(build_yaml, out, "--topk", "8") == 0
    return out


def files(store: Path) -> dict[str, bytes]:
    """Every data file of a store, by its path inside it."""
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.suffix not in (".json",)
    }


def teacher_topk(setup: dict[str, Path], k: int) -> tuple[dict[str, Any], Any]:
    """A training batch of the store's recipe and the teacher's top-k on it, from scratch."""
    parsed = parse_recipe(recipe(setup))
    data = load(parsed.data, seed=0)
    batch = data.collate([as_item(data.train[i], i) for i in (0, 5, len(data.train) - 1)])
    teacher = create("hf:", config=llama(32, 2), task="causal_lm", vocab_size=259)
    teacher.load_state_dict(torch.load(setup["teacher"], weights_only=True))
    logits = Teacher(teacher, "causal_lm").compute(batch)
    return batch, topk_from_logits(logits, k, TEMPERATURE)


def test_store_holds_the_teachers_topk_per_token(setup: dict[str, Path], store: Path) -> None:
    manifest = json.loads((store / "manifest.json").read_text())
    assert manifest["complete"] and manifest["topk"] == 8 and manifest["classes"] == 259
    assert manifest["temperature"] == TEMPERATURE and manifest["logprob_dtype"] == "float16"
    assert set(manifest["identity"]) >= {"teacher", "tokenizer", "data", "temperature"}
    batch, want = teacher_topk(setup, 8)
    opened = TeacherStore(store)
    got = opened.lookup(batch)
    mask = batch["labels"][:, 1:] != -100
    assert got.ids.shape == (3, batch["input_ids"].shape[1] - 1, 8)
    assert torch.equal(got.ids[mask], want.ids[mask])
    assert torch.allclose(got.logprobs[mask], want.logprobs[mask], atol=1e-2, rtol=1e-3)
    assert torch.allclose(got.rest[mask], want.rest[mask], atol=1e-5)
    # Bytes: ids int32 + float16 log-probabilities per kept id, rest + count per position, and
    # 16 bytes per item; against dense float16 logits.
    items = manifest["items"]
    assert opened.nbytes == manifest["positions"] * bytes_per_position(8) + 16 * (items + 1)
    assert bytes_per_position(64) / (2 * 32000) < 0.01


def test_only_loss_positions_are_stored_and_the_others_are_placeholders(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    """Prompt/completion records: prompts and padding take no loss and are not stored."""
    folder = tmp_path / "jsonl"
    folder.mkdir()
    records = [
        {"prompt": "x = " * (1 + i % 5), "completion": f"{i} + {i} * 2" * (1 + i % 3)}
        for i in range(40)
    ]
    (folder / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    raw = recipe(setup)
    raw["data"] = {"name": "jsonl", "files": [str(folder)], "seq_len": 48, "batch_size": 8}
    out = tmp_path / "store"
    assert build(write(raw, tmp_path / "r.yaml"), out, "--topk", "4") == 0
    parsed = parse_recipe(raw)
    data = load(parsed.data, seed=0)
    batch = data.collate([as_item(data.train[i], i) for i in range(6)])
    teacher = create("hf:", config=llama(32, 2), task="causal_lm", vocab_size=259)
    teacher.load_state_dict(torch.load(setup["teacher"], weights_only=True))
    want = topk_from_logits(Teacher(teacher, "causal_lm").compute(batch), 4, TEMPERATURE)
    store = TeacherStore(out)
    got = store.lookup(batch)
    mask = batch["labels"][:, 1:] != -100
    assert store.positions == sum(
        int((data.train[i]["labels"][1:] != -100).sum()) for i in range(len(data.train))
    )
    assert torch.equal(got.ids[mask], want.ids[mask])
    assert torch.allclose(got.logprobs[mask], want.logprobs[mask], atol=1e-2, rtol=1e-3)
    assert torch.allclose(got.rest[mask], want.rest[mask], atol=1e-5)
    assert (~mask).any()  # prompts and padding: a valid distribution that the mask leaves out
    total = got.logprobs[~mask].exp().sum(-1) + got.rest[~mask].exp()
    assert torch.allclose(total, torch.ones_like(total))


def test_top_p_keeps_the_fewest_ids_that_reach_p(setup: dict[str, Path], build_yaml: Path) -> None:
    out = setup["root"] / "store-top-p"
    assert build(build_yaml, out, "--topk", "8", "--top-p", "0.3") == 0
    batch, want = teacher_topk(setup, 8)
    got = TeacherStore(out).lookup(batch)
    mask = batch["labels"][:, 1:] != -100
    kept = got.logprobs[mask] > -math.inf
    counts = kept.sum(-1)
    assert counts.min() >= 1 and counts.max() <= 8 and counts.float().mean() < 8
    for row, c in enumerate(counts.tolist()):
        full = want.logprobs[mask][row].exp()
        assert full[:c].sum() >= 0.3 - 1e-3 or c == 8  # reaches p ...
        assert c == 1 or full[: c - 1].sum() < 0.3 + 1e-3  # ... with no id to spare
        rest = torch.log1p(-full[:c].sum()) if c < 8 else None
        if rest is not None:
            assert torch.isclose(got.rest[mask][row], rest, atol=1e-3)


def test_a_stage_reading_the_store_never_runs_the_teacher(
    setup: dict[str, Path], store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the teacher ran")

    monkeypatch.setattr(Teacher, "compute", refuse)
    monkeypatch.setattr(Teacher, "hidden", refuse)
    raw = recipe(setup, teacher_logits=str(store), chunk_tokens=100)
    pipeline = Pipeline(parse_recipe(raw), tmp_path / "run", progress=False)
    summary = pipeline.run()
    assert summary["stages"][0]["teacher_logits"] == str(store)
    assert math.isfinite(summary["models"]["student_kd"]["val_loss"])


def test_store_at_full_vocabulary_reproduces_the_online_run(
    setup: dict[str, Path], build_yaml: Path, tmp_path: Path
) -> None:
    out = tmp_path / "store-v"
    assert build(build_yaml, out, "--topk", "259") == 0
    online = Pipeline(parse_recipe(recipe(setup)), tmp_path / "online", progress=False).run()
    raw = recipe(setup, teacher_logits=str(out))
    offline = Pipeline(parse_recipe(raw), tmp_path / "offline", progress=False).run()
    a, b = (s["models"]["student_kd"]["val_loss"] for s in (online, offline))
    assert abs(a - b) < 2e-3 * a  # float16 log-probabilities: within noise, not bit for bit


def test_a_killed_build_resumes_to_the_same_bytes(
    setup: dict[str, Path], build_yaml: Path, store: Path, tmp_path: Path
) -> None:
    """Killed in the middle of a batch's data (after the 6th data file write: the second
    batch's log-probabilities), then, resumed, right after its second batch's commit; the third
    run finishes. The files are those of the uninterrupted build."""
    out = tmp_path / "store"
    args = ["cache", "build", str(build_yaml), "--stage", "student_kd",
            "--out", str(out), "--topk", "8"]
    env = dict(os.environ, OMP_NUM_THREADS="1")

    def launch(point: str, n: int) -> subprocess.CompletedProcess:
        command = [sys.executable, str(RUNNER), point, str(n), "--", *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)

    for point, n, kept in [("data", 6, None), ("commit", 2, 16)]:
        killed = launch(point, n)
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        if kept is not None:  # the first batch was whole; the second one's data is dropped
            assert f"resuming after {kept} items" in killed.stdout
        assert not json.loads((out / "manifest.json").read_text())["complete"]
        with pytest.raises(DataError, match="unfinished build"):
            TeacherStore(out)
    resumed = launch("none", 0)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after 48 items" in resumed.stdout  # one batch, then two more
    assert files(out) == files(store)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_two_shards_joined_by_the_manifest(
    setup: dict[str, Path], build_yaml: Path, store: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sharded"
    command = [*TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "distill.cli", "cache", "build",
               str(build_yaml), "--stage", "student_kd", "--out", str(out),
               "--topk", "8"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["name"] for s in manifest["shards"]] == [
        "shard-00000-of-00002", "shard-00001-of-00002"
    ]
    (a0, a1), (b0, b1) = (s["items"] for s in manifest["shards"])
    assert a0 == 0 and a1 == b0 and b1 == manifest["items"]
    one, two = TeacherStore(store), TeacherStore(out)
    assert two.positions == one.positions
    for i in range(one.items):
        x, y = one.item(i), two.item(i)
        assert (x[0] == y[0]).mean() > 0.99  # ids (a near tie may swap)
        assert abs(x[2] - y[2]).max() < 1e-3  # rest


# --- bad input --------------------------------------------------------------------------------


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill: error:") and len(err.splitlines()) == 1, err
    return err


def train_with(
    setup: dict[str, Path], tmp_path: Path, store: Path, change: Any = None, **stage: Any
) -> list[str]:
    raw = recipe(setup, teacher_logits=str(store), **stage)
    if change is not None:
        change(raw)
    name = f"{store.name}-{len(list(tmp_path.glob('*.yaml')))}"
    return ["run", str(write(raw, tmp_path / f"{name}.yaml")), "--out",
            str(tmp_path / f"run-{name}"), "--quiet"]


@pytest.mark.parametrize(
    ("change", "stage", "expected"),
    [
        (lambda r: r["models"]["teacher"].update(checkpoint=r["models"]["teacher"]["checkpoint"]
                                                 .replace("teacher.pt", "other_teacher.pt")),
         {}, ["built for another teacher (store"]),
        (lambda r: r["data"].update(seq_len=24), {}, ["built for another data (store"]),
        (None, {"temperature": 1.0}, ["another temperature (store 2.0, stage 1.0)"]),
        (None, {"teacher_precision": "bf16"}, ["teacher precision (store fp32, stage bf16)"]),
        (None, {"chunk_tokens": 0}, ["chunk_tokens", "greater than or equal to 1"]),
        (None, {"cache": "teacher"}, ["teacher_logits and cache: teacher", "keep one"]),
    ],
)
def test_a_store_that_does_not_fit_the_stage_is_refused(
    setup: dict[str, Path], store: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
    change: Any, stage: dict[str, Any], expected: list[str],
) -> None:
    err = run_cli(train_with(setup, tmp_path, store, change, **stage), capsys)
    for part in expected:
        assert part in err, err
    assert not list(tmp_path.glob("run-*/summary.json"))


def test_a_store_of_another_tokenizer_is_refused(
    setup: dict[str, Path], store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = train_with(
        setup, tmp_path, store, lambda r: r["data"].update(tokenizer=str(setup["tokenizer"]))
    )
    err = run_cli(args, capsys)
    assert "built for another tokenizer (store" in err and "data (store" not in err
    assert "rebuild it: distill cache build" in err


def test_a_truncated_shard_is_named_and_the_build_repairs_it(
    setup: dict[str, Path], build_yaml: Path, store: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    ids = copy / "shard-00000-of-00001" / "ids.i32"
    ids.write_bytes(ids.read_bytes()[:1000])
    err = run_cli(train_with(setup, tmp_path, copy), capsys)
    assert "shard shard-00000-of-00001 is truncated: ids.i32 has 1,000 bytes" in err
    assert build(build_yaml, copy, "--topk", "8") == 0
    assert files(copy) == files(store)


def test_a_store_path_that_is_not_a_store_is_refused(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("hello")
    assert "is a file, not a teacher store" in run_cli(train_with(setup, tmp_path, file), capsys)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": "something else"}))
    err = run_cli(train_with(setup, tmp_path, folder), capsys)
    assert "not a teacher store manifest" in err and "'something else'" in err
    missing = tmp_path / "missing"
    assert "not found" in run_cli(train_with(setup, tmp_path, missing), capsys)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--topk", "0"], "--topk must be an integer from 1 to the vocabulary size, got 0"),
        (["--topk", "260"], "--topk must be an integer from 1 to the vocabulary size 259"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
        (["--dtype", "int8"], "--dtype must be one of float16, bfloat16"),
        (["--stage", "nope"], "--stage: no stage 'nope'"),
    ],
)
def test_bad_build_options(
    build_yaml: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
    expected: str,
) -> None:
    base = ["cache", "build", str(build_yaml), "--out", str(tmp_path / "s")]
    if "--stage" not in args:
        base += ["--stage", "student_kd"]
    assert expected in run_cli(base + args, capsys)


def test_build_refuses_an_out_that_holds_something_else(
    build_yaml: Path, store: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    assert "is a file" in run_cli(
        ["cache", "build", str(build_yaml), "--stage", "student_kd",
         "--out", str(file)], capsys)
    err = run_cli(
        ["cache", "build", str(build_yaml), "--stage", "student_kd",
         "--out", str(store), "--topk", "4"], capsys)
    assert "holds a store of another build (topk (store 8, now 4))" in err
    # The finished store is left as it is when asked for again.
    before = files(store)
    assert build(build_yaml, store, "--topk", "8") == 0
    assert files(store) == before


def test_build_refuses_a_teacher_trained_later_in_the_recipe(
    setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = recipe(setup)
    del raw["models"]["teacher"]["checkpoint"]
    raw["stages"].insert(0, {"method": "train", "model": "teacher"})
    err = run_cli(["cache", "build", str(write(raw, tmp_path / "r.yaml")), "--stage",
                   "student_kd", "--out", str(tmp_path / "s")], capsys)
    assert "is trained by stage 'teacher' of this recipe" in err
    assert "--set models.teacher.checkpoint=" in err
    err = run_cli(["cache", "build", str(write(raw, tmp_path / "r.yaml")), "--stage",
                   "teacher", "--out", str(tmp_path / "s")], capsys)
    assert "a train stage does not read a teacher store" in err


def test_the_online_cache_is_still_importable_from_distill_cache() -> None:
    assert TeacherCache.__module__ == "distill.cache.online"
