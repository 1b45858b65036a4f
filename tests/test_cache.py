"""The teacher-output cache: exact reuse, views, fingerprints, disk persistence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from distill.cache import CacheSettings, TeacherCache, ViewDataset
from distill.data import load_data
from distill.errors import ConfigError
from distill.methods import KD
from distill.models import create
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe
from distill.teachers import Teacher


def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    teacher = create("cnn-4", num_classes=10, in_channels=1)
    return teacher, create("cnn-2", num_classes=10, in_channels=1)


@pytest.mark.parametrize("augment", ["none", "standard"])
def test_cached_and_online_give_the_same_loss(augment: str) -> None:
    data = load_data("digits", subset=64, augment=augment)
    views = ViewDataset(data.train, views=3, seed=0)
    teacher, student = models()
    online = KD(teacher, student)
    store = TeacherCache(len(views) * views.views, 10, "fp", CacheSettings(views=3))
    cached = KD(Teacher(teacher, store=store), student)
    items = [views[i] for i in range(16)]
    batch = default_collate(items)
    online.eval()
    cached.eval()
    first = cached(batch)  # fills
    calls = cached.teacher.calls
    second = cached(batch)  # reads
    assert cached.teacher.calls == calls, "a filled batch never calls the teacher"
    want = online(batch)
    assert torch.allclose(first.loss, want.loss, rtol=1e-5)
    assert torch.allclose(second.loss, want.loss, rtol=2e-3), "float16 storage"
    # The stored output is for exactly the view the student sees: rebuilding the view from
    # its index and view number gives the same image.
    for item in items[:4]:
        again = views.view(item["index"], item["view"])
        assert torch.equal(item["inputs"], again["inputs"])


def test_views_are_reproducible_and_vary_across_epochs() -> None:
    data = load_data("digits", subset=40, augment="standard")
    views = ViewDataset(data.train, views=4, seed=3)
    a = views[5]
    assert torch.equal(a["inputs"], views[5]["inputs"]) and a["index"] == 5
    chosen = set()
    for epoch in range(12):
        views.set_epoch(epoch)
        chosen.add(views[5]["view"])
    assert len(chosen) > 1, "different epochs use different views"
    distinct = {views.view(5, v)["inputs"].sum().item() for v in range(4)}
    assert len(distinct) > 1
    plain = ViewDataset(load_data("digits", subset=40).train, views=4)
    assert plain.views == 1, "without augmentation there is one view"


def test_cache_holds_per_token_outputs_of_any_shape() -> None:
    """A causal LM's outputs are [L - 1, V] per sample; top-k keeps k along the vocabulary."""
    torch.manual_seed(0)
    logits = torch.randn(6, 5, 12) * 3
    batch = {"index": torch.arange(6), "input_ids": torch.zeros(6, 6, dtype=torch.long)}
    calls = []

    def compute(sub: dict) -> torch.Tensor:
        calls.append(sub["index"].tolist())
        return logits[sub["index"]]

    dense = TeacherCache(6, (5, 12), "fp", CacheSettings(dtype="float32"))
    assert torch.equal(dense.lookup(batch, compute), logits)
    assert torch.equal(dense.lookup(batch, compute), logits) and calls == [list(range(6))]
    topk = TeacherCache(6, (5, 12), "fp", CacheSettings(dtype="float32", topk=4), temperature=2.0)
    rebuilt = torch.softmax(topk.lookup(batch, compute) / 2.0, dim=-1)
    exact = torch.softmax(logits / 2.0, dim=-1).topk(4, dim=-1)
    assert torch.allclose(rebuilt.gather(-1, exact.indices), exact.values, atol=1e-6)
    assert torch.allclose(rebuilt.sum(-1), torch.ones(6, 5), atol=1e-6)


def test_topk_keeps_the_top_probabilities_and_spreads_the_rest() -> None:
    torch.manual_seed(0)
    logits = torch.randn(5, 10) * 3
    T = 2.0
    cache = TeacherCache(5, 10, "fp", CacheSettings(dtype="float32", topk=3), temperature=T)
    keys = torch.arange(5)
    cache.put(keys, logits)
    rebuilt = torch.softmax(cache.get(keys, torch.device("cpu")) / T, dim=-1)
    exact = torch.softmax(logits / T, dim=-1)
    top = exact.topk(3, dim=-1)
    assert torch.allclose(rebuilt.gather(1, top.indices), top.values, atol=1e-6)
    assert torch.allclose(rebuilt.sum(-1), torch.ones(5), atol=1e-6)
    rest = (1 - top.values.sum(-1)) / 7
    mask = torch.ones_like(exact, dtype=torch.bool).scatter_(1, top.indices, False)
    assert torch.allclose(rebuilt[mask].view(5, 7), rest[:, None].expand(5, 7), atol=1e-6)
    assert cache.nbytes < TeacherCache(5, 10, "fp", CacheSettings(dtype="float32")).nbytes * 2


def recipe(tmp_path: Path, **stage: object) -> dict:
    return {
        "seed": 0,
        "data": {"name": "digits", "subset": 120, "batch_size": 32},
        "models": {"teacher": {"arch": "cnn-4"}, "student": {"arch": "cnn-2"}},
        "train": {"epochs": 3, "optimizer": {"lr": 0.05}},
        "stages": [
            {"method": "train", "model": "teacher", "epochs": 1},
            {
                "method": "kd",
                "teacher": "teacher",
                "student": "student",
                "cache": "teacher",
                "cache_store": "disk",
                **stage,
            },
        ],
    }


