from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from distill.errors import ConfigError
from distill.models import MODELS, available, count_parameters, create, register

FIXED_NAMES = [
    "cnn-2",
    "cnn-4",
    "cnn-6",
    "cnn-8",
    "cnn-10",
    "resnet8",
    "resnet14",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "resnet8x4",
    "resnet32x4",
]
ALL_NAMES = [*FIXED_NAMES, "wrn-16-2", "wrn-10-1"]


def params(name: str, num_classes: int = 10, in_channels: int = 3) -> int:
    return count_parameters(create(name, num_classes=num_classes, in_channels=in_channels))


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize(("size", "channels"), [(8, 1), (28, 1), (32, 3)])
def test_output_shape_and_backward(name: str, size: int, channels: int) -> None:
    torch.manual_seed(0)
    model = create(name, num_classes=7, in_channels=channels)
    logits = model(torch.randn(2, channels, size, size))
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_fixed_names_are_all_available() -> None:
    names = available()
    assert set(FIXED_NAMES) <= set(names)
    assert any(n.startswith("wrn-D-K") for n in names)
    assert names.index("cnn-8") < names.index("cnn-10")
    assert names.index("resnet56") < names.index("resnet110")


@pytest.mark.parametrize(
    ("name", "sizes", "channels"),
    [
        ("cnn-2", [32, 16], [16, 32]),
        ("cnn-10", [32, 16, 8], [32, 64, 128]),
        ("resnet20", [32, 16, 8], [16, 32, 64]),
        ("resnet8x4", [32, 16, 8], [64, 128, 256]),
        ("wrn-16-2", [32, 16, 8], [32, 64, 128]),
    ],
)
def test_stage_names_and_resolutions(name: str, sizes: list[int], channels: list[int]) -> None:
    model = create(name, num_classes=10, in_channels=3)
    assert [child for child, _ in model.named_children()] == ["stem", "stages", "head"]
    modules = dict(model.named_modules())
    for expected in ("stem", "stages.0", "stages.1", "head", "head.pool", "head.fc"):
        assert expected in modules, expected
    assert isinstance(modules["head.pool"], nn.AdaptiveAvgPool2d)

    shapes: dict[int, torch.Size] = {}
    hooks = [
        modules[f"stages.{i}"].register_forward_hook(
            lambda _m, _i, out, i=i: shapes.__setitem__(i, out.shape)
        )
        for i in range(len(sizes))
    ]
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    assert [shapes[i][-1] for i in range(len(sizes))] == sizes
    assert [shapes[i][1] for i in range(len(sizes))] == channels
    assert len(model.stages) == len(sizes)


def test_block_layer_names() -> None:
    resnet = dict(create("resnet20").named_modules())
    for layer in ("conv1", "bn1", "conv2", "bn2", "shortcut"):
        assert f"stages.1.0.{layer}" in resnet
    assert isinstance(resnet["stages.0.0.shortcut"], nn.Identity)
    assert "stages.1.0.shortcut.conv" in resnet

    wrn = dict(create("wrn-16-2").named_modules())
    for layer in ("bn1", "conv1", "bn2", "conv2", "shortcut"):
        assert f"stages.0.0.{layer}" in wrn
    assert [n for n, _ in wrn["head"].named_children()] == ["bn", "relu", "pool", "flatten", "fc"]

    cnn = dict(create("cnn-4").named_modules())
    assert {"stem.conv", "stem.bn", "stem.relu", "stages.0.0.conv"} <= set(cnn)
    assert isinstance(cnn["stages.1.0"], nn.MaxPool2d)


def test_resnet20_parameter_count() -> None:
    # Standard CIFAR resnet20 with zero-padding shortcuts (option A) has 269,722 parameters; the
    # two 1x1-conv + BN projections add (16*32 + 2*32) + (32*64 + 2*64) = 576 + 2176 = 2,752.
    assert params("resnet20") == 272_474


def test_wide_resnet_sizes_match_the_paper() -> None:
    assert params("wrn-16-2", 100) == pytest.approx(0.70e6, rel=0.02)
    assert params("wrn-40-2", 100) == pytest.approx(2.2e6, rel=0.03)


def test_parameter_counts_grow_along_the_ladders() -> None:
    cnn = [params(f"cnn-{n}", in_channels=1) for n in (2, 4, 6, 8, 10)]
    assert cnn == sorted(cnn) and len(set(cnn)) == len(cnn)
    resnets = [params(f"resnet{d}", in_channels=1) for d in (8, 20, 56, 110)]
    assert resnets == sorted(resnets) and len(set(resnets)) == len(resnets)


