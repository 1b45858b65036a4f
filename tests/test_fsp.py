"""FSP: the matrix and loss against the paper's formulas, the method, its stages and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _weights import assert_same_weights, final_weights
from torch import nn

from distill import FSP
from distill.errors import ConfigError
from distill.losses import fsp_loss, fsp_matrix
from distill.methods import KD, FSPPair, Supervised, propose_fsp_pairs
from distill.methods.fsp import fsp_sections
from distill.models import create
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe


def fsp_by_loops(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """G[n, a, b] = Σ_{s,t} F1[n, a, s, t] · F2[n, b, s, t] / (h·w), written out."""
    n, c1, h, w = first.shape
    c2 = second.shape[1]
    g = torch.zeros(n, c1, c2, dtype=torch.float64)
    for i in range(n):
        for a in range(c1):
            for b in range(c2):
                total = 0.0
                for s in range(h):
                    for t in range(w):
                        total += float(first[i, a, s, t]) * float(second[i, b, s, t])
                g[i, a, b] = total / (h * w)
    return g


def test_fsp_matrix_matches_the_formula() -> None:
    torch.manual_seed(0)
    first, second = torch.randn(2, 3, 4, 5), torch.randn(2, 4, 4, 5)
    got = fsp_matrix(first, second)
    assert got.shape == (2, 3, 4) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), fsp_by_loops(first, second), rtol=1e-5, atol=1e-6)
    einsum = torch.einsum("nahw,nbhw->nab", first, second) / 20
    torch.testing.assert_close(got, einsum)


@pytest.mark.parametrize(("big", "small"), [((8, 8), (4, 4)), ((7, 6), (4, 3))])
def test_fsp_matrix_max_pools_the_larger_map(big: tuple, small: tuple) -> None:
    torch.manual_seed(1)
    large, little = torch.randn(2, 3, *big), torch.randn(2, 5, *small)
    pooled = F.adaptive_max_pool2d(large, small)
    if big == (8, 8):  # an exact 2× ratio: adaptive pooling is plain 2×2 max pooling
        torch.testing.assert_close(pooled, F.max_pool2d(large, 2))
    want = fsp_by_loops(pooled, little)
    torch.testing.assert_close(fsp_matrix(large, little).double(), want, rtol=1e-5, atol=1e-6)
    # Either argument may be the larger one.
    torch.testing.assert_close(
        fsp_matrix(little, large).double(), want.transpose(1, 2), rtol=1e-5, atol=1e-6
    )


def test_fsp_matrix_under_autocast_is_float32() -> None:
    first, second = torch.randn(2, 3, 4, 4), torch.randn(2, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = fsp_matrix(first.bfloat16(), second.bfloat16())
    assert got.dtype == torch.float32


def test_fsp_matrix_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="N, C, H, W"):
        fsp_matrix(torch.randn(2, 3, 4), torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="batch"):
        fsp_matrix(torch.randn(2, 3, 4, 4), torch.randn(3, 3, 4, 4))


def test_fsp_loss_matches_the_paper_and_only_the_student_gets_gradients() -> None:
    torch.manual_seed(2)
    student = [torch.randn(4, 3, 5, requires_grad=True), torch.randn(4, 2, 2, requires_grad=True)]
    teacher = [torch.randn(4, 3, 5, requires_grad=True), torch.randn(4, 2, 2, requires_grad=True)]
    weights = [1.0, 0.25]
    got = fsp_loss(student, teacher, weights)
    # (1/N) Σ_x Σ_i λ_i ‖G_i^s(x) − G_i^t(x)‖²_F, written out.
    want = 0.0
    with torch.no_grad():
        for x in range(4):
            for i in range(2):
                diff = student[i][x] - teacher[i][x]
                want += weights[i] * float((diff**2).sum())
    want /= 4
    assert got.dtype == torch.float32
    assert float(got.detach()) == pytest.approx(want, rel=1e-5)
    with torch.no_grad():
        equal = sum(float((s - t).pow(2).sum()) for s, t in zip(student, teacher, strict=True))
        assert float(fsp_loss(student, teacher)) == pytest.approx(equal / 4, rel=1e-5)
    got.backward()
    assert all(s.grad is not None for s in student)
    assert all(t.grad is None for t in teacher)
    with pytest.raises(ValueError, match="same channels"):
        fsp_loss([torch.zeros(1, 2, 3)], [torch.zeros(1, 3, 2)])
    with pytest.raises(ValueError, match="one value per pair"):
        fsp_loss(student, teacher, [1.0])


def test_zoo_pairs_are_section_input_and_output() -> None:
    resnet = create("resnet20", num_classes=10, in_channels=1)
    cnn = create("cnn-2", num_classes=10, in_channels=1)
    assert fsp_sections(resnet) == [
        ("stem", "stages.0"),
        ("stages.0", "stages.1"),
        ("stages.1", "stages.2"),
    ]
    pairs = propose_fsp_pairs(resnet, cnn)
    assert [(p.student, p.teacher) for p in pairs] == [
        (("stem", "stages.0"), ("stem", "stages.0")),
        (("stages.0", "stages.1"), ("stages.0", "stages.1")),
    ]
    with pytest.raises(ConfigError, match="not a zoo model"):
        propose_fsp_pairs(resnet, nn.Sequential(nn.Conv2d(1, 2, 3)))


def test_fsp_method_trains_only_the_student_side() -> None:
    torch.manual_seed(0)
    teacher = create("resnet8", num_classes=10, in_channels=1)
    student = create("cnn-2", num_classes=10, in_channels=1)
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 10, (8,))
    method = FSP(teacher, student, x)
    out = method(x, y)
    assert set(out.parts) == {"fsp"} and out.logits.shape == (8, 0)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    trainable = {id(p) for p in method.trainable_parameters()}
    assert trainable == {id(p) for n, p in student.named_parameters() if not n.startswith("head")}
    # Stage 1 matrices agree with the formula on the tapped features.
    student_mats, teacher_mats = method.matrices(x)
    with torch.no_grad():
        stem = teacher.stem(x)
        torch.testing.assert_close(teacher_mats[0], fsp_matrix(stem, teacher.stages[0](stem)))
    assert [m.shape for m in student_mats] == [m.shape for m in teacher_mats]
    second = method.second_phase()
    assert isinstance(second, Supervised) and second.student is student
    assert all(p.requires_grad for p in student.parameters())
    kd = FSP(teacher, student, x, finetune="kd", temperature=2.0).second_phase()
    assert isinstance(kd, KD) and kd.temperature == 2.0


def test_channel_mismatch_explains_and_adapters_fix_it() -> None:
    torch.manual_seed(0)
    teacher = create("resnet8", num_classes=10, in_channels=1)  # channels 16, 16, 32
    student = create("cnn-4", num_classes=10, in_channels=1)  # channels 32, 32, 64
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(ConfigError, match="32×32 but the teacher's .* is 16×16") as error:
        FSP(teacher, student, x)
    assert "student_adapters" in str(error.value)
    method = FSP(teacher, student, x, student_adapters=True)
    assert set(method.adapters) == {"0_0", "0_1", "1_0", "1_1"}
    adapter = method.adapters["1_1"][0]
    assert (adapter.in_channels, adapter.out_channels, adapter.kernel_size) == (64, 32, (1, 1))
    out = method(x, torch.zeros(4, dtype=torch.long))
    out.loss.backward()
    assert adapter.weight.grad is not None
    assert set(method.trainable_state_dict()) >= {"adapters.1_1.0.weight"}


class UserNet(nn.Module):
    """A model outside the zoo, known only by its layer names."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.ModuleDict(
            {
                "conv_in": nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU()),
                "conv_mid": nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()),
            }
        )
        self.fc = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body["conv_mid"](self.body["conv_in"](x))
        return self.fc(x.mean(dim=(2, 3)))


