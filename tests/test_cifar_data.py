"""CIFAR-10/100 from tiny synthetic files in the binary format, and the accuracy benchmark's
``--data cifar100`` on them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data import load_data
from distill.data.cifar import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    PIXELS,
    load_cifar10,
    load_cifar100,
)
from distill.errors import ConfigError, DataError
from distill.recipe import parse_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import accuracy  # noqa: E402


def records(labels: list[tuple[int, ...]], seed: int) -> tuple[bytes, np.ndarray]:
    """Binary records (label bytes, then 3,072 pixel bytes) and the pixels [N, 3, 32, 32]."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(len(labels), 3, 32, 32), dtype=np.uint8)
    data = b"".join(bytes(label) + pixels[i].tobytes() for i, label in enumerate(labels))
    return data, pixels


def write_cifar10(root: Path, per_batch: int = 3) -> dict[str, tuple[list[int], np.ndarray]]:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    written = {}
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for k, name in enumerate(names):
        labels = [(k + i) % 10 for i in range(per_batch)]
        data, pixels = records([(y,) for y in labels], seed=k)
        (folder / name).write_bytes(data)
        written[name] = (labels, pixels)
    return written


def write_cifar100(root: Path, train: int = 40, test: int = 10) -> dict[str, tuple]:
    folder = root / "cifar-100-binary"
    folder.mkdir(parents=True)
    written = {}
    for k, (name, n) in enumerate((("train.bin", train), ("test.bin", test))):
        fine = [(7 * i + k) % 100 for i in range(n)]
        coarse = [f // 5 for f in fine]
        data, pixels = records(list(zip(coarse, fine, strict=True)), seed=10 + k)
        (folder / name).write_bytes(data)
        written[name] = (fine, pixels)
    return written


def test_cifar10_reads_records_in_order_with_rgb_planes(tmp_path: Path) -> None:
    written = write_cifar10(tmp_path)
    raw = load_cifar10(tmp_path)  # the folder holding cifar-10-batches-bin
    assert raw.train_x.shape == (15, 3, 32, 32) and raw.test_x.shape == (3, 3, 32, 32)
    labels = [y for i in range(1, 6) for y in written[f"data_batch_{i}.bin"][0]]
    assert raw.train_y.tolist() == labels and raw.num_classes == 10
    pixels = np.concatenate([written[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    # Byte 1 + c*1024 + r*32 + col of a record is pixel (r, col) of channel c.
    assert torch.equal(raw.train_x, torch.from_numpy(pixels.astype(np.float32) / 255))
    record = (tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()[: 1 + PIXELS]
    assert raw.train_x[0, 2, 3, 4] == record[1 + 2 * 1024 + 3 * 32 + 4] / 255
    again = load_cifar10(tmp_path / "cifar-10-batches-bin")  # the folder itself
    assert torch.equal(again.test_x, raw.test_x)


def test_cifar100_takes_the_fine_labels_and_its_constants(tmp_path: Path) -> None:
    written = write_cifar100(tmp_path)
    raw = load_cifar100(tmp_path)
    assert raw.num_classes == 100
    assert raw.train_y.tolist() == written["train.bin"][0]
    assert raw.test_y.tolist() == written["test.bin"][0]
    bundle = load_data("cifar100", dir=tmp_path, augment="standard", val_fraction=0.25)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 10, 10)
    assert bundle.mean == CIFAR100_MEAN and bundle.std == CIFAR100_STD
    pixels = torch.from_numpy(written["test.bin"][1][0].astype(np.float32) / 255)
    expected = (pixels - torch.tensor(CIFAR100_MEAN).view(3, 1, 1)) / torch.tensor(
        CIFAR100_STD
    ).view(3, 1, 1)
    torch.testing.assert_close(bundle.test[0][0], expected)
    torch.manual_seed(0)
    assert bundle.train[0][0].shape == (3, 32, 32)  # augmented: padded crop + flip


def test_the_python_version_is_refused_with_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name in ("train", "test", "meta"):
        (folder / name).write_bytes(b"\x80\x04 pickled")
    for where in (tmp_path, folder):
        with pytest.raises(DataError, match="python version.*unpickling a file can run any code"):
            load_cifar100(where)
    py10 = tmp_path / "ten" / "cifar-10-batches-py"
    py10.mkdir(parents=True)
    (py10 / "data_batch_1").write_bytes(b"\x80\x04")
    with pytest.raises(DataError, match=r"binary version \(cifar-10-binary\.tar\.gz\)"):
        load_cifar10(tmp_path / "ten")


def test_damaged_and_missing_files(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    train = tmp_path / "cifar-100-binary" / "train.bin"
    train.write_bytes(train.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"train\.bin is truncated .*3074-byte records"):
        load_cifar100(tmp_path)
    data, _ = records([(3, 140)], seed=0)  # fine label 140 > 99
    train.write_bytes(data)
    with pytest.raises(DataError, match=r"fine label 140 in record 0 is out of range 0\.\.99"):
        load_cifar100(tmp_path)
    write_cifar10(tmp_path / "ten")
    (tmp_path / "ten" / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    with pytest.raises(DataError, match=r"missing data_batch_4\.bin of cifar10"):
        load_cifar10(tmp_path / "ten")
    with pytest.raises(DataError, match=r"no cifar10 files .*extract it"):
        load_cifar10(tmp_path / "cifar-100-binary")
    with pytest.raises(ConfigError, match="needs data.dir"):
        load_cifar100()


# -- the accuracy benchmark's --data cifar100 ---------------------------------------------------


def cifar_args(**overrides: object) -> argparse.Namespace:
    fields = dict.fromkeys(("seeds", "subset", "epochs", "teacher_epochs", "batch_size", "pairs"))
    fields.update(overrides)
    return argparse.Namespace(**fields)


def test_benchmark_recipes_follow_repdistiller(tmp_path: Path) -> None:
    write_cifar100(tmp_path)
    b = accuracy.cifar_budget(cifar_args())
    assert b["pairs"] == (("resnet32x4", "resnet8x4"), ("wrn-40-2", "wrn-16-2"))
    assert (b["epochs"], b["batch_size"], b["seeds"]) == (240, 64, 3)
    teachers, recipe = accuracy.cifar_recipes(b, tmp_path / "runs", str(tmp_path), seed=1)
    train = recipe["train"]
    assert train["optimizer"] == {
        "name": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5.0e-4,
    }
    assert train["schedule"] == {"name": "step", "milestones": [150, 180, 210], "gamma": 0.1}
    assert recipe["data"]["name"] == "cifar100" and recipe["data"]["augment"] == "standard"
    kd = [s for s in recipe["stages"] if s["method"] == "kd"]
    assert [(s["temperature"], s["alpha"]) for s in kd] == [(4.0, 0.9), (4.0, 0.9)]
    assert parse_recipe(recipe).seed == 1
    for arch, teacher, _ in teachers:
        assert teacher["models"]["teacher"]["arch"] == arch
        assert teacher["train"]["epochs"] == 240
        parse_recipe(teacher)
    short = accuracy.cifar_train(24)["schedule"]["milestones"]
    assert short == [15, 18, 21]  # the same fractions of a shorter run


def test_benchmark_runs_on_a_tiny_synthetic_cifar100(tmp_path: Path) -> None:
    write_cifar100(tmp_path / "data")
    out = tmp_path / "runs"
    code = accuracy.cli(
        [
            "--data",
            "cifar100",
            "--data-dir",
            str(tmp_path / "data"),
            "--pairs",
            "cnn-4:cnn-2",
            "--epochs",
            "1",
            "--seeds",
            "1",
            "--batch-size",
            "16",
            "--out",
            str(out),
            "--no-docs",
        ]
    )
    assert code == 0
    section = (out / "cifar100.md").read_text()
    assert "| `cnn-4` → `cnn-2` |" in section and "RepDistiller" in section
    assert accuracy.CIFAR_BEGIN in section and accuracy.CIFAR_END in section


def test_benchmark_cifar100_needs_the_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert accuracy.cli(["--data", "cifar100", "--no-docs"]) == 2
    assert "needs --data-dir" in capsys.readouterr().err
