"""Weight files for the timm: and torchvision: sources, and the error when those packages are
missing; none of this needs timm or torchvision."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from distill.cli import main
from distill.errors import ConfigError
from distill.models import create
from distill.models.weights import adapt_first_conv, read_weights


class Code:
    """A pickled object, which ``weights_only=True`` refuses to build."""


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_missing_extra_says_which_to_install(source: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, source, None)  # `import source` now raises ImportError
    with pytest.raises(ConfigError) as info:
        create(f"{source}:resnet18", num_classes=10)
    message = str(info.value)
    assert "pip install 'distill[vision]'" in message and "\n" not in message


def test_missing_extra_in_a_recipe_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)
    recipe = {
        "data": {"name": "digits", "subset": 60},
        "models": {"student": {"arch": "timm:resnet18"}},
        "stages": [{"method": "train", "model": "student"}],
    }
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models.student.arch" in err[0]
    assert "pip install 'distill[vision]'" in err[0]


def test_adapt_first_conv_sums_for_one_channel_and_scales_otherwise() -> None:
    torch.manual_seed(0)
    weight = torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(adapt_first_conv(weight, 1)[:, 0], weight.sum(dim=1))
    five = adapt_first_conv(weight, 5)
    assert five.shape == (4, 5, 3, 3)
    for c in range(5):  # channels repeated cyclically, scaled by 3/5
        torch.testing.assert_close(five[:, c], weight[:, c % 3] * 3 / 5)
    assert adapt_first_conv(weight, 3) is weight


def test_read_weights_formats_and_refusals(tmp_path: Path) -> None:
    state = {"a.weight": torch.ones(2), "b.bias": torch.zeros(1)}
    for name, payload in (
        ("plain.pt", state),
        ("nested.pt", {"model": state, "epoch": 3}),
        ("ddp.pt", {f"module.{k}": v for k, v in state.items()}),
    ):
        torch.save(payload, tmp_path / name)
        assert read_weights(tmp_path / name).keys() == state.keys()
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "w.safetensors"))
    assert torch.equal(read_weights(tmp_path / "w.safetensors")["a.weight"], torch.ones(2))
    torch.save({"not": "weights"}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="holds no state dict"):
        read_weights(tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="no such file"):
        read_weights(tmp_path / "missing.pt")
    torch.save({"x": Code()}, tmp_path / "code.pt")
    with pytest.raises(ConfigError, match="cannot be read safely"):
        read_weights(tmp_path / "code.pt")
