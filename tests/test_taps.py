"""Taps: features by module name on zoo, Sequential, torchvision- and transformers-style models."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from distill import Taps
from distill.errors import ConfigError
from distill.models import create
from distill.taps import feeding_parameters, layer_shapes, pick_tensor, probe


def all_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks)  # noqa: SLF001
        for m in model.modules()
    )


# -- models built the way torchvision and transformers build theirs -----------------------


class TorchvisionStyle(nn.Module):
    """Numbered Sequential ``features`` and a nested ModuleDict, like VGG / ViT."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3)
        )
        self.blocks = nn.ModuleDict(
            {"block_a": nn.ModuleDict({"proj": nn.Conv2d(8, 8, 1)}), "block_b": nn.Identity()}
        )
        self.classifier = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks["block_b"](self.blocks["block_a"]["proj"](self.features(x)))
        return self.classifier(x.mean(dim=(2, 3)))


@dataclass
class LayerOutput:
    attentions: torch.Tensor | None
    hidden_states: torch.Tensor


class EncoderLayer(nn.Module):
    """Returns a tuple ``(hidden, attention)`` like a transformers layer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.attention = nn.Linear(dim, dim)
        self.output = nn.Linear(dim, dim)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> tuple:
        scores = torch.softmax(hidden @ hidden.transpose(1, 2), dim=-1)
        return self.output(torch.relu(self.attention(hidden))), scores


class DataclassLayer(nn.Module):
    def forward(self, hidden: torch.Tensor) -> LayerOutput:
        return LayerOutput(attentions=None, hidden_states=hidden * 2)


class TransformersStyle(nn.Module):
    """``encoder.layer.N`` returning tuples, a dataclass output, a dict model output."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(10, dim)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([EncoderLayer(dim) for _ in range(2)])
        self.pooler = DataclassLayer()

    def forward(self, input_ids: torch.Tensor) -> OrderedDict:
        hidden = self.embeddings(input_ids)
        for layer in self.encoder.layer:
            hidden = layer(hidden, mask=None)[0]
        pooled = self.pooler(hidden).hidden_states
        return OrderedDict(last_hidden_state=hidden, pooler_output=pooled[:, 0])


# -- tests ---------------------------------------------------------------------------------


def test_zoo_model_several_names_and_hooks_removed() -> None:
    model = create("resnet8", num_classes=10, in_channels=1)
    x = torch.randn(2, 1, 8, 8)
    before = all_hooks(model)
    with Taps(model, ["stem", "stages.1", "stages.1.0.conv1", "head.fc"]) as taps:
        logits = model(x)
        assert taps["stem"].shape == (2, 16, 8, 8)
        assert taps["stages.1"].shape == (2, 32, 4, 4)
        assert taps["stages.1.0.conv1"].shape == (2, 32, 4, 4)
        assert torch.equal(taps["head.fc"], logits)
        assert taps["stages.1"].requires_grad
        assert all_hooks(model) > before
    assert all_hooks(model) == before
    assert len(taps) == 0


def test_close_without_context_and_on_error() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    taps = Taps(model, "0")
    model(torch.randn(1, 3))
    assert "0" in taps
    taps.close()
    taps.close()  # idempotent
    assert all_hooks(model) == 0
    with pytest.raises(RuntimeError, match="boom"), Taps(model, ["0", "1"]):
        raise RuntimeError("boom")
    assert all_hooks(model) == 0


def test_plain_sequential_output_and_input() -> None:
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(3, 4)
    with Taps(model, ["1", "2"], capture={"1": "output", "2": "input"}) as taps:
        model(x)
        assert torch.equal(taps["1"], taps["2"])  # ReLU's output is the last Linear's input
        assert taps["1"].min() >= 0


def test_torchvision_style_numbered_sequential_and_module_dict() -> None:
    model = TorchvisionStyle()
    with Taps(model, ["features.3", "blocks.block_a.proj", "blocks.block_b"]) as taps:
        model(torch.randn(2, 1, 8, 8))
        assert taps["features.3"].shape == (2, 8, 2, 2)
        assert torch.equal(taps["blocks.block_a.proj"], taps["blocks.block_b"])


def test_transformers_style_tuples_dataclasses_and_dicts() -> None:
    model = TransformersStyle()
    ids = torch.randint(0, 10, (2, 5))
    names = ["encoder.layer.0", "encoder.layer.1", "pooler", ""]
    with Taps(model, names, select={"encoder.layer.1": 1, "": "pooler_output"}) as taps:
        out = model(ids)
        assert taps["encoder.layer.0"].shape == (2, 5, 6)  # first item of the tuple
        assert taps["encoder.layer.1"].shape == (2, 5, 5)  # select=1: the attention
        assert torch.equal(taps["pooler"], out["last_hidden_state"] * 2)  # first tensor field
        assert torch.equal(taps[""], out["pooler_output"])
    # Inputs given as positional or keyword arguments.
    with Taps(model, ["encoder.layer.1"], capture="input") as taps:
        model(ids)
        first = taps["encoder.layer.1"]
    with (
        Taps(model, ["encoder.layer.1"], capture="input", select="mask"),
        pytest.raises(ConfigError, match="mask"),
    ):
        model(ids)  # the keyword argument is None here, not a tensor
    assert first.shape == (2, 5, 6)


