"""Tests for distill.data: built-in datasets, splits, augmentation and user datasets."""

from __future__ import annotations

import gzip
import hashlib
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

from distill.data import (
    DATASETS,
    DataBundle,
    RawData,
    TensorImageDataset,
    builtin,
    bundle_from_datasets,
    load_data,
    register_dataset,
    standard_augment,
)
from distill.data.builtin import DIGITS_MEAN, DIGITS_STD
from distill.data.bundle import normalise
from distill.errors import ConfigError, DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed"
)


def _hashes(dataset) -> Counter:
    return Counter(
        hashlib.sha1(dataset[i][0].numpy().tobytes()).hexdigest() for i in range(len(dataset))
    )


def _stack(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*(dataset[i] for i in range(len(dataset))), strict=True)
    return torch.stack(images), torch.stack(labels)


@pytest.fixture
def index_dataset():
    """A registered dataset whose image i is filled with the value i, so items reveal indices."""
    name = "test-index-images"

    @register_dataset(name)
    def index_images(dir=None):
        n = 50
        images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4)
        return RawData(
            train_x=images.clone(),
            train_y=torch.arange(n) % 3,
            num_classes=3,
            mean=(0.0,),
            std=(1.0,),
        )

    yield name
    DATASETS.pop(name, None)


# --- digits -----------------------------------------------------------------------------------


def test_digits_sizes_shapes_and_normalisation():
    bundle = load_data("digits")
    assert isinstance(bundle, DataBundle)
    assert (len(bundle.train), len(bundle.val)) == (1437, 360)
    assert bundle.test is None
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, (8, 8))
    image, label = bundle.train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and label.dim() == 0
    images, labels = _stack(bundle.train)
    assert labels.min() >= 0 and labels.max() <= 9
    assert abs(images.mean().item()) < 0.05
    assert abs(images.std().item() - 1.0) < 0.05


def test_digits_constants_match_the_data():
    raw = DATASETS["digits"]()
    assert raw.train_x.shape == (1797, 1, 8, 8)
    assert raw.train_x.min() >= 0 and raw.train_x.max() <= 1
    assert raw.train_x.mean().item() == pytest.approx(DIGITS_MEAN[0], abs=1e-4)
    assert raw.train_x.std(correction=0).item() == pytest.approx(DIGITS_STD[0], abs=1e-4)


def test_split_is_seeded_and_disjoint():
    a, b, c = load_data(seed=0), load_data(seed=0), load_data(seed=1)
    assert torch.equal(_stack(a.val)[0], _stack(b.val)[0])
    assert torch.equal(_stack(a.train)[0], _stack(b.train)[0])
    assert not torch.equal(_stack(a.val)[0], _stack(c.val)[0])
    # Train and val partition the whole dataset: same multiset of images, no overlap.
    train_h, val_h = _hashes(a.train), _hashes(a.val)
    assert not set(train_h) & set(val_h)
    raw = DATASETS["digits"]()
    everything = TensorImageDataset(normalise(raw.train_x, DIGITS_MEAN, DIGITS_STD), raw.train_y)
    assert train_h + val_h == _hashes(everything)


def test_split_by_index(index_dataset):
    bundle = load_data(index_dataset, val_fraction=0.2, seed=3)
    train_ids = {int(bundle.train[i][0][0, 0, 0]) for i in range(len(bundle.train))}
    val_ids = {int(bundle.val[i][0][0, 0, 0]) for i in range(len(bundle.val))}
    assert len(val_ids) == 10 and len(train_ids) == 40
    assert train_ids | val_ids == set(range(50)) and not train_ids & val_ids
    # Labels follow their images.
    for i in range(len(bundle.val)):
        image, label = bundle.val[i]
        assert int(label) == int(image[0, 0, 0]) % 3


def test_subset_keeps_the_first_images(index_dataset):
    bundle = load_data(index_dataset, subset=10, val_fraction=0.3)
    ids = {int(ds[i][0][0, 0, 0]) for ds in (bundle.train, bundle.val) for i in range(len(ds))}
    assert ids == set(range(10))
    assert (len(bundle.train), len(bundle.val)) == (7, 3)


