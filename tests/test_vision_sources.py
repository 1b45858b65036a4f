"""The ``timm:`` and ``torchvision:`` model sources.

These tests (marked ``vision``) need timm and torchvision (``pip install 'distill[vision]'``,
with a torch build that torchvision's operators load on): CI runs them in a second environment
with ``DISTILL_REQUIRE_VISION=1 pytest -m vision``, where a failed import is an error, not a
skip. Elsewhere they are skipped. What needs neither package (the missing extra, reading weight
files) is in test_model_weights.py.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

import pytest
import torch
import yaml

from distill.cli import main
from distill.errors import ConfigError
from distill.models import create
from distill.taps import Taps

REQUIRED = os.environ.get("DISTILL_REQUIRE_VISION") == "1"


def _optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except (ImportError, RuntimeError):  # RuntimeError: torchvision built for another torch
        if REQUIRED:
            raise
        return None


timm = _optional("timm")
torchvision = _optional("torchvision")
pytestmark = [
    pytest.mark.vision,
    pytest.mark.skipif(
        timm is None or torchvision is None,
        reason="needs timm and torchvision (pip install 'distill[vision]'; torchvision needs a "
        "full torch build such as torch==2.14.1 with torchvision==0.29.1)",
    ),
]


# -- timm ---------------------------------------------------------------------------------------


def test_timm_model_options_features_and_reproducible_weights() -> None:
    torch.manual_seed(0)
    model = create("timm:test_resnet", num_classes=7, in_channels=1)
    assert model.arch == "timm:test_resnet" and getattr(model, "input_mean", None) is None
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    with Taps(model, ["layer3"]) as taps, torch.no_grad():
        logits = model(x)
        assert taps["layer3"].dim() == 4
    assert logits.shape == (2, 7)
    torch.manual_seed(0)
    twin = create("timm:test_resnet", num_classes=7, in_channels=1).eval()
    with torch.no_grad():
        assert torch.equal(twin(x), logits)
    convnext = create("timm:test_convnext", num_classes=3, drop_path_rate=0.1)
    with Taps(convnext, ["stages.2"]) as taps, torch.no_grad():
        convnext.eval()(torch.randn(1, 3, 32, 32))
        assert taps["stages.2"].dim() == 4


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_timm_weights_round_trip_and_normalisation(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    model = create("timm:test_resnet", num_classes=5).eval()
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(model.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    torch.manual_seed(2)
    loaded = create("timm:test_resnet", num_classes=5, weights=str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    cfg = model.pretrained_cfg
    assert loaded.input_mean == tuple(cfg["mean"]) and loaded.input_std == tuple(cfg["std"])
    grey = create("timm:test_resnet", num_classes=5, in_channels=1, weights=str(path))
    stem = f"{cfg['first_conv']}.weight"  # conv1.0: a deep stem
    rgb_stem = model.state_dict()[stem]
    torch.testing.assert_close(grey.state_dict()[stem], rgb_stem.sum(dim=1, keepdim=True))
    assert grey.input_mean == pytest.approx((sum(cfg["mean"]) / 3,))
    own = create(
        "timm:test_resnet",
        num_classes=5,
        weights=str(path),
        input_mean=[0.1] * 3,
        input_std=[0.2] * 3,
    )
    assert own.input_mean == (0.1,) * 3


def test_timm_bad_input_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnt18'; closest names: resnet18"):
        create("timm:resnt18")
    with pytest.raises(ConfigError, match="never downloaded"):
        create("timm:test_resnet", pretrained=True)
    with pytest.raises(ConfigError, match="timm cannot build it: TypeError"):
        create("timm:test_resnet", bogus_option=1)
    with pytest.raises(ConfigError, match="image classifier"):
        create("timm:test_resnet", task="causal_lm")


def test_weights_of_another_architecture_name_the_keys(tmp_path: Path) -> None:
    torch.save(create("timm:test_convnext", num_classes=5).state_dict(), tmp_path / "cnx.pt")
    with pytest.raises(ConfigError) as info:
        create("timm:test_resnet", num_classes=5, weights=str(tmp_path / "cnx.pt"))
    message = str(info.value)
    assert "\n" not in message and "'timm:test_resnet'" in message
    assert "missing: conv1.0.weight" in message and "unexpected: stem.0.weight" in message
    assert "more)" in message
    torch.save(create("timm:test_resnet", num_classes=5).state_dict(), tmp_path / "r5.pt")
    with pytest.raises(ConfigError, match=r"shape: fc\.weight \[5, .*\] \(model: \[9, "):
        create("timm:test_resnet", num_classes=9, weights=str(tmp_path / "r5.pt"))


# -- torchvision --------------------------------------------------------------------------------


def test_torchvision_model_in_channels_and_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rgb = create("torchvision:resnet18", num_classes=4).eval()
    torch.save(rgb.state_dict(), tmp_path / "r18.pth")
    grey = create("torchvision:resnet18", num_classes=4, in_channels=1)
    assert grey.conv1.in_channels == 1 and grey.conv1.kernel_size == (7, 7)
    assert grey.conv1.stride == (2, 2) and grey.conv1.bias is None
    loaded = create(
        "torchvision:resnet18", num_classes=4, in_channels=1, weights=str(tmp_path / "r18.pth")
    ).eval()
    torch.testing.assert_close(loaded.conv1.weight, rgb.conv1.weight.sum(dim=1, keepdim=True))
    # A grey image seen as three equal channels: the same logits.
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), rgb(x.expand(2, 3, 32, 32)), rtol=1e-4, atol=1e-4)
    assert loaded.input_mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))
    same = create("torchvision:resnet18", num_classes=4, weights=str(tmp_path / "r18.pth"))
    assert same.input_mean == (0.485, 0.456, 0.406) and same.input_std == (0.229, 0.224, 0.225)
    mobile = create("torchvision:mobilenet_v3_small", num_classes=3, in_channels=2)
    assert mobile.features[0][0].in_channels == 2
    with Taps(mobile, ["features.3"]) as taps, torch.no_grad():
        assert mobile.eval()(torch.randn(1, 2, 32, 32)).shape == (1, 3)
        assert taps["features.3"].dim() == 4


def test_torchvision_bad_input_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown torchvision classifier 'resnet19'; closest"):
        create("torchvision:resnet19")
    with pytest.raises(ConfigError, match="unknown torchvision classifier 'fasterrcnn"):
        create("torchvision:fasterrcnn_resnet50_fpn")  # a detector, not a classifier
    with pytest.raises(ConfigError, match="never downloaded"):
        create("torchvision:resnet18", pretrained=True)
    torch.save(create("torchvision:resnet18", num_classes=4).state_dict(), tmp_path / "r.pt")
    with pytest.raises(ConfigError, match=r"not weights of 'torchvision:resnet34'.*missing: "):
        create("torchvision:resnet34", num_classes=4, weights=str(tmp_path / "r.pt"))


# -- the command line and a run -----------------------------------------------------------------


def test_layers_lists_timm_and_torchvision_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["layers", "timm:resnet18", "--depth", "1", "--input-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "layer3" in out and "[1, 256, 2, 2]" in out
    assert main(["layers", "torchvision:resnet18", "--depth", "1", "--in-channels", "3"]) == 0
    assert "layer4" in capsys.readouterr().out
    assert main(["layers", "timm:resnt18"]) == 2
    err = capsys.readouterr().err
    assert "closest names: resnet18" in err and len(err.strip().splitlines()) == 1


def test_a_pretrained_timm_teacher_distils_into_a_zoo_student(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "teacher.safetensors"
    from safetensors.torch import save_file

    teacher = create("timm:test_resnet", num_classes=10, in_channels=1)
    save_file(teacher.state_dict(), str(weights))
    recipe = {
        "data": {"name": "digits", "subset": 120, "batch_size": 40},
        "models": {
            "teacher": {"arch": "timm:test_resnet", "weights": str(weights)},
            "student": {"arch": "cnn-2"},
        },
        "train": {"epochs": 1},
        "stages": [
            {"method": "kd", "teacher": "teacher", "student": "student", "cache": "teacher"},
            {
                "method": "at",
                "teacher": "teacher",
                "student": "student_at",
                "pairs": [{"student": "stages.0", "teacher": "layer1"}],
            },
        ],
    }
    recipe["models"]["student_at"] = {"arch": "cnn-2"}
    path = tmp_path / "timm.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    logged = capsys.readouterr().out
    assert "Teacher `teacher` (timm:test_resnet)" in logged and "re-normalised" in logged
    report = (out / "report.md").read_text()
    assert "to the model's mean (0.5) std (0.5)" in report.split("## Models")[0]
    assert "| teacher | timm:test_resnet |" in report