class Crash(RuntimeError):
    pass


def test_disk_cache_survives_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = recipe(tmp_path)
    out = tmp_path / "run"
    original = Pipeline._append_metrics
    count = {"n": 0}

    def crash_after_first_kd_epoch(self, stage, *args, **kwargs):  # noqa: ANN001, ANN202
        original(self, stage, *args, **kwargs)
        if stage == "student":
            count["n"] += 1
            if count["n"] == 1:
                raise Crash

    monkeypatch.setattr(Pipeline, "_append_metrics", crash_after_first_kd_epoch)
    with pytest.raises(Crash):
        Pipeline(parse_recipe(raw), out, progress=False).run()
    monkeypatch.setattr(Pipeline, "_append_metrics", original)
    assert (out / "cache/student/kd/cache.json").is_file()

    summary = Pipeline(parse_recipe(raw), out, progress=False, resume=True).run()
    state = json.loads((out / "progress.json").read_text())
    cache = state["phases"]["student/kd"]["cache"]
    assert cache["teacher_calls"] == 0, "the resumed run reads every teacher output from disk"
    assert cache["filled"] == 1.0 and cache["bytes"] > 0
    assert summary["models"]["student"]["val_accuracy"] > 0.1

    # The same run without the cache reaches the same weights (float16 teacher outputs).
    plain = recipe(tmp_path, cache="none")
    summary_plain = Pipeline(parse_recipe(plain), tmp_path / "plain", progress=False).run()
    diff = abs(
        summary_plain["models"]["student"]["val_accuracy"]
        - summary["models"]["student"]["val_accuracy"]
    )
    assert diff <= 0.05


def test_teacher_runs_only_in_the_first_epoch_without_augmentation(tmp_path: Path) -> None:
    raw = recipe(tmp_path, cache_store="memory")
    out = tmp_path / "run"
    Pipeline(parse_recipe(raw), out, progress=False).run()
    cache = json.loads((out / "progress.json").read_text())["phases"]["student/kd"]["cache"]
    # 96 training images in batches of 32: 3 teacher calls in the first epoch, none after.
    assert cache["teacher_calls"] == 3


def test_changed_inputs_rebuild_the_cache(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings = CacheSettings(store="disk")
    directory = tmp_path / "cache"
    cache = TeacherCache(8, 10, "aaaa", settings, directory=directory)
    cache.put(torch.arange(8), torch.randn(8, 10))
    cache.flush()
    again = TeacherCache(8, 10, "aaaa", settings, directory=directory)
    assert again.filled_fraction == 1.0
    changed = TeacherCache(8, 10, "bbbb", settings, directory=directory)
    assert changed.filled_fraction == 0.0
    assert "stale" in capsys.readouterr().out
    meta = json.loads((directory / "cache.json").read_text())
    meta["format"] = 0
    (directory / "cache.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="another version"):
        TeacherCache(8, 10, "bbbb", settings, directory=directory)


@pytest.mark.parametrize("change", ["teacher", "subset", "views"])
def test_pipeline_rebuilds_when_teacher_data_or_views_change(
    tmp_path: Path, change: str, capsys: pytest.CaptureFixture
) -> None:
    base = recipe(tmp_path, cache_views=2)
    base["data"]["augment"] = "standard"
    base["train"]["epochs"] = 1
    first = tmp_path / "first"
    Pipeline(parse_recipe(base), first, progress=False).run()
    cache_dir = first / "cache/student/kd"
    before = json.loads((cache_dir / "cache.json").read_text())["fingerprint"]
    # Point a second run at the same cache directory with one thing changed.
    if change == "teacher":
        base["seed"] = 1
    elif change == "subset":
        base["data"]["subset"] = 100
    else:
        base["stages"][1]["cache_views"] = 3
    second = tmp_path / "second"
    second.mkdir()
    (second / "cache").symlink_to(first / "cache")
    capsys.readouterr()
    Pipeline(parse_recipe(base), second, progress=False).run()
    after = json.loads((cache_dir / "cache.json").read_text())["fingerprint"]
    assert after != before
    assert "stale" in capsys.readouterr().out


def test_each_takd_link_and_the_fitnets_kd_phase_use_the_cache(tmp_path: Path) -> None:
    raw = recipe(tmp_path)
    raw["models"].update({"assistant": {"arch": "cnn-4"}, "fitted": {"arch": "cnn-2"}})
    raw["stages"][1] = {
        "method": "takd",
        "chain": ["teacher", "assistant", "student"],
        "cache": "teacher",
    }
    raw["stages"].append(
        {
            "method": "fitnets",
            "teacher": "teacher",
            "student": "fitted",
            "hint_layer": "stages.1",
            "guided_layer": "stages.1",
            "hint": {"epochs": 1},
            "cache": "teacher",
        }
    )
    out = tmp_path / "run"
    Pipeline(parse_recipe(raw), out, progress=False).run()
    phases = json.loads((out / "progress.json").read_text())["phases"]
    for key in ["student/link1", "student/link2", "fitted/kd"]:
        assert phases[key]["cache"]["teacher_calls"] == 3, key  # first epoch only
    assert "cache" not in phases["fitted/hint"]
