"""Teacher-assistant chains: the Python helper, the recipe stage (links in order, models already
trained kept), resume inside a chain, the report, and the assistant ladder."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _weights import assert_same_weights, final_weights
from torch import nn

import distill.methods.takd as takd_module
from distill import KD, TAKD, ConfigError, assistant_ladder
from distill.models import create, save_model
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe


def net(arch: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create(arch, num_classes=10, in_channels=1)


# --- the Python helper -----------------------------------------------------------------------


def test_links_are_kd_from_the_previous_model_built_lazily() -> None:
    chain = [net("cnn-4", 0), net("cnn-2", 1), net("cnn-2", 2), net("cnn-2", 3)]
    takd = TAKD(chain, temperature=[4.0, 2.0, 1.0], alpha=0.5)
    assert len(takd) == 3 and takd.teacher is chain[0] and takd.student is chain[-1]
    links = takd.links()
    first = next(links)
    # Building link 1 froze only its teacher; the next link's teacher is still trainable.
    assert all(p.requires_grad for p in chain[1].parameters())
    assert all(p.requires_grad for p in chain[2].parameters())
    rest = list(links)
    for index, kd in enumerate([first, *rest]):
        assert isinstance(kd, KD)
        assert kd.teacher.module is chain[index] and kd.student is chain[index + 1]
        assert kd.temperature == [4.0, 2.0, 1.0][index] and kd.alpha == 0.5
    assert [kd.student for kd in takd.links(start=2)] == [chain[3]]
    assert takd.run(lambda kd: kd.temperature, start=1) == [2.0, 1.0]


def test_helper_errors() -> None:
    a, b = net("cnn-2", 0), net("cnn-2", 1)
    with pytest.raises(ValueError, match="at least 2"):
        TAKD([a])
    with pytest.raises(ValueError, match="one per link"):
        TAKD([a, b], temperature=[4.0, 2.0])
    with pytest.raises(ValueError, match="alpha"):
        TAKD([a, b], alpha=1.5)
    with pytest.raises(ValueError, match="same module"):
        TAKD([a, a])
    with pytest.raises(IndexError):
        TAKD([a, b]).link(1)


# --- recipes -----------------------------------------------------------------------------------


def base_recipe(tmp_path: Path, epochs: int = 1) -> dict[str, Any]:
    """A teacher loaded from a checkpoint (no teacher training: fast) and a 3-link chain."""
    teacher_file = tmp_path / "teacher.pt"
    save_model(net("cnn-4", 7), teacher_file, num_classes=10, in_channels=1)
    return {
        "seed": 0,
        "data": {"name": "digits", "subset": 120, "batch_size": 32},
        "models": {
            "teacher": {"arch": "cnn-4", "checkpoint": str(teacher_file)},
            "big": {"arch": "cnn-4"},
            "mid": {"arch": "cnn-2"},
            "student": {"arch": "cnn-2"},
        },
        "train": {"epochs": epochs, "optimizer": {"name": "sgd", "lr": 0.05}},
        "stages": [
            {
                "method": "takd",
                "chain": ["teacher", "big", "mid", "student"],
                "temperature": [4.0, 3.0, 2.0],
                "alpha": 0.9,
            }
        ],
    }


class RecordingKD(KD):
    """KD that notes which models each link pairs, and the teacher's weights at that time."""

    built: list[tuple[int, int, dict[str, torch.Tensor], float]] = []

    def __init__(self, teacher: nn.Module, student: nn.Module, *args: Any, **kw: Any) -> None:
        super().__init__(teacher, student, *args, **kw)
        weights = {k: v.clone() for k, v in self.teacher.module.state_dict().items()}
        module = self.teacher.module
        RecordingKD.built.append((id(module), id(student), weights, self.temperature))


def run(raw: dict, out: Path, **kw: Any) -> tuple[Pipeline, dict]:
    pipeline = Pipeline(parse_recipe(raw), out, progress=False, **kw)
    return pipeline, pipeline.run()


