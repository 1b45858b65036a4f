"""The datasets that ship with distill: scikit-learn's digits and Fashion-MNIST."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import torch

from distill.data.bundle import RawData
from distill.data.idx import read_idx
from distill.errors import DataError

__all__ = [
    "DIGITS_MEAN",
    "DIGITS_STD",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "SYSTEM_FASHION_MNIST_DIR",
    "fashion_mnist_search_path",
    "load_digits",
    "load_fashion_mnist",
]

# Mean and standard deviation of all 1,797 digits images after dividing by 16, over every
# pixel (numpy float64): 0.30526, 0.37605.
DIGITS_MEAN = (0.3053,)
DIGITS_STD = (0.3760,)

# Mean and standard deviation of all 60,000 Fashion-MNIST training images after dividing by
# 255, over every pixel (numpy float64): 0.28604, 0.35302.
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

#: Where Debian's ``dataset-fashion-mnist`` package installs the files.
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
#: Environment variable naming a data root; Fashion-MNIST is looked for in its ``fashion-mnist``.
DATA_ENV_VAR = "DISTILL_DATA"

#: The four IDX files, by role, with their number of dimensions.
FASHION_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", 3),
    "train_labels": ("train-labels-idx1-ubyte", 1),
    "test_images": ("t10k-images-idx3-ubyte", 3),
    "test_labels": ("t10k-labels-idx1-ubyte", 1),
}

_HOW_TO_GET = (
    "On Debian/Ubuntu: `apt-get install dataset-fashion-mnist`; or download the four "
    "*-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist into DIR and pass "
    "--data-dir DIR (or data.dir in the recipe)"
)


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits as sklearn_load_digits

    digits = sklearn_load_digits()
    return digits.images, digits.target


def load_digits(dir: str | os.PathLike | None = None) -> RawData:
    """scikit-learn's bundled 8×8 handwritten digits.

    1,797 images ``[1, 8, 8]`` (pixel values 0..16, divided by 16), 10 classes, no test split.
    ``dir`` is accepted for a uniform loader signature and ignored (the data ship with
    scikit-learn).
    """
    images, target = _digits_arrays()
    train_x = torch.from_numpy(np.asarray(images, dtype=np.float32) / np.float32(16.0))
    return RawData(
        train_x=train_x.unsqueeze(1),
        train_y=torch.from_numpy(np.asarray(target, dtype=np.int64)),
        num_classes=10,
        mean=DIGITS_MEAN,
        std=DIGITS_STD,
        default_val_fraction=0.2,
    )


def fashion_mnist_search_path(dir: str | os.PathLike | None = None) -> list[Path]:
    """Directories searched for the Fashion-MNIST files, in order.

    Only ``dir`` when it is given; otherwise ``$DISTILL_DATA/fashion-mnist`` (when the variable
    is set), then :data:`SYSTEM_FASHION_MNIST_DIR`.
    """
    if dir is not None:
        return [Path(dir).expanduser()]
    candidates = []
    root = os.environ.get(DATA_ENV_VAR)
    if root:
        candidates.append(Path(root).expanduser() / "fashion-mnist")
    candidates.append(SYSTEM_FASHION_MNIST_DIR)
    return candidates


def _find_files(directory: Path) -> tuple[dict[str, Path], list[str]]:
    """The four files in ``directory`` (``.gz`` preferred), and the names of any missing."""
    found, missing = {}, []
    for role, (stem, _) in FASHION_MNIST_FILES.items():
        for candidate in (directory / f"{stem}.gz", directory / stem):
            if candidate.is_file():
                found[role] = candidate
                break
        else:
            missing.append(f"{stem}.gz")
    return found, missing


def _locate_fashion_mnist(dir: str | os.PathLike | None) -> dict[str, Path]:
    looked = []
    for directory in fashion_mnist_search_path(dir):
        if not directory.is_dir():
            looked.append(f"{directory} (no such directory)")
            continue
        found, missing = _find_files(directory)
        if not missing:
            return found
        looked.append(f"{directory} (missing {', '.join(missing)})")
    raise DataError(f"Fashion-MNIST files not found; looked in: {'; '.join(looked)}. {_HOW_TO_GET}")


@functools.lru_cache(maxsize=2)
def _read_fashion_mnist(
    files: tuple[tuple[str, str], ...], stamps: tuple[tuple[int, int], ...]
) -> dict[str, np.ndarray]:
    # ``stamps`` (size, mtime) only make the cache key change when a file changes.
    del stamps
    arrays = {}
    for role, path in files:
        arrays[role] = read_idx(path, FASHION_MNIST_FILES[role][1])
    paths = dict(files)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{paths[f'{split}_images']} holds {images.shape[0]} images but "
                f"{paths[f'{split}_labels']} holds {labels.shape[0]} labels"
            )
        if labels.size and int(labels.max()) >= 10:
            raise DataError(
                f"{paths[f'{split}_labels']} has label {int(labels.max())}; "
                "Fashion-MNIST labels are 0..9"
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(
            f"train images are {list(arrays['train_images'].shape[1:])} but test images are "
            f"{list(arrays['test_images'].shape[1:])} in {Path(paths['train_images']).parent}"
        )
    return arrays


def _images(array: np.ndarray) -> torch.Tensor:
    # np.asarray with a new dtype copies, so the cached read-only array is never shared.
    return torch.from_numpy(np.asarray(array, dtype=np.float32) / np.float32(255.0)).unsqueeze(1)


def _labels(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(array, dtype=np.int64))


def load_fashion_mnist(dir: str | os.PathLike | None = None) -> RawData:
    """Fashion-MNIST from its four IDX files (``*-ubyte.gz`` or uncompressed).

    60,000 training and 10,000 test images ``[1, 28, 28]`` (divided by 255), 10 classes. The
    files are looked for as described in :func:`fashion_mnist_search_path`; when ``dir`` is given
    nothing else is tried. Parsed files are cached in-process.
    """
    found = _locate_fashion_mnist(dir)
    files = tuple((role, str(found[role].resolve())) for role in FASHION_MNIST_FILES)
    stamps = tuple((st.st_size, st.st_mtime_ns) for st in (os.stat(path) for _, path in files))
    arrays = _read_fashion_mnist(files, stamps)
    return RawData(
        train_x=_images(arrays["train_images"]),
        train_y=_labels(arrays["train_labels"]),
        test_x=_images(arrays["test_images"]),
        test_y=_labels(arrays["test_labels"]),
        num_classes=10,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        default_val_fraction=0.1,
    )
