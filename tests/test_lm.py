"""Language models end to end: hf: models on text, KD on tokens with every divergence, the
outputs a user gets (metrics, report samples, save_pretrained folders), vocabularies, and the
mistakes a user makes."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from distill import KD
from distill.cli import main
from distill.errors import DistillError
from distill.losses import DIVERGENCES
from distill.models import create
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe

transformers = pytest.importorskip("transformers")


def llama(hidden: int, layers: int = 1, vocab: int | None = None) -> dict[str, Any]:
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
    }
    return config | ({"vocab_size": vocab} if vocab else {})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small text files of Python source."""
    folder = tmp_path_factory.mktemp("corpus")
    text = (Path(json.__file__).read_text() * 2)[:18000]
    for i in range(3):
        (folder / f"part{i}.txt").write_text(text[i * 6000 : (i + 1) * 6000])
    return folder


def lm_recipe(corpus: Path) -> dict[str, Any]:
    return {
        "seed": 0,
        "task": "causal_lm",
        "data": {"name": "text", "files": [str(corpus)], "seq_len": 32, "batch_size": 16,
                 "split_by": "block"},
        "models": {
            "teacher": {"arch": "hf:", "config": llama(32, 2)},
            "student": {"arch": "hf:", "config": llama(16)},
            "student_kd": {"arch": "hf:", "config": llama(16)},
        },
        "train": {"epochs": 1, "optimizer": {"name": "adamw", "lr": 3.0e-3}},
        "stages": [
            {"method": "train", "model": "teacher"},
            {"method": "train", "model": "student"},
            {"method": "kd", "teacher": "teacher", "student": "student_kd", "temperature": 1.0,
             "alpha": 0.5, "loss": {"kind": "jsd", "beta": 0.5}, "cache": "teacher"},
        ],
    }


def test_a_recipe_distils_a_causal_lm_and_writes_what_users_read(
    corpus: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    pipeline = Pipeline(parse_recipe(lm_recipe(corpus)), out, progress=False)
    summary = pipeline.run()
    assert summary["task"] == "causal_lm"
    entry = summary["models"]["student_kd"]
    for split in ("val", "test"):
        loss, ppl = entry[f"{split}_loss"], entry[f"{split}_perplexity"]
        assert ppl == pytest.approx(torch.tensor(loss).exp().item(), rel=1e-6)
        assert 0 <= entry[f"{split}_token_accuracy"] <= 1
    assert summary["stages"][2]["loss"] == {"kind": "jsd", "beta": 0.5, "skew": 0.1}
    # The teacher's token logits were cached: it ran once per training batch, then never.
    cache = json.loads((out / "progress.json").read_text())["phases"]["student_kd/kd"]["cache"]
    assert cache["filled"] == 1.0 and cache["teacher_calls"] == -(-summary["data"]["train"] // 16)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"val_loss", "val_perplexity", "val_token_accuracy"} <= set(lines[-1])
    assert set(lines[-1]["train"]) == {"ce", "kd", "loss"}
    assert (out / "val_loss.png").is_file() and (out / "final_loss.png").is_file()
    report = (out / "report.md").read_text()
    assert "## Samples" in report and "`student_kd`:" in report
    # The student's folder loads with transformers' own from_pretrained, tokenizer included.
    folder = out / "models" / "student_kd"
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tokenizer.encode("def f(x):\n    return x")])
    trained = pipeline.models["student_kd"].eval()
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, trained(ids).logits, atol=1e-5)


@pytest.mark.parametrize("kind", DIVERGENCES)
def test_kd_on_tokens_with_every_divergence(kind: str) -> None:
    torch.manual_seed(0)
    teacher = create("hf:", config=llama(16, vocab=40), task="causal_lm")
    student = create("hf:", config=llama(8, vocab=40), task="causal_lm")
    ids = torch.randint(0, 40, (3, 10))
    labels = ids.clone()
    labels[2, 6:] = -100  # a padded row: its last positions carry no loss
    batch = {"input_ids": ids, "attention_mask": (labels != -100).long(), "labels": labels}
    method = KD(teacher, student, temperature=2.0, alpha=0.5, loss=kind, task="causal_lm")
    out = method(batch)
    assert out.logits.shape == (3, 9, 40)
    assert torch.isfinite(out.loss) and out.parts["kd"] >= 0
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)