def test_pick_tensor_rules_and_errors() -> None:
    a, b = torch.zeros(1), torch.ones(2)
    assert pick_tensor((None, [b, a])) is b
    assert pick_tensor({"x": 3, "y": a}) is a
    assert pick_tensor(LayerOutput(attentions=None, hidden_states=a)) is a
    assert pick_tensor((a, b), 1) is b
    assert pick_tensor((a, b), lambda v: v[1]) is b
    with pytest.raises(ConfigError, match="select=5"):
        pick_tensor((a, b), 5)
    with pytest.raises(ConfigError, match="no such key"):
        pick_tensor({"x": a}, "y")
    with pytest.raises(ConfigError, match="holds no tensor"):
        pick_tensor(("text",))


def test_unknown_name_suggests_closest_and_leaves_no_hook() -> None:
    model = create("resnet8", num_classes=10, in_channels=1)
    with pytest.raises(ConfigError) as error:
        Taps(model, ["stem", "stage.1"])
    message = str(error.value)
    assert "'stage.1'" in message and "'stages.1'" in message
    assert all_hooks(model) == 0
    # No close spelling: list what exists under the longest valid prefix.
    with pytest.raises(ConfigError, match=r"'stages\.1\.0'") as error:
        Taps(model, "stages.1.quux")
    assert "stages.0.0" not in str(error.value)
    with pytest.raises(ConfigError, match="'stem', 'stages', 'head'"):
        Taps(model, "quux")


def test_taps_keep_the_last_forward_only() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with Taps(model, "0", detach=True) as taps:
        model(torch.ones(1, 2))
        first = taps["0"]
        model(torch.zeros(3, 2))
        assert taps["0"].shape == (3, 2) and first.shape == (1, 2)
        assert not taps["0"].requires_grad
        with pytest.raises(KeyError, match="not tapped"):
            taps["1"]


def test_run_until_captured_stops_early() -> None:
    model = create("cnn-4", num_classes=10, in_channels=1).train()
    later_bn = model.stages[1][1].bn
    before = later_bn.running_mean.clone()
    with Taps(model, "stem") as taps:
        features = taps.run_until_captured(torch.randn(4, 1, 8, 8))
    assert features["stem"].shape == (4, 32, 8, 8)
    assert torch.equal(later_bn.running_mean, before)  # later layers never ran
    with Taps(model, "head.fc") as taps, pytest.raises(ConfigError, match="did not run"):
        taps.model = nn.Identity()  # a forward that never reaches the tap
        taps.run_until_captured(torch.randn(1, 1, 8, 8))
    assert all_hooks(model) == 0


def test_probe_and_feeding_parameters_change_nothing() -> None:
    model = create("cnn-4", num_classes=10, in_channels=1).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.head.fc.weight.requires_grad_(False)
    x = torch.randn(4, 1, 8, 8)
    assert probe(model, "stages.0", x)["stages.0"].shape == (4, 32, 8, 8)
    feeding = feeding_parameters(model, ["stages.0"], x)
    assert feeding == [
        "stem.conv.weight",
        "stem.bn.weight",
        "stem.bn.bias",
        "stages.0.0.conv.weight",
        "stages.0.0.bn.weight",
        "stages.0.0.bn.bias",
    ]
    assert model.training and not model.head.fc.weight.requires_grad
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_layer_shapes_lists_every_module() -> None:
    model = TransformersStyle()
    rows = {
        name: (kind, shape) for name, kind, shape in layer_shapes(model, torch.ones(1, 4).long())
    }
    assert rows["encoder.layer.0"] == ("EncoderLayer", (1, 4, 6))
    assert rows["pooler"] == ("DataclassLayer", (1, 4, 6))
    assert rows["encoder"] == ("Module", None)  # a container that is never called
    assert all_hooks(model) == 0


def test_cli_layers_prints_names_and_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    from distill.cli import main

    assert main(["layers", "resnet8", "--input-size", "8", "--depth", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "resnet8: output shapes for an input of shape [1, 1, 8, 8]"
    rows = {line.split()[0]: line.split(maxsplit=2)[2] for line in lines[2:]}
    assert rows["stages.1"] == "[1, 32, 4, 4]" and rows["head.fc"] == "[1, 10]"
    assert "stages.1.0" not in rows
    assert main(["layers", "resnet21"]) == 2
    assert "did you mean 'resnet20'" in capsys.readouterr().err