def test_subset_sizes():
    bundle = load_data("digits", subset=500)
    assert (len(bundle.train), len(bundle.val)) == (400, 100)


@pytest.mark.parametrize("subset", [1, 0, 1798, 100_000])
def test_subset_out_of_range(subset):
    with pytest.raises(DataError, match="1797") as info:
        load_data("digits", subset=subset)
    assert f"subset={subset}" in str(info.value)


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, "0.2", True])
def test_bad_val_fraction(fraction):
    with pytest.raises(ConfigError, match="val_fraction"):
        load_data("digits", val_fraction=fraction)


def test_unknown_name_suggests():
    with pytest.raises(ConfigError) as info:
        load_data("fashion_mnist")
    message = str(info.value)
    assert "did you mean 'fashion-mnist'" in message
    assert "digits" in message


def test_unknown_augment():
    with pytest.raises(ConfigError, match="'none', 'standard'"):
        load_data("digits", augment="autoaugment")


def test_empty_and_malformed_registered_datasets():
    @register_dataset("test-empty")
    def empty(dir=None):
        return RawData(torch.zeros(0, 1, 4, 4), torch.zeros(0, dtype=torch.int64), num_classes=2)

    @register_dataset("test-bad-label")
    def bad_label(dir=None):
        return RawData(torch.zeros(5, 1, 4, 4), torch.tensor([0, 1, 7, 0, 1]), num_classes=2)

    try:
        with pytest.raises(DataError, match="no training images"):
            load_data("test-empty")
        with pytest.raises(DataError, match="item 2 has label 7"):
            load_data("test-bad-label")
        with pytest.raises(ConfigError, match="already registered"):
            register_dataset("digits")(empty)
    finally:
        DATASETS.pop("test-empty", None)
        DATASETS.pop("test-bad-label", None)


def test_registered_dataset_without_constants_is_normalised():
    @register_dataset("test-stats")
    def stats(dir=None):
        gen = torch.Generator().manual_seed(0)
        return RawData(
            torch.rand(40, 3, 5, 5, generator=gen) * 0.5 + 0.2,
            torch.arange(40) % 4,
            num_classes=4,
        )

    try:
        bundle = load_data("test-stats", val_fraction=0.25)
        assert (bundle.in_channels, bundle.image_size, bundle.num_classes) == (3, (5, 5), 4)
        images = torch.cat([_stack(bundle.train)[0], _stack(bundle.val)[0]])
        per_channel = images.transpose(0, 1).reshape(3, -1)
        assert torch.allclose(per_channel.mean(1), torch.zeros(3), atol=1e-4)
        assert torch.allclose(per_channel.std(1), torch.ones(3), atol=1e-3)
    finally:
        DATASETS.pop("test-stats", None)


# --- Fashion-MNIST ----------------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray, *, truncate: int = 0) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.astype(np.uint8).tobytes()
    if truncate:
        payload = payload[:-truncate]
    with gzip.open(path, "wb") as f:
        f.write(payload)


def _write_tiny_fashion(directory: Path, n_train: int = 20, n_test: int = 10) -> None:
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(directory / f"{split}-images-idx3-ubyte.gz", images)
        _write_idx(directory / f"{split}-labels-idx1-ubyte.gz", labels)


def test_tiny_idx_files_load_from_dir(tmp_path):
    _write_tiny_fashion(tmp_path)
    bundle = load_data("fashion-mnist", dir=tmp_path)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (18, 2, 10)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, (28, 28))
    image, label = bundle.test[3]
    assert image.shape == (1, 28, 28) and int(label) == 3
    # Pixel values are /255 then normalised with the fixed constants.
    raw = DATASETS["fashion-mnist"](dir=tmp_path)
    assert raw.train_x.min() >= 0 and raw.train_x.max() <= 1
    expected = (raw.test_x[3] - builtin.FASHION_MNIST_MEAN[0]) / builtin.FASHION_MNIST_STD[0]
    assert torch.allclose(image, expected)