def test_vocabularies_must_match_or_be_shared_on_purpose() -> None:
    torch.manual_seed(0)
    teacher = create("hf:", config=llama(16, vocab=48), task="causal_lm")
    student = create("hf:", config=llama(8, vocab=40), task="causal_lm")
    ids = torch.randint(0, 40, (2, 8))
    batch = {"input_ids": ids, "labels": ids}
    with pytest.raises(ValueError, match="teacher predicts 48 classes and the student 40.*shared"):
        KD(teacher, student, task="causal_lm")(batch)
    shared = KD(teacher, student, task="causal_lm", vocab="shared")
    with torch.no_grad():
        t = teacher(input_ids=ids).logits[:, :-1, :40]
        s = student(input_ids=ids).logits[:, :-1]
    want = torch.nn.functional.kl_div(
        torch.log_softmax(s / 4, -1), torch.log_softmax(t / 4, -1), log_target=True,
        reduction="none",
    ).sum(-1).mean() * 16
    assert torch.allclose(shared(batch).parts["kd"], 0.9 * want, atol=1e-5)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda r: r["models"]["student_kd"]["config"].update(vocab_size=300),
         ["stage 'student_kd' (kd)", "predict the same classes", "vocab: shared"]),
        (lambda r: r["data"].update(name="digits", files=None) or r["data"].pop("files"),
         ["data.seq_len", "digits"]),
        (lambda r: [r["data"].pop(k) for k in ("files", "seq_len", "split_by")]
         and r["data"].update(name="digits"),
         ["task: causal_lm runs on text data", "'digits' is images data"]),
        (lambda r: r.update(task="classification"), ["task: classification runs on images"]),
        (lambda r: r["data"].update(seq_len=1), ["data.seq_len", "greater than or equal to 2"]),
        (lambda r: r["models"]["teacher"].update(arch="hf:/no/such/model", config=None),
         ["models.teacher.arch", "/no/such/model", "no such directory"]),
        (lambda r: r["models"]["teacher"]["config"].pop("model_type"),
         ["models.teacher.arch", "model_type is missing"]),
        (lambda r: r["stages"][2]["loss"].update(beta=1.5), ["stages.2.loss.beta", "in [0, 1]"]),
        (lambda r: r["stages"][2]["loss"].update(kind="reverse-kl"),
         ["stages.2.loss.kind", "did you mean 'reverse_kl'"]),
        (lambda r: r["models"]["student"]["config"].update(vocab_size=100),
         ["models.student.arch", "vocabulary has 100 ids but the tokenizer makes 259"]),
    ],
)
def test_bad_input_is_one_line(
    change: Any, expected: list[str], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    raw = lm_recipe(corpus)
    change(raw)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(copy.deepcopy(raw), sort_keys=False))
    assert main(["run", str(recipe), "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)


def test_a_tokenizer_folder_without_files_and_an_empty_corpus(
    tmp_path: Path, corpus: Path
) -> None:
    raw = lm_recipe(corpus)
    (tmp_path / "tok").mkdir()
    raw["data"]["tokenizer"] = str(tmp_path / "tok")
    with pytest.raises(DistillError, match="tokenizer"):
        Pipeline(parse_recipe(raw), tmp_path / "a", progress=False).run()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "nothing.txt").write_text("")
    raw = lm_recipe(corpus)
    raw["data"]["files"] = [str(tmp_path / "empty")]
    with pytest.raises(DistillError, match="empty"):
        Pipeline(parse_recipe(raw), tmp_path / "b", progress=False).run()
    raw["data"]["files"] = [str(tmp_path / "no-text-here")]
    (tmp_path / "no-text-here").mkdir()
    with pytest.raises(DistillError, match=r"\.txt"):
        Pipeline(parse_recipe(raw), tmp_path / "c", progress=False).run()


def test_the_shipped_lm_recipe_is_the_demo() -> None:
    from distill.demo import demo_recipe
    from distill.recipe import load_recipe

    shipped = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "lm-kd.yaml")
    demo = parse_recipe(demo_recipe("python-stdlib", ["kd"]))
    assert shipped.task == demo.task == "causal_lm"
    assert {n: m.config for n, m in shipped.models.items()} == {
        n: m.config for n, m in demo.models.items()
    }
    assert [s.model_dump() for s in shipped.stages] == [s.model_dump() for s in demo.stages]
    assert shipped.data.model_dump(exclude={"tokenizer"}) == demo.data.model_dump(
        exclude={"tokenizer"}
    )
    assert shipped.data.tokenizer == "byte"


def test_the_teacher_cache_serves_completions_of_every_length(tmp_path: Path) -> None:
    """jsonl completions differ in length, so batches pad to different widths: cached KD
    (the teacher run once per item, read back cut or padded to each batch) trains exactly as
    KD with the teacher run at every step."""
    rows = [
        {"prompt": f"def f{i}(x):", "completion": " return x" + " + 1" * (i % 9)}
        for i in range(48)
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {
        "seed": 0,
        "task": "causal_lm",
        "data": {"name": "jsonl", "files": [str(data)], "seq_len": 64, "batch_size": 8},
        "models": {
            "teacher": {"arch": "hf:", "config": llama(16)},
            "student_kd": {"arch": "hf:", "config": llama(16)},
        },
        "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 3.0e-3}},
        "stages": [
            {"method": "train", "model": "teacher"},
            {"method": "kd", "teacher": "teacher", "student": "student_kd",
             "temperature": 1.0, "alpha": 0.5},
        ],
    }
    found = {}
    for cache in ("none", "teacher"):
        recipe = copy.deepcopy(base)
        recipe["stages"][1] |= {"cache": cache, "cache_dtype": "float32"}
        summary = Pipeline(parse_recipe(recipe), tmp_path / cache, progress=False).run()
        found[cache] = summary["models"]["student_kd"]["val_loss"]
    assert found["teacher"] == pytest.approx(found["none"], abs=1e-5)