def test_chain_trains_each_link_from_the_previous_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    RecordingKD.built = []
    monkeypatch.setattr(takd_module, "KD", RecordingKD)
    raw = base_recipe(tmp_path)
    pipeline, summary = run(raw, tmp_path / "run")
    names = {id(m): n for n, m in pipeline.models.items()}
    pairs = [(names[t], names[s], temp) for t, s, _, temp in RecordingKD.built]
    assert pairs == [("teacher", "big", 4.0), ("big", "mid", 3.0), ("mid", "student", 2.0)]
    # Each link's teacher had the weights the previous link left it with.
    for (_, _, weights, _), previous in zip(RecordingKD.built[1:], ["big", "mid"], strict=True):
        saved = torch.load(tmp_path / f"run/checkpoints/{previous}.pt", weights_only=True)
        for key, value in saved["state_dict"].items():
            assert torch.equal(weights[key], value), (previous, key)

    stage = summary["stages"][0]
    assert stage["method"] == "takd" and stage["name"] == "student"
    assert stage["models"] == ["big", "mid", "student"] and stage["teachers"] == ["teacher"]
    assert [p["name"] for p in stage["phases"]] == ["link1", "link2", "link3"]
    assert [(x["teacher"], x["student"]) for x in stage["links"]] == [
        ("teacher", "big"),
        ("big", "mid"),
        ("mid", "student"),
    ]
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [(r["phase"], r["model"]) for r in lines] == [
        ("link1", "big"),
        ("link2", "mid"),
        ("link3", "student"),
    ]
    report = (tmp_path / "run/report.md").read_text()
    assert "## Teacher-assistant chains (TAKD)" in report
    assert "| link2 | big → mid | cnn-2 | 3 | 0.9 |" in report


def test_models_already_trained_are_not_retrained(tmp_path: Path) -> None:
    raw = base_recipe(tmp_path)
    big_file = tmp_path / "big.pt"
    save_model(net("cnn-4", 8), big_file, num_classes=10, in_channels=1)
    raw["models"]["big"]["checkpoint"] = str(big_file)
    raw["models"]["mid_alone"] = {"arch": "cnn-2"}
    # "mid" is trained alone by an earlier stage: the chain must keep it and only train student.
    raw["stages"] = [{"method": "train", "model": "mid"}, *raw["stages"]]
    raw["stages"].insert(1, {"method": "train", "model": "mid_alone"})
    pipeline, summary = run(raw, tmp_path / "run")
    mid_after_train = torch.load(tmp_path / "run/checkpoints/mid_alone.pt", weights_only=True)
    assert mid_after_train is not None
    stage = summary["stages"][-1]
    assert [p["name"] for p in stage["phases"]] == ["link3"]
    assert stage["models"] == ["student"]
    assert [x["skipped"] for x in stage["links"]] == [True, True, False]
    assert summary["models"]["big"]["trained_by"] == "checkpoint"
    assert summary["models"]["mid"]["trained_by"] == "mid"
    loaded = torch.load(big_file, weights_only=True)["state_dict"]
    for key, value in pipeline.models["big"].state_dict().items():
        assert torch.equal(value, loaded[key]), key
    report = (tmp_path / "run/report.md").read_text()
    assert "big → mid (already trained: kept)" in report
    # The student (cnn-2) is paired with a cnn-2 trained alone as its baseline.
    assert "(mid)" in report.split("| link3 |")[1].splitlines()[0]


def test_per_link_training_settings(tmp_path: Path) -> None:
    raw = base_recipe(tmp_path)
    raw["stages"][0]["link_train"] = [{"epochs": 2}, None, {"optimizer": {"lr": 0.01}}]
    spec = parse_recipe(raw).stages[0]
    configs = spec.link_configs()
    assert [c.epochs for c in configs] == [2, 1, 1]
    assert [c.optimizer.lr for c in configs] == [0.05, 0.05, 0.01]
    assert configs[2].optimizer.name == "sgd"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"chain": ["teacher"]}, "stages.0.chain"),
        ({"chain": ["teacher", "mid", "mid"]}, "repeated"),
        (
            {"chain": ["teacher", "nope"], "temperature": 4},
            "stages.0.chain.1: unknown model 'nope'",
        ),
        (
            {"chain": ["big", "mid"], "temperature": 4},
            "'big' is used as a teacher but no earlier stage",
        ),
        ({"temperature": [4.0, 2.0]}, "stages.0.temperature: .*one per link \\(3 for a chain of 4"),
        ({"temperature": -1.0}, "stages.0.temperature"),
        ({"alpha": [0.5, 0.5, 2.0]}, "stages.0.alpha"),
        ({"link_train": [{}]}, "stages.0.link_train: .*one entry per link"),
        ({"link_train": [{"epochs": 0}, {}, {}]}, "stages.0.link_train: .*link 1.*epochs"),
    ],
)
def test_recipe_errors(tmp_path: Path, change: dict, message: str) -> None:
    raw = base_recipe(tmp_path)
    raw["stages"][0].update(change)
    with pytest.raises(ConfigError, match=message):
        parse_recipe(raw)


class Crash(RuntimeError):
    pass