def test_truncated_idx_file_names_the_file(tmp_path):
    _write_tiny_fashion(tmp_path)
    broken = tmp_path / "train-images-idx3-ubyte.gz"
    images = np.zeros((20, 28, 28), dtype=np.uint8)
    _write_idx(broken, images, truncate=100)
    with pytest.raises(DataError, match="truncated") as info:
        load_data("fashion-mnist", dir=tmp_path)
    assert str(broken) in str(info.value)


def test_cut_gzip_stream_names_the_file(tmp_path):
    _write_tiny_fashion(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-12])
    with pytest.raises(DataError) as info:
        load_data("fashion-mnist", dir=tmp_path)
    assert str(labels) in str(info.value)


def test_bad_magic_number(tmp_path):
    _write_tiny_fashion(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    _write_idx(path, np.zeros((20, 2), dtype=np.uint8))  # 2-D where labels are 1-D
    with pytest.raises(DataError, match="magic number 0x00000802"):
        load_data("fashion-mnist", dir=tmp_path)


def test_missing_dir_does_not_fall_back(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_data("fashion-mnist", dir=missing)
    message = str(info.value)
    assert str(missing) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(FASHION_DIR) not in message


def test_incomplete_dir_lists_missing_files(tmp_path):
    _write_tiny_fashion(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_data("fashion-mnist", dir=tmp_path)


def test_search_path_lists_every_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_DATA", str(tmp_path / "root"))
    monkeypatch.setattr(builtin, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "system")
    with pytest.raises(DataError) as info:
        load_data("fashion-mnist")
    message = str(info.value)
    assert str(tmp_path / "root" / "fashion-mnist") in message
    assert str(tmp_path / "system") in message
    assert "zalandoresearch/fashion-mnist" in message
    # $DISTILL_DATA/fashion-mnist is used when it holds the files.
    _write_tiny_fashion(tmp_path / "root" / "fashion-mnist")
    assert len(load_data("fashion-mnist").test) == 10


@needs_fashion
def test_fashion_mnist_subset():
    bundle = load_data("fashion-mnist", subset=1000)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (900, 100, 10_000)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (10, 1, (28, 28))
    image, label = bundle.train[0]
    assert image.shape == (1, 28, 28) and 0 <= int(label) <= 9
    assert bundle.test[0][0].shape == (1, 28, 28)


# --- augmentation -----------------------------------------------------------------------------


def test_standard_augment_train_only_and_reproducible():
    plain = load_data("digits")
    augmented = load_data("digits", augment="standard")
    image = plain.train[0][0]
    torch.manual_seed(7)
    first = augmented.train[0][0]
    torch.manual_seed(7)
    again = augmented.train[0][0]
    assert first.shape == image.shape == (1, 8, 8)
    assert torch.equal(first, again)
    assert any(not torch.equal(augmented.train[0][0], image) for _ in range(20))
    # Validation items are never augmented.
    for _ in range(5):
        assert torch.equal(augmented.val[0][0], plain.val[0][0])
    assert torch.equal(augmented.train.images[0], image)


def test_standard_augment_pads_with_normalised_black(index_dataset):
    # Images are constant (image i is all i) with mean 0 and std 1, so black pads as 0.
    bundle = load_data(index_dataset, augment="standard")
    value = bundle.train.images[5, 0, 0, 0].item()
    assert value > 0
    padded_views = 0
    for seed in range(30):
        torch.manual_seed(seed)
        view, _ = bundle.train[5]
        assert set(view.flatten().tolist()) <= {value, 0.0}
        padded_views += bool((view == 0).any())
    assert padded_views > 0
    black = (0.0 - DIGITS_MEAN[0]) / DIGITS_STD[0]
    digits = load_data("digits", augment="standard")
    assert torch.allclose(digits.train.transform.keywords["fill"], torch.tensor([black]))


def test_standard_augment_with_generator():
    img = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 16, 16)
    a = standard_augment(img, torch.Generator().manual_seed(11), fill=(-1.0, -2.0))
    b = standard_augment(img, torch.Generator().manual_seed(11), fill=(-1.0, -2.0))
    assert a.shape == img.shape and torch.equal(a, b)
    views = [standard_augment(img, torch.Generator().manual_seed(s)) for s in range(20)]
    assert any(not torch.equal(v, img) for v in views)
    # Padding is at most 16 // 8 = 2 rows and 2 columns, filled per channel.
    for seed in range(50):
        view = standard_augment(img, torch.Generator().manual_seed(seed), fill=(-1.0, -2.0))
        assert (view >= 0).sum() >= 2 * 14 * 14
        assert set(view[0][view[0] < 0].tolist()) <= {-1.0}
        assert set(view[1][view[1] < 0].tolist()) <= {-2.0}
    # The global RNG is not touched when a generator is given.
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    standard_augment(img, torch.Generator().manual_seed(1))
    assert torch.equal(torch.rand(1), expected)


def test_standard_augment_covers_every_offset_and_flip():
    img = torch.arange(64, dtype=torch.float32).view(1, 8, 8)
    torch.manual_seed(0)
    seen = {tuple(standard_augment(img, fill=-1.0).flatten().tolist()) for _ in range(600)}
    # pad 1 -> 3 × 3 offsets, each with or without a flip.
    assert len(seen) == 18


# --- user datasets ----------------------------------------------------------------------------


def _user_dataset(n: int = 30, classes: int = 4) -> TensorDataset:
    images = torch.randn(n, 3, 6, 5)
    labels = torch.arange(n) % classes
    return TensorDataset(images, labels)


def test_bundle_from_datasets_splits_and_infers():
    train = _user_dataset()
    bundle = bundle_from_datasets(train, val_fraction=0.2, seed=1)
    assert (len(bundle.train), len(bundle.val)) == (24, 6)
    assert isinstance(bundle.train, Subset) and isinstance(bundle.val, Subset)
    assert not set(bundle.train.indices) & set(bundle.val.indices)
    assert (bundle.num_classes, bundle.in_channels, bundle.image_size) == (4, 3, (6, 5))
    assert bundle.name == "custom" and bundle.test is None
    again = bundle_from_datasets(train, val_fraction=0.2, seed=1)
    assert again.val.indices == bundle.val.indices


def test_bundle_from_datasets_with_val_and_generic_dataset():
    class Plain(torch.utils.data.Dataset):
        def __init__(self, labels):
            self.labels = labels

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            return torch.zeros(1, 4, 4), self.labels[i]

    bundle = bundle_from_datasets(
        Plain([0, 1, 2]), Plain([1, 5]), Plain([0]), name="mine", val_fraction=0.5
    )
    assert bundle.num_classes == 6 and len(bundle.train) == 3 and len(bundle.val) == 2
    assert bundle.name == "mine" and len(bundle.test) == 1
    with pytest.raises(DataError, match="item 1 has label 5"):
        bundle_from_datasets(Plain([0, 1, 2]), Plain([1, 5]), num_classes=3)
    with pytest.raises(DataError, match="label"):
        bundle_from_datasets(Plain([0, 1.5, 2]))


def test_bundle_from_datasets_bad_label():
    images = torch.zeros(6, 1, 4, 4)
    with pytest.raises(DataError, match=r"item 3 has label -1"):
        bundle_from_datasets(TensorDataset(images, torch.tensor([0, 1, 2, -1, 0, 1])))
    with pytest.raises(DataError, match=r"item 4 has label 9"):
        bundle_from_datasets(TensorDataset(images, torch.tensor([0, 1, 2, 1, 9, 1])), num_classes=3)
    with pytest.raises(DataError, match="empty"):
        bundle_from_datasets(TensorDataset(images[:0], torch.zeros(0, dtype=torch.int64)))
    with pytest.raises(ConfigError, match="val_fraction"):
        bundle_from_datasets(
            TensorDataset(images, torch.zeros(6, dtype=torch.int64)), val_fraction=1
        )