def test_user_models_by_layer_names() -> None:
    torch.manual_seed(0)
    teacher, student = UserNet(8), UserNet(8)
    x = torch.randn(4, 1, 8, 8)
    pairs = [
        {"student": ["body.conv_in", "body.conv_mid"], "teacher": ["body.conv_in", "body.conv_mid"]}
    ]
    method = FSP(teacher, student, x, pairs=pairs)
    assert method.pairs == [
        FSPPair(
            student=("body.conv_in", "body.conv_mid"), teacher=("body.conv_in", "body.conv_mid")
        )
    ]
    method(x, torch.zeros(4, dtype=torch.long)).loss.backward()
    assert student.fc.weight.grad is None
    with pytest.raises(ConfigError, match="not a zoo model"):
        FSP(teacher, student, x)
    vector = [{"student": ["body.conv_in", "fc"], "teacher": ["body.conv_in", "fc"]}]
    with pytest.raises(ConfigError, match=r"layer 'fc' gives shape \[4, 10\]; FSP matrices"):
        FSP(teacher, student, x, pairs=vector)


FSP_RECIPE = {
    "seed": 0,
    "data": {"name": "digits", "subset": 200, "batch_size": 50},
    "models": {"teacher": {"arch": "resnet8"}, "student": {"arch": "cnn-2"}},
    "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}},
    "stages": [
        {"method": "train", "model": "teacher", "epochs": 1},
        {
            "method": "fsp",
            "teacher": "teacher",
            "student": "student",
            "fsp": {"epochs": 2, "optimizer": {"lr": 0.001}},
        },
    ],
}


