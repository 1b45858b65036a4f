"""Image folders (``data: {name: folder, dir: PATH}``) on tiny PNG and JPEG files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from distill.cache import ViewDataset
from distill.cli import main
from distill.data import load_data
from distill.data.folder import UnreadableImageWarning, load_folder
from distill.errors import ConfigError, DataError

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def solid(path: Path, color: tuple[int, ...], size: tuple[int, int] = (4, 4), mode="RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


def make_folder(root: Path, splits=("train", "val", "test"), per_class: int = 3) -> Path:
    """Classes 'cat' (red images) and 'dog' (blue), ``per_class`` images each per split."""
    for split in splits:
        for name, color in (("dog", BLUE), ("cat", RED)):
            for i in range(per_class):
                solid(root / split / name / f"{i}.png", color)
    return root


def test_splits_labels_and_pixels(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets")
    raw = load_folder(root)
    assert raw.num_classes == 2
    assert raw.train_x.shape == (6, 3, 4, 4) and raw.val_x.shape == (6, 3, 4, 4)
    assert raw.test_x.shape == (6, 3, 4, 4)
    # Sorted class names: cat = 0 (red), dog = 1 (blue); files in sorted order.
    assert raw.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(raw.train_x[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.equal(raw.train_x[5, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))


def test_load_data_normalises_with_the_training_statistics(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets")
    solid(root / "train" / "cat" / "3.jpg", GREEN)
    bundle = load_data("folder", dir=root)
    train = bundle.train.images
    assert len(bundle.train) == 7 and len(bundle.val) == 6 and len(bundle.test) == 6
    # Per channel over the training images: mean 0 and (unbiased) std 1 after normalising.
    flat = train.transpose(0, 1).reshape(3, -1).double()
    torch.testing.assert_close(
        flat.mean(dim=1), torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        flat.std(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0
    )
    red = torch.tensor([1.0, 0.0, 0.0])
    mean, std = torch.tensor(bundle.mean), torch.tensor(bundle.std)
    torch.testing.assert_close(bundle.val[0][0][:, 0, 0], (red - mean) / std)
    # The red share of the 7 training images: 3 of 7 (JPEG's green is close to pure).
    assert bundle.mean[0] == pytest.approx(3 / 7, abs=1e-6)


def test_resize_keeps_the_centre_of_the_image(tmp_path: Path) -> None:
    image = np.zeros((4, 16, 3), dtype=np.uint8)  # 16 wide, 4 high: red | green (8) | blue
    image[:, :4] = RED
    image[:, 4:12] = GREEN
    image[:, 12:] = BLUE
    path = tmp_path / "wide" / "train" / "a" / "0.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(image).save(path)
    solid(tmp_path / "wide" / "train" / "b" / "0.png", RED, size=(4, 4))
    raw = load_folder(tmp_path / "wide", image_size=4)
    # The shorter side is already 4: the middle 4 columns (all green) are kept as they are.
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 4, 4)
    assert torch.equal(raw.train_x[0], green)
    small = load_folder(tmp_path / "wide", image_size=2)  # halved to 8 x 2, then the middle
    assert small.train_x.shape == (2, 3, 2, 2)
    torch.testing.assert_close(small.train_x[0], green[:, :2, :2])


def test_greyscale_images_give_one_channel(tmp_path: Path) -> None:
    for name, value in (("light", 200), ("dark", 20)):
        for i in range(2):
            solid(tmp_path / "g" / name / f"{i}.png", (value,), mode="L")
    raw = load_folder(tmp_path / "g")  # no train/: the class folders directly
    assert raw.train_x.shape == (4, 1, 4, 4) and raw.val_x is None and raw.test_x is None
    torch.testing.assert_close(raw.train_x[0, 0, 0, 0], torch.tensor(20 / 255))
    bundle = load_data("folder", dir=tmp_path / "g", seed=3)
    assert len(bundle.train) + len(bundle.val) == 4 and len(bundle.val) == 1  # seeded split
    assert bundle.in_channels == 1


def test_augmentation_and_the_teacher_caches_views(tmp_path: Path) -> None:
    bundle = load_data("folder", dir=make_folder(tmp_path / "pets"), augment="standard")
    torch.manual_seed(0)
    image, label = bundle.train[0]
    assert image.shape == (3, 4, 4) and int(label) == 0
    views = ViewDataset(bundle.train, views=2, seed=0)
    first = views.view(0, 1)
    assert first["inputs"].shape == (3, 4, 4)
    assert torch.equal(first["inputs"], views.view(0, 1)["inputs"])  # the same view again


def test_corrupt_images_are_skipped_and_named(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets", splits=("train",))
    bad = root / "train" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "train" / "dog" / "notes.txt").write_text("not an image, not read")
    with pytest.warns(UnreadableImageWarning, match=r"skipped 1 unreadable image\(s\): .*broken"):
        raw = load_folder(root)
    assert raw.train_x.shape[0] == 6


def test_a_class_of_unreadable_images_is_refused(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "pets", splits=("train",))
    (root / "train" / "eel").mkdir()
    (root / "train" / "eel" / "0.jpg").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreadableImageWarning)
        with pytest.raises(DataError, match=r"eel: class 'eel' has no readable image"):
            load_folder(root)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ("no classes", r"no class sub-folders; expected .*train/CLASS/\*\.png"),
        ("empty class", r"emu: class 'emu' has no image \(looked for \*\.png"),
        ("stray val class", r"val: class folder\(s\) eel not in .*train"),
        ("sizes differ", r"different sizes \(4x4, 5x6.*set data.image_size"),
        ("val without train", r"has val/ or test/ but no train/ folder"),
    ],
)
def test_bad_folders(tmp_path: Path, layout: str, message: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    if layout == "no classes":
        solid(root / "0.png", RED)
    elif layout == "empty class":
        make_folder(root, splits=("train",))
        (root / "train" / "emu").mkdir()
    elif layout == "stray val class":
        make_folder(root, splits=("train",))
        solid(root / "val" / "eel" / "0.png", RED)
    elif layout == "sizes differ":
        make_folder(root, splits=("train",))
        solid(root / "train" / "cat" / "big.png", RED, size=(6, 5))
    elif layout == "val without train":
        solid(root / "val" / "cat" / "0.png", RED)
    with pytest.raises(DataError, match=message):
        load_folder(root)


def test_missing_dir_and_image_size(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs data.dir"):
        load_data("folder")
    with pytest.raises(DataError, match="no such directory"):
        load_folder(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="image_size must be a positive integer"):
        load_data("folder", dir=tmp_path, image_size=0)


def test_other_datasets_are_resized(tmp_path: Path) -> None:
    bundle = load_data("digits", subset=20, image_size=16)
    assert bundle.image_size == (16, 16) and bundle.train[0][0].shape == (1, 16, 16)


def test_a_recipe_trains_on_a_folder_and_an_empty_class_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_folder(tmp_path / "pets", splits=("train", "val"), per_class=4)
    recipe = {
        "data": {
            "name": "folder",
            "dir": str(root),
            "image_size": 8,
            "batch_size": 4,
            "augment": "standard",
        },
        "models": {"student": {"arch": "cnn-2"}},
        "train": {"epochs": 1},
        "stages": [{"method": "train", "model": "student"}],
    }
    path = tmp_path / "folder.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    (root / "train" / "emu").mkdir()
    capsys.readouterr()
    assert main(["run", str(path), "--out", str(tmp_path / "run2"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "data (folder):" in err[0] and "class 'emu' has no image" in err[0]
