"""Users' own images in class folders (``data: {name: folder, dir: PATH, image_size: 32}``).

Layout (the class of an image is the name of its folder)::

    PATH/train/CLASS/*.png|jpg|jpeg     required (or PATH/CLASS/... with no train/ folder)
    PATH/val/CLASS/...                  optional: the validation split, used as is
    PATH/test/CLASS/...                 optional: the test split

Classes are the sub-folders of ``train/`` in sorted order (label ``i`` is the ``i``-th name);
``val/`` and ``test/`` may lack some of them but hold no others. Without ``val/``, a seeded share
of ``train/`` is held out (``data.val_fraction``, default 0.2). Files are taken in sorted order,
hidden files and files with other extensions are left out.

Every image is decoded once, with Pillow, into memory: resized so that its shorter side is
``image_size`` (bilinear, antialiased), centre-cropped to ``image_size`` x ``image_size``,
converted to RGB, or to one grey channel (luminance) when every training image is greyscale.
The splits are then held as float32 tensors (as Fashion-MNIST's are), which the teacher
cache's views and the standard augmentation read: ``4 x N x C x image_size²`` bytes for ``N``
images (10,000 RGB images at 64 px: 0.49 GB; at 224 px: 6.0 GB). They are normalised with
per-channel mean and std computed over the training images.

Unreadable images (truncated, corrupt, not an image) are skipped with a warning that lists
their paths; a class left with no image, a folder with no class sub-folders and a folder with no
images at all are :class:`~distill.errors.DataError`.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

from distill.data.bundle import RawData
from distill.errors import ConfigError, DataError

__all__ = ["EXTENSIONS", "SPLITS", "UnreadableImageWarning", "load_folder"]

#: File name endings read as images (case-insensitive).
EXTENSIONS = (".png", ".jpg", ".jpeg")
#: Sub-folders read as splits.
SPLITS = ("train", "val", "test")

_LISTED = 5  # unreadable paths named in the warning
_LUMA = torch.tensor([0.299, 0.587, 0.114])


class UnreadableImageWarning(UserWarning):
    """Some images of a folder dataset could not be decoded and were skipped."""


def _classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(class_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in class_dir.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in EXTENSIONS
    )


def _decode(path: Path, size: int | None) -> tuple[np.ndarray, bool]:
    """``(pixels uint8 [H, W, 3], was greyscale)`` of the image at ``path``, resized and
    centre-cropped to ``size`` when given. Raises whatever Pillow raises on a bad file."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
        image = image.convert("RGB")
        if size is not None:
            width, height = image.size
            scale = size / min(width, height)
            new = (max(size, round(width * scale)), max(size, round(height * scale)))
            if new != image.size:
                image = image.resize(new, Image.Resampling.BILINEAR)
            left, top = (new[0] - size) // 2, (new[1] - size) // 2
            image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8), grey


def _read_split(
    split_dir: Path, classes: list[str], size: int | None, *, require_all: bool
) -> tuple[list[np.ndarray], list[int], list[bool], list[str]]:
    """Decoded images, labels, greyscale flags and unreadable paths of one split."""
    found = _classes(split_dir)
    if not found:
        raise DataError(
            f"{split_dir}: no class sub-folders; put each class's images in a folder of its "
            "own (e.g. train/cat/*.png, train/dog/*.png)"
        )
    stray = [name for name in found if name not in classes]
    if stray:
        raise DataError(
            f"{split_dir}: class folder(s) {', '.join(stray)} not in {split_dir.parent / 'train'} "
            f"(classes: {', '.join(classes)})"
        )
    pixels: list[np.ndarray] = []
    labels: list[int] = []
    grey: list[bool] = []
    bad: list[str] = []
    for label, name in enumerate(classes):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        paths = _images_in(class_dir)
        kept = 0
        for path in paths:
            try:
                array, was_grey = _decode(path, size)
            except Exception:  # truncated, corrupt, not an image: Pillow's errors vary
                bad.append(str(path))
                continue
            pixels.append(array)
            labels.append(label)
            grey.append(was_grey)
            kept += 1
        if kept == 0 and require_all:
            what = "no readable image" if paths else "no image"
            raise DataError(
                f"{class_dir}: class {name!r} has {what} (looked for "
                f"{', '.join('*' + e for e in EXTENSIONS)}); add images or remove the folder"
            )
    return pixels, labels, grey, bad


