"""Dict batches: what the loop feeds methods, whatever the dataset's items look like, and the
``method(x, y)`` shorthand."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

import distill
from distill.config import TrainConfig
from distill.data import bundle_from_datasets, load_data
from distill.data.batches import BatchItems, as_item, select
from distill.errors import DataError
from distill.models import create
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe
from distill.training import Trainer


class WithIndex(Dataset):
    """mdistiller's item format: ``(image, label, index)``."""

    def __init__(self, n: int = 96) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 8, 8, generator=g)
        self.y = torch.randint(0, 4, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[index], self.y[index], index


def test_items_become_dicts_with_their_position() -> None:
    x, y = torch.zeros(1, 2, 2), torch.tensor(3)
    assert as_item((x, y), 7) == {"inputs": x, "targets": y, "index": 7}
    assert as_item((x, y, 99), 7)["index"] == 7, "index is the position, not the third item"
    assert as_item({"input_ids": x, "index": 5}, 7)["index"] == 5
    with pytest.raises(DataError, match="item 7 is a Tensor"):
        as_item(x, 7)
    batch = default_collate([BatchItems(WithIndex())[i] for i in range(4)])
    assert set(batch) == {"inputs", "targets", "index"} and batch["index"].tolist() == [0, 1, 2, 3]
    half = select(batch, torch.tensor([True, False, True, False]))
    assert half["index"].tolist() == [0, 2] and half["inputs"].shape == (2, 1, 8, 8)


def test_a_dataset_of_image_label_index_triples_trains_in_a_recipe(tmp_path: Path) -> None:
    """v1 crashed here: Supervised.forward() got an unexpected keyword argument 'keys'."""
    bundle = bundle_from_datasets(WithIndex(), num_classes=4, val_fraction=0.25)
    recipe = parse_recipe(
        {
            "data": {"batch_size": 16},
            "models": {"teacher": {"arch": "cnn-2"}, "student": {"arch": "cnn-2"}},
            "train": {"epochs": 1},
            "stages": [
                {"method": "train", "model": "teacher"},
                {"method": "kd", "teacher": "teacher", "student": "student", "cache": "teacher"},
            ],
        }
    )
    summary = Pipeline(recipe, tmp_path / "run", data=bundle, progress=False).run()
    assert set(summary["models"]) == {"teacher", "student"}
    assert 0.0 <= summary["models"]["student"]["val_accuracy"] <= 1.0


def test_a_dict_batch_and_the_x_y_shorthand_train_alike() -> None:
    data = load_data("digits", subset=64)
    torch.manual_seed(0)
    teacher = create("cnn-2", num_classes=10, in_channels=1)
    students = []
    for form in ("dict", "x, y"):
        torch.manual_seed(1)
        student = create("cnn-2", num_classes=10, in_channels=1)
        method = distill.KD(teacher, student)
        optimizer = torch.optim.SGD(method.trainable_parameters(), lr=0.1)
        for x, y in DataLoader(data.train, batch_size=16):
            out = method({"inputs": x, "targets": y}) if form == "dict" else method(x, y)
            optimizer.zero_grad()
            out.loss.backward()
            optimizer.step()
        students.append(student.state_dict())
    for key, value in students[0].items():
        assert torch.equal(value, students[1][key]), key
    with pytest.raises(TypeError, match="not both"):
        method({"inputs": x, "targets": y}, y)


def test_the_loop_hands_methods_dicts_and_sets_progress() -> None:
    seen: list[tuple[set[str], distill.Progress]] = []

    class Recording(distill.Supervised):
        def forward(self, batch):  # noqa: ANN001, ANN201
            seen.append((set(batch), self.progress))
            return super().forward(batch)

    data = load_data("digits", subset=80)
    student = create("cnn-2", num_classes=10, in_channels=1)
    config = TrainConfig.model_validate({"epochs": 2, "grad_accum_steps": 2})
    Trainer(config, batch_size=16, progress=False).fit(Recording(student), data.train, None, {})
    assert all(keys == {"inputs", "targets", "index"} for keys, _ in seen)
    # 64 training images: 4 batches an epoch, 2 optimizer steps an epoch.
    progress = [(p.epoch, p.step, p.epochs, p.steps_per_epoch) for _, p in seen]
    assert progress == [(0, 0, 2, 2), (0, 0, 2, 2), (0, 1, 2, 2), (0, 1, 2, 2),
                        (1, 2, 2, 2), (1, 2, 2, 2), (1, 3, 2, 2), (1, 3, 2, 2)]
    assert seen[-1][1].fraction == pytest.approx(0.75)