def test_resume_inside_a_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = base_recipe(tmp_path, epochs=2)
    raw["stages"][0]["chain"] = ["teacher", "mid", "student"]
    raw["stages"][0]["temperature"] = 4.0
    run(raw, tmp_path / "straight")

    calls = {"n": 0}
    original = Pipeline._append_metrics

    def crash_in_link2_epoch1(self, *args, **kwargs):  # noqa: ANN001, ANN202
        original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:  # link1 epochs 1-2 done, link2 epoch 1 checkpointed
            raise Crash

    monkeypatch.setattr(Pipeline, "_append_metrics", crash_in_link2_epoch1)
    with pytest.raises(Crash):
        run(raw, tmp_path / "crashed")
    monkeypatch.setattr(Pipeline, "_append_metrics", original)

    trained: list[str] = []
    fit = takd_module.KD.forward

    def counting_forward(self, *args, **kwargs):  # noqa: ANN001, ANN202
        trained.append("link1" if self.student is pipeline_models["mid"] else "link2")
        return fit(self, *args, **kwargs)

    messages: list[str] = []
    pipeline = Pipeline(
        parse_recipe(raw), tmp_path / "crashed", resume=True, progress=False, log=messages.append
    )
    pipeline_models = pipeline.models
    monkeypatch.setattr(takd_module.KD, "forward", counting_forward)
    pipeline.run()
    assert "[student] link1: already finished, weights restored" in messages
    assert set(trained) == {"link2"}, "the finished link is not trained again"
    assert len(trained) == 3, "only link2's second epoch (96 images / 32 per batch) runs"

    names = ("mid", "student")
    want = final_weights(tmp_path / "straight", names)
    assert_same_weights(want, final_weights(tmp_path / "crashed", names))
    lines = (tmp_path / "crashed/metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4


# --- the ladder --------------------------------------------------------------------------------


def test_assistant_ladder() -> None:
    assert assistant_ladder("cnn-10", "cnn-2") == ["cnn-10", "cnn-6", "cnn-2"]
    assert assistant_ladder("cnn-10", "cnn-2", assistants=2) == [
        "cnn-10",
        "cnn-8",
        "cnn-6",
        "cnn-2",
    ]
    assert assistant_ladder("resnet20", "cnn-2") == ["resnet20", "cnn-4", "cnn-2"]
    assert assistant_ladder("resnet110", "resnet8") == ["resnet110", "resnet56", "resnet8"]
    ladder = assistant_ladder("wrn-40-2", "wrn-16-1", assistants=2)
    assert len(ladder) == 4 and all(name.startswith("wrn-") for name in ladder)
    with pytest.raises(ConfigError, match="smaller than the teacher"):
        assistant_ladder("cnn-2", "cnn-4")
    with pytest.raises(ConfigError, match="only 0 architecture"):
        assistant_ladder("cnn-4", "cnn-2")
    with pytest.raises(ConfigError, match="assistants"):
        assistant_ladder("cnn-10", "cnn-2", assistants=0)
    with pytest.raises(ConfigError, match="unknown model architecture"):
        assistant_ladder("cnn-10", "cnn-3")


def test_demo_recipe_adds_takd_and_dml() -> None:
    from distill.demo import demo_recipe

    raw = demo_recipe("digits", ["kd", "takd", "dml"])
    recipe = parse_recipe(copy.deepcopy(raw))
    assert {"student_kd", "student_takd", "student_dml", "assistant", "dml_peer"} <= set(
        recipe.models
    )
    methods = [s.method for s in recipe.stages]
    assert methods == ["train", "train", "kd", "takd", "dml"]
    assert recipe.stages[3].chain == ["teacher", "assistant", "student_takd"]
    assert recipe.stage_names()[3:] == ["student_takd", "student_dml"]


@pytest.mark.parametrize("method", ["takd", "dml"])
def test_models_with_other_classes_are_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    from distill.models import MODELS

    # A user architecture that ignores num_classes: found by the stage's check, before any
    # stage trains, instead of at its first step.
    def odd_net(num_classes: int, in_channels: int) -> torch.nn.Module:
        return create("cnn-2", num_classes=7, in_channels=in_channels)

    monkeypatch.setitem(MODELS, "odd-net", odd_net)
    raw = base_recipe(tmp_path)
    raw["models"]["odd"] = {"arch": "odd-net"}
    raw["stages"] = [{"method": "train", "model": "mid"}]
    if method == "takd":
        raw["stages"].append({"method": "takd", "chain": ["teacher", "big", "odd"]})
    else:
        raw["stages"].append({"method": "dml", "cohort": ["big", "odd"]})
    with pytest.raises(ConfigError, match=r"must predict the same classes.*odd \[8, 7\]"):
        run(raw, tmp_path / "run")
    assert not list((tmp_path / "run/checkpoints").glob("*.pt")), "nothing was trained"
