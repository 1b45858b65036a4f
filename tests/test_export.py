"""distill export: a run's trained model as safetensors, a transformers folder or ONNX."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from conftest import TINY_RECIPE
from safetensors import safe_open
from safetensors.torch import load_file

import distill.export
from distill.cli import main
from distill.export import load_trained
from distill.files import safe_load
from distill.models import create, save_model
from distill.pipeline import run_recipe
from distill.recipe import parse_recipe

ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))
ORT = importlib.util.find_spec("onnxruntime") is not None
LLAMA: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 300,
    "max_position_embeddings": 64,
}
GPT2: dict[str, Any] = {  # ties its output layer to the token embeddings
    "model_type": "gpt2",
    "n_embd": 32,
    "n_layer": 1,
    "n_head": 2,
    "vocab_size": 300,
    "n_positions": 64,
}


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run that trained a cnn-2 ``student`` on digits for one epoch."""
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"]["subset"] = 200
    raw["models"] = {"student": {"arch": "cnn-2"}}
    raw["train"]["epochs"] = 1
    raw["stages"] = [{"method": "train", "model": "student"}]
    out = tmp_path_factory.mktemp("zoo") / "run"
    run_recipe(parse_recipe(raw), out, progress=False)
    return out


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as a language-model run leaves it: its recipe, and the checkpoints of a
    llama ``lm`` and a gpt2 ``tied`` whose weights differ from a fresh model's."""
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("hf") / "run"
    raw = {
        "task": "causal_lm",
        "data": {"name": "digits"},
        "models": {"lm": {"arch": "hf:", "config": LLAMA}, "tied": {"arch": "hf:", "config": GPT2}},
        "stages": [{"method": "train", "model": "lm"}, {"method": "train", "model": "tied"}],
    }
    (out / "checkpoints").mkdir(parents=True)
    (out / "recipe.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    options = {"task": "causal_lm"}  # what a run's checkpoints record of the task
    for name, spec in raw["models"].items():
        torch.manual_seed(7)
        model = create(spec["arch"], config=spec["config"])
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(0.01)
        save_model(model, out / "checkpoints" / f"{name}.pt", stage=name, **options)
    return out


def export(*args: str) -> int:
    return main(["export", *args])


def error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


# -- safetensors -----------------------------------------------------------------------------


def test_safetensors_holds_the_trained_weights(
    zoo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "student.safetensors"
    assert (
        export(str(zoo_run), "--model", "student", "--format", "safetensors", "--out", str(out))
        == 0
    )
    assert capsys.readouterr().out.startswith(f"wrote {out}")
    trained = safe_load(zoo_run / "checkpoints" / "student.pt")["state_dict"]
    written = load_file(out)
    assert written.keys() == trained.keys()
    assert all(torch.equal(written[k], trained[k]) for k in trained)
    with safe_open(out, "pt") as f:
        assert f.metadata()["arch"] == "cnn-2"


def test_safetensors_of_tied_weights_loads_back_strictly(hf_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "tied.safetensors"
    assert export(str(hf_run), "--model", "tied", "--format", "safetensors", "--out", str(out)) == 0
    model, _ = load_trained(hf_run, "tied")
    fresh = create("hf:", config=GPT2)
    fresh.load_state_dict(load_file(out))
    assert all(
        torch.equal(a, b)
        for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True)
    )


# -- hf ----------------------------------------------------------------------------------------


def test_hf_folder_loads_with_from_pretrained(
    hf_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    transformers = pytest.importorskip("transformers")
    assert export(str(hf_run), "--model", "lm", "--format", "hf") == 0
    folder = hf_run / "export" / "lm"
    assert capsys.readouterr().out.startswith(f"wrote {folder}")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder)
    trained, _ = load_trained(hf_run, "lm")
    torch.manual_seed(7)
    fresh = create("hf:", config=LLAMA).eval()
    ids = torch.randint(0, LLAMA["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, expected)
        assert not torch.allclose(fresh(input_ids=ids).logits, expected)  # the trained weights


# -- onnx --------------------------------------------------------------------------------------


@pytest.mark.skipif(not ONNX, reason="onnx and onnxscript are not installed (distill[export])")
def test_onnx_gives_the_model_logits_for_any_batch_size(
    zoo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "student.onnx"
    assert export(str(zoo_run), "--model", "student", "--format", "onnx", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["student.onnx"]  # one file, no leftovers
    if not ORT:
        assert "not checked" in printed
        pytest.skip("onnxruntime is not installed: the file was written, not run")
    assert "onnxruntime gives PyTorch's logits to" in printed
    import onnxruntime

    model, _ = load_trained(zoo_run, "student")
    images = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))  # digits' shape
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"inputs": images.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(images), rtol=0, atol=1e-4)


@pytest.mark.skipif(not (ONNX and ORT), reason="onnx, onnxscript and onnxruntime are needed")
def test_onnx_that_does_not_reproduce_the_logits_is_not_written(
    zoo_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(distill.export, "ONNX_TOLERANCE", -1.0)  # no file can pass
    out = tmp_path / "student.onnx"
    assert export(str(zoo_run), "--model", "student", "--format", "onnx", "--out", str(out)) == 2
    assert "onnxruntime's logits differ from PyTorch's" in error(capsys)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not ONNX, reason="onnx and onnxscript are not installed (distill[export])")
def test_onnx_input_shape_can_be_given(zoo_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "student.onnx"
    args = ["--model", "student", "--format", "onnx", "--out", str(out), "--input-shape", "1,8,8"]
    assert export(str(zoo_run), *args) == 0 and out.is_file()


# -- bad input ---------------------------------------------------------------------------------


def test_a_model_the_run_did_not_train_is_refused(
    zoo_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export(str(zoo_run), "--model", "studnet", "--format", "safetensors") == 2
    assert error(capsys) == (
        f"distill: error: --model 'studnet': the run {zoo_run} did not train a model of that "
        "name (did you mean 'student'?); trained models: student"
    )


def test_an_existing_output_is_refused_unless_forced(
    zoo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "student.safetensors"
    out.write_bytes(b"keep me")
    args = [str(zoo_run), "--model", "student", "--format", "safetensors", "--out", str(out)]
    assert export(*args) == 2
    assert error(capsys) == f"distill: error: --out {out}: exists; pass --force to replace it"
    assert out.read_bytes() == b"keep me"
    assert export(*args, "--force") == 0
    assert (
        load_file(out).keys()
        == safe_load(zoo_run / "checkpoints" / "student.pt")["state_dict"].keys()
    )


def test_hf_format_of_a_zoo_model_is_refused(
    zoo_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export(str(zoo_run), "--model", "student", "--format", "hf") == 2
    assert "model 'student' (cnn-2) is not a transformers model" in error(capsys)
    assert not (zoo_run / "export" / "student").exists()


def test_onnx_of_a_transformers_model_is_refused(
    hf_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export(str(hf_run), "--model", "lm", "--format", "onnx") == 2
    assert "model 'lm' (hf:) is a transformers model; export it with --format hf" in error(capsys)


def test_unknown_format_not_a_run_and_bad_shape_are_one_line_errors(
    zoo_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert export(str(zoo_run), "--model", "student", "--format", "onx") == 2
    assert "--format 'onx': unknown format (did you mean 'onnx'?)" in error(capsys)
    assert export(str(tmp_path), "--model", "student", "--format", "onnx") == 2
    assert f"{tmp_path}: not a distill run directory" in error(capsys)
    args = ["--model", "student", "--format", "onnx", "--input-shape", "1,x"]
    assert export(str(zoo_run), *args) == 2
    assert "--input-shape '1,x': give the shape of one input" in error(capsys)