def test_count_parameters_includes_frozen() -> None:
    model = create("cnn-2")
    total = count_parameters(model)
    for parameter in model.stem.parameters():
        parameter.requires_grad_(False)
    assert count_parameters(model) == total


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError) as error:
        create("resnet21")
    message = str(error.value)
    assert "'resnet21'" in message
    assert "did you mean 'resnet20'?" in message
    assert "cnn-2" in message and "wrn-D-K" in message


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("wrn-15-2", "6n+4"),
        ("wrn-4-2", "6n+4"),
        ("wrn-16-0", "widen factor"),
        ("wrn-16", "wrn-D-K"),
    ],
)
def test_bad_pattern_names(name: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)) as error:
        create(name)
    assert "got" in str(error.value) or name in str(error.value)


@pytest.mark.parametrize(("num_classes", "in_channels"), [(1, 3), (10, 0), (10, 1.5)])
def test_bad_shapes(num_classes: object, in_channels: object) -> None:
    with pytest.raises(ConfigError, match="must be an integer"):
        create("cnn-2", num_classes=num_classes, in_channels=in_channels)  # type: ignore[arg-type]


def test_same_seed_same_weights() -> None:
    torch.manual_seed(3)
    first = create("resnet8")
    torch.manual_seed(3)
    second = create("resnet8")
    third = create("resnet8")
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # The RNG moved on, so a model built without re-seeding differs.
    assert not torch.equal(first.stem.conv.weight, third.stem.conv.weight)


@pytest.mark.parametrize("name", ["cnn-6", "resnet14", "wrn-10-1"])
def test_arch_attribute(name: str) -> None:
    assert create(name).arch == name


def test_initialisation() -> None:
    model = create("resnet8")
    bn = model.stages[0][0].bn1
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    conv = model.stages[2][0].conv1  # fan_out = 64 * 3 * 3
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)


def test_register_custom_model() -> None:
    name = "test-tiny-mlp"

    @register(name)
    def tiny(num_classes: int, in_channels: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))

    try:
        assert MODELS[name] is tiny
        assert name in available()
        model = create(name, num_classes=3, in_channels=1)
        assert model.arch == name
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)
        with pytest.raises(ConfigError, match="already registered"):
            register(name)(tiny)
    finally:
        MODELS.pop(name, None)


# --- sources by prefix ---------------------------------------------------------------------------


def test_sources_are_chosen_by_prefix_and_registered_by_one_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from distill.models import SOURCES, register_source

    monkeypatch.setattr("distill.models.SOURCES", dict(SOURCES))
    made: list[tuple[str, dict]] = []

    @register_source("toy")
    def toy(name: str, *, width: int = 4, num_classes: int = 2) -> nn.Module:
        made.append((name, {"width": width, "num_classes": num_classes}))
        return nn.Linear(width, num_classes)

    model = create("toy:tiny", width=3, defaults={"num_classes": 5, "in_channels": 1})
    # A run's defaults reach a source only where it names them; its own options win.
    assert made == [("tiny", {"width": 3, "num_classes": 5})] and model.arch == "toy:tiny"
    zoo = create("cnn-2", defaults={"task": "classification", "num_classes": 3})
    assert zoo.head.fc.out_features == 3
    with pytest.raises(ConfigError, match="unexpected keyword argument 'depth'"):
        create("toy:tiny", depth=2)
    with pytest.raises(ConfigError, match=r"unknown model source 'tim:' .* sources: hf:, .*toy:"):
        create("tim:resnet18")
    with pytest.raises(ConfigError, match="already registered"):
        register_source("toy")(toy)
    with pytest.raises(ConfigError, match="image classifier, but the task is 'causal_lm'"):
        create("cnn-2", task="causal_lm")


def test_zoo_families_give_the_assistants_candidates() -> None:
    from distill.models import family

    assert family("cnn-2") == ["cnn-2", "cnn-4", "cnn-6", "cnn-8", "cnn-10"]
    assert "resnet8x4" not in family("resnet20") and "resnet56" in family("resnet20")
    assert family("resnet8x4") == ["resnet8x4", "resnet32x4"]
    assert "wrn-40-2" in family("wrn-16-2") and "wrn-52-1" in family("wrn-16-1", larger="wrn-52-1")