def _stack(pixels: list[np.ndarray], channels: int, where: Path) -> torch.Tensor:
    shapes = {p.shape for p in pixels}
    if len(shapes) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w, _ in sorted(shapes)[:3])
        raise DataError(
            f"{where}: images have different sizes ({listed}, ...); set data.image_size to "
            "resize them all"
        )
    images = torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float().div_(255.0)
    if channels == 1:  # luminance (ITU-R 601), the grey value itself for greyscale images
        images = torch.einsum("nchw,c->nhw", images, _LUMA).unsqueeze(1)
    return images.contiguous()


def load_folder(dir: str | os.PathLike | None = None, image_size: int | None = None) -> RawData:
    """Read an image folder (see the module docstring) into :class:`RawData`.

    Args:
        dir: the folder holding ``train/`` (and optionally ``val/``, ``test/``), or holding
            the class folders directly.
        image_size: height = width of the decoded images. ``None``: the images' own size,
            which must then be the same for all.

    Returns:
        ``train_x`` ``[N, C, S, S]`` in ``[0, 1]`` (C = 3, or 1 when every training image is
        greyscale), labels by sorted class name, ``val_*``/``test_*`` when those folders exist;
        ``mean``/``std`` left to be computed over the training images.

    Raises:
        ConfigError: ``dir`` not given.
        DataError: no such folder, no class sub-folders, a class without images, a class
            folder in ``val/`` or ``test/`` that ``train/`` lacks, images of different sizes
            without ``image_size``.

    Warns:
        UnreadableImageWarning: listing the paths of the images that could not be decoded
            (they are left out).
    """
    if dir is None:
        raise ConfigError(
            "the folder dataset needs data.dir: the folder holding train/CLASS/*.png (and "
            "optionally val/ and test/)"
        )
    root = Path(dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: no such directory")
    train_dir = root / "train" if (root / "train").is_dir() else root
    classes = _classes(train_dir)
    if not classes:
        raise DataError(
            f"{train_dir}: no class sub-folders; expected {root}/train/CLASS/*.png (one folder "
            "per class, optionally val/ and test/ beside train/)"
        )
    if train_dir == root and any(name in classes for name in ("val", "test")):
        raise DataError(
            f"{root}: has val/ or test/ but no train/ folder; put the training images in "
            f"{root}/train/CLASS/"
        )
    splits = {"train": train_dir}
    if train_dir != root:
        splits.update({s: root / s for s in ("val", "test") if (root / s).is_dir()})
    read = {
        split: _read_split(path, classes, image_size, require_all=split == "train")
        for split, path in splits.items()
    }
    bad = [path for *_, unreadable in read.values() for path in unreadable]
    if bad:
        more = f" and {len(bad) - _LISTED} more" if len(bad) > _LISTED else ""
        warnings.warn(
            f"{root}: skipped {len(bad)} unreadable image(s): {', '.join(bad[:_LISTED])}{more}",
            UnreadableImageWarning,
            stacklevel=2,
        )
    channels = 1 if all(read["train"][2]) else 3
    tensors = {}
    for split, (pixels, labels, _, _) in read.items():
        if not pixels:
            raise DataError(f"{splits[split]}: holds no readable image")
        tensors[split] = (
            _stack(pixels, channels, splits[split]),
            torch.tensor(labels, dtype=torch.int64),
        )
    train_x, train_y = tensors["train"]
    for split, (x, _) in tensors.items():
        if x.shape[1:] != train_x.shape[1:]:
            raise DataError(
                f"{splits[split]}: images are {list(x.shape[2:])} but training images are "
                f"{list(train_x.shape[2:])}; set data.image_size to resize them all"
            )
    val_x, val_y = tensors.get("val", (None, None))
    test_x, test_y = tensors.get("test", (None, None))
    return RawData(
        train_x=train_x,
        train_y=train_y,
        val_x=val_x,
        val_y=val_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=len(classes),
        default_val_fraction=0.2,
    )