class Crash(RuntimeError):
    pass


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("fsp") / "straight"
    return out, Pipeline(parse_recipe(FSP_RECIPE), out, progress=False).run()


def test_recipe_runs_both_phases(straight_run: tuple[Path, dict]) -> None:
    out, summary = straight_run
    stage = summary["stages"][1]
    assert stage["method"] == "fsp" and stage["finetune"] == "ce"
    assert [(p["name"], p["epochs"]) for p in stage["phases"]] == [("fsp", 2), ("ce", 2)]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [set(x["train"]) for x in lines if x["phase"] == "fsp"] == [{"fsp", "loss"}] * 2
    assert [set(x["train"]) for x in lines if x["phase"] == "ce"] == [{"ce", "loss"}] * 2


@pytest.mark.parametrize("crash_at", [("fsp", 1), ("ce", 1)])
def test_interrupted_run_resumes_in_the_right_phase_and_epoch(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    straight_run: tuple[Path, dict],
    crash_at: tuple[str, int],
) -> None:
    original = Pipeline._append_metrics
    trained: list[tuple[str, int]] = []

    def record(self, stage, phase, method, rec):  # noqa: ANN001, ANN202
        original(self, stage, phase, method, rec)
        trained.append((phase, rec["epoch"]))
        if (phase, rec["epoch"]) == crash_at:
            raise Crash

    out = tmp_path / "crashed"
    monkeypatch.setattr(Pipeline, "_append_metrics", record)
    with pytest.raises(Crash):
        Pipeline(parse_recipe(FSP_RECIPE), out, progress=False).run()
    trained.clear()
    resumed = Pipeline(parse_recipe(FSP_RECIPE), out, progress=False, resume=True).run()
    after = {("fsp", 1): [("fsp", 2), ("ce", 1), ("ce", 2)], ("ce", 1): [("ce", 2)]}
    assert trained == after[crash_at]

    straight, summary = straight_run
    want = final_weights(straight, ["student"])
    assert_same_weights(want, final_weights(out, ["student"]))
    accuracy = summary["models"]["student"]["val_accuracy"]
    assert resumed["models"]["student"]["val_accuracy"] == accuracy


def test_recipe_errors_name_the_field() -> None:
    bad = json.loads(json.dumps(FSP_RECIPE))
    bad["stages"][1]["fsp"] = {"optimizer": {"lr": -1}}
    with pytest.raises(ConfigError, match=r"stages\.1\.fsp: .*optimizer\.lr"):
        parse_recipe(bad)
    bad["stages"][1] = {**FSP_RECIPE["stages"][1], "finetune": "mse"}
    with pytest.raises(ConfigError, match=r"stages\.1\.finetune"):
        parse_recipe(bad)
    bad["stages"][1] = {
        **FSP_RECIPE["stages"][1],
        "pairs": [{"student": ["stem"], "teacher": ["a", "b"]}],
    }
    with pytest.raises(ConfigError, match=r"stages\.1\.pairs\.0\.student"):
        parse_recipe(bad)
