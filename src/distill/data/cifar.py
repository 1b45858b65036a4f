"""CIFAR-10 and CIFAR-100 from their *binary* distribution (``data: {name: cifar100, dir: PATH}``).

The files (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version"), extracted:

- CIFAR-10: ``cifar-10-batches-bin/data_batch_1.bin`` ... ``data_batch_5.bin`` and
  ``test_batch.bin``; each record is 1 label byte then 3,072 pixel bytes.
- CIFAR-100: ``cifar-100-binary/train.bin`` and ``test.bin``; each record is 1 coarse label byte
  (20 superclasses), 1 fine label byte (100 classes), then 3,072 pixel bytes. The fine labels
  are the classes; the coarse ones are checked and left out.

Pixels are 1,024 red, 1,024 green then 1,024 blue bytes, each a 32 x 32 image in row order.
``dir`` is the extracted folder itself or the folder holding it. The "python version"
(``cifar-10-batches-py``, ``cifar-100-python``) is refused: its batches are pickles, and
unpickling a file can run any code it carries.

50,000 training and 10,000 test images ``[3, 32, 32]``; a seeded tenth of the training images
is held out for validation unless ``data.val_fraction`` says otherwise. In memory as float32:
about 740 MB for both splits.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from distill.data.bundle import RawData
from distill.errors import ConfigError, DataError

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR100_MEAN",
    "CIFAR100_STD",
    "load_cifar10",
    "load_cifar100",
    "read_cifar_binary",
]

# Per-channel mean and std of the 50,000 training images after dividing by 255 (the constants
# CIFAR code bases normalise with; RepDistiller's for CIFAR-100).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

PIXELS = 3 * 32 * 32

_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"

# name -> (binary folder, train files, test file, label bytes per record, pickled folder and
# a file of it, number of classes)
_LAYOUTS = {
    "cifar10": (
        "cifar-10-batches-bin",
        [f"data_batch_{i}.bin" for i in range(1, 6)],
        "test_batch.bin",
        1,
        ("cifar-10-batches-py", "data_batch_1"),
        10,
        "cifar-10-binary.tar.gz",
    ),
    "cifar100": (
        "cifar-100-binary",
        ["train.bin"],
        "test.bin",
        2,
        ("cifar-100-python", "train"),
        100,
        "cifar-100-binary.tar.gz",
    ),
}


def read_cifar_binary(
    path: str | os.PathLike, label_bytes: int, limits: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """The records of one binary CIFAR file: images uint8 ``[N, 3, 32, 32]`` and labels uint8
    ``[N, label_bytes]`` (CIFAR-100: coarse, fine).

    ``limits`` gives, per label byte, the number of classes it may name.

    Raises:
        DataError: the file cannot be read, its size is not a whole number of records, or a
            label is out of range; the message names the file.
    """
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    record = label_bytes + PIXELS
    if raw.size == 0 or raw.size % record:
        raise DataError(
            f"{path} is truncated or not a binary CIFAR file: {raw.size} bytes is not a whole "
            f"number of {record}-byte records"
        )
    rows = raw.reshape(-1, record)
    labels = rows[:, :label_bytes]
    for column, limit in enumerate(limits):
        worst = int(labels[:, column].max())
        if worst >= limit:
            which = ("coarse ", "fine ")[column] if label_bytes == 2 else ""
            raise DataError(
                f"{path}: {which}label {worst} in record {int(labels[:, column].argmax())} is out "
                f"of range 0..{limit - 1}; the file is damaged or of another dataset"
            )
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def _locate(name: str, dir: str | os.PathLike | None) -> Path:
    folder, train_files, test_file, _, (pickled, pickled_file), _, archive = _LAYOUTS[name]
    if dir is None:
        raise ConfigError(
            f"the {name} dataset needs data.dir: the extracted {folder} folder (binary version, "
            f"{archive} from {_SOURCE}) or the folder holding it"
        )
    root = Path(dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such directory ({name} needs the extracted {folder} folder)")
    for candidate in (root, root / folder):
        if (candidate / test_file).is_file() or (candidate / train_files[0]).is_file():
            missing = [f for f in [*train_files, test_file] if not (candidate / f).is_file()]
            if missing:
                raise DataError(f"{candidate}: missing {', '.join(missing)} of {name}")
            return candidate
    for candidate in (root, root / pickled):
        if (candidate / pickled_file).is_file() and not (candidate / pickled_file).suffix:
            raise DataError(
                f"{candidate} holds the python version of {name} (pickled batches), which "
                "distill does not read: unpickling a file can run any code it carries. Get the "
                f"binary version ({archive}) from {_SOURCE} and pass its extracted {folder} folder"
            )
    if (root / archive).is_file():
        raise DataError(f"{root / archive}: extract it first (tar xzf) and pass {root / folder}")
    raise DataError(
        f"{root}: no {name} files (looked for {test_file} in {root} and {root / folder}); get the "
        f"binary version ({archive}) from {_SOURCE} and extract it"
    )


def _load(name: str, dir: str | os.PathLike | None, mean: tuple, std: tuple) -> RawData:
    _, train_files, test_file, label_bytes, _, num_classes, _ = _LAYOUTS[name]
    folder = _locate(name, dir)
    limits = (20, 100) if label_bytes == 2 else (10,)
    parts = [read_cifar_binary(folder / f, label_bytes, limits) for f in train_files]
    test_images, test_labels = read_cifar_binary(folder / test_file, label_bytes, limits)
    train_images = np.concatenate([images for images, _ in parts])
    train_labels = np.concatenate([labels for _, labels in parts])

    def images(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array.astype(np.float32) / np.float32(255.0))

    def classes(labels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(labels[:, -1].astype(np.int64))  # the fine label is the last

    return RawData(
        train_x=images(train_images),
        train_y=classes(train_labels),
        test_x=images(test_images),
        test_y=classes(test_labels),
        num_classes=num_classes,
        mean=mean,
        std=std,
        default_val_fraction=0.1,
    )


def load_cifar10(dir: str | os.PathLike | None = None) -> RawData:
    """CIFAR-10 from ``cifar-10-batches-bin`` (see the module docstring): 10 classes."""
    return _load("cifar10", dir, CIFAR10_MEAN, CIFAR10_STD)


def load_cifar100(dir: str | os.PathLike | None = None) -> RawData:
    """CIFAR-100 from ``cifar-100-binary`` (see the module docstring): the 100 fine classes."""
    return _load("cifar100", dir, CIFAR100_MEAN, CIFAR100_STD)
