"""``train.strategy: fsdp`` and teacher placements: on 2 CPU processes (gloo, torchrun) KD of a
tiny llama student ends with the weights of one process with the global batch, a killed run
resumes to the same weights, a sharded teacher holds half its parameters per process; and the
mistakes a user makes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from _weights import assert_same_weights, final_weights
from torch import nn

from distill.errors import ConfigError
from distill.models import create
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe
from distill.teachers import Teacher
from distill.training.fsdp import alias_copy, find_blocks

transformers = pytest.importorskip("transformers")
TESTS = Path(__file__).parent
TORCHRUN = shutil.which("torchrun")
needs_torchrun = pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed")

LLAMA = {"model_type": "llama", "intermediate_size": 32, "num_attention_heads": 2,
         "num_key_value_heads": 1, "max_position_embeddings": 128}


def lm_recipe(data: dict[str, Any], kd: dict[str, Any] | None = None) -> dict[str, Any]:
    """A llama teacher trained, then a llama student distilled from it (2 epochs each)."""
    return {
        "seed": 0,
        "task": "causal_lm",
        "data": data,
        "models": {
            "teacher": {"arch": "hf:", "config": {**LLAMA, "hidden_size": 16,
                                                  "num_hidden_layers": 2}},
            "student": {"arch": "hf:", "config": {**LLAMA, "hidden_size": 8,
                                                  "num_hidden_layers": 2}},
        },
        "train": {"epochs": 2, "optimizer": {"name": "adamw", "lr": 0.01},
                  "clip_grad_norm": 1.0},
        "stages": [
            {"method": "train", "model": "teacher"},
            {"method": "kd", "teacher": "teacher", "student": "student", **(kd or {})},
        ],
    }


def command(script: str, processes: int, *args: str) -> list[str]:
    if processes == 1:
        return [sys.executable, str(TESTS / script), *args]
    from test_distributed import free_port

    assert TORCHRUN is not None
    return [TORCHRUN, "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), str(TESTS / script), *args]


def distill(out: Path, recipe: Path, processes: int, *extra: str) -> subprocess.CompletedProcess:
    """``distill run RECIPE --out OUT`` on ``processes`` processes (a hang fails in 300 s)."""
    args = ["run", str(recipe), "--out", str(out), "--quiet", *extra]
    return subprocess.run(
        command("_ddp_runner.py", processes, *args), capture_output=True, text=True,
        timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def token_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Prompts and completions of unequal lengths (the prompt carries no loss), so processes
    and batches hold unequal token counts: one process with batch 16, and fsdp on two with 8."""
    root = tmp_path_factory.mktemp("fsdp-tokens")
    records = root / "records.jsonl"
    with records.open("w") as f:
        for i in range(40):
            prompt = "def f(x):\n" + "    x += 1\n" * (i % 5)
            f.write(json.dumps({"prompt": prompt, "completion": "    return x" + "!" * (i % 7)}))
            f.write("\n")
    data = {"name": "jsonl", "files": [str(records)], "seq_len": 96, "subset": 32,
            "batch_size": 8, "test_fraction": 0}
    recipe = root / "lm.yaml"
    recipe.write_text(yaml.safe_dump(lm_recipe(data, {"loss": {"kind": "reverse_kl"}})))
    ok(distill(root / "single", recipe, 1, "--set", "data.batch_size=16"))
    ok(distill(root / "fsdp", recipe, 2, "--set", "train.strategy=fsdp"))
    return {"single": root / "single", "fsdp": root / "fsdp"}


@pytest.fixture(scope="module")
def cached_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fixed-length blocks of text; the KD stage caches the teacher's outputs in memory, on
    each process for itself, and its teacher is sharded with the shards in host memory."""
    root = tmp_path_factory.mktemp("fsdp-cache")
    (root / "corpus").mkdir()
    (root / "corpus" / "a.txt").write_text(Path(json.__file__).read_text()[:6000])
    data = {"name": "text", "files": [str(root / "corpus")], "seq_len": 32, "subset": 32,
            "batch_size": 8, "split_by": "block", "test_fraction": 0}
    raw = lm_recipe(data, {"cache": "teacher", "cache_dtype": "float32"})
    raw["train"]["strategy"] = "fsdp"
    raw["train"]["teacher_placement"] = "cpu_offload"
    recipe = root / "lm.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    ok(distill(root / "single", recipe, 1, "--set", "data.batch_size=16"))
    ok(distill(root / "fsdp", recipe, 2))
    return {"single": root / "single", "fsdp": root / "fsdp", "recipe": recipe, "root": root}


@needs_torchrun
def test_fsdp_on_two_processes_ends_with_the_weights_of_one_process(token_runs: dict) -> None:
    single, fsdp = token_runs["single"], token_runs["fsdp"]
    want, got = final_weights(single), final_weights(fsdp)
    assert set(want) == set(got) == {"teacher", "student"}
    assert_same_weights(want, got, atol=1e-5)
    summary = json.loads((fsdp / "summary.json").read_text())
    for stage in summary["stages"]:  # each process held half of every sharded model
        placement = stage["phases"][0]["placement"]
        for name, where in placement.items():
            whole = summary["models"][name]["params"] * 4
            assert where["placement"] == "shard"
            assert where["parameter_bytes"] == pytest.approx(whole / 2, rel=0.05)
    assert len((fsdp / "metrics.jsonl").read_text().splitlines()) == 4  # one writer
    # Evaluated on the whole validation set by sharded copies, as one process does.
    alone = json.loads((single / "summary.json").read_text())["models"]
    for name, entry in summary["models"].items():
        assert entry["val_loss"] == pytest.approx(alone[name]["val_loss"], rel=1e-5)
    # The saved folder is an ordinary transformers model, loaded on one process.
    loaded = transformers.AutoModelForCausalLM.from_pretrained(fsdp / "models" / "student")
    assert_same_weights(
        {"student": got["student"]}, {"student": loaded.state_dict()}, atol=0
    )


@needs_torchrun
def test_a_sharded_teacher_with_an_output_cache_runs_in_step_with_every_process(
    cached_runs: dict,
) -> None:
    """In epoch 2 each process's memory cache holds the samples it saw in epoch 1, so one
    process may lack outputs for a batch while the other has them all: the teacher's forward
    (a collective call when sharded) must still run on both, or the run hangs."""
    assert_same_weights(
        final_weights(cached_runs["single"]), final_weights(cached_runs["fsdp"]), atol=1e-5
    )
    progress = json.loads((cached_runs["fsdp"] / "progress.json").read_text())
    phase = progress["phases"]["student/kd"]
    assert phase["placement"]["teacher"]["placement"] == "cpu_offload"
    assert phase["cache"]["filled"] < 1.0  # the main process saw part of the set only


@needs_torchrun
def test_a_killed_fsdp_run_resumes_to_the_same_weights(cached_runs: dict) -> None:
    out = cached_runs["root"] / "killed"
    proc = subprocess.Popen(
        command("_ddp_runner.py", 2, "run", str(cached_runs["recipe"]), "--out", str(out),
                "--quiet"),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text()):
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    # Killed in the teacher's second epoch: its first epoch's checkpoint (sharded optimizer
    # state gathered whole) is where the run resumes.
    assert len(metrics.read_text().splitlines()) == 1
    assert (out / "checkpoints" / "teacher" / "train" / "epoch_0001.pt").is_file()
    ok(distill(out, cached_runs["recipe"], 2, "--resume"))
    assert_same_weights(final_weights(cached_runs["fsdp"]), final_weights(out), atol=0)


@needs_torchrun
def test_a_sharded_teacher_holds_half_its_parameters_and_changes_no_result(
    tmp_path: Path,
) -> None:
    """One launch trains the same KD phase with ddp and fsdp and every teacher placement."""
    proc = subprocess.run(
        command("_fsdp_runner.py", 2, str(tmp_path)), capture_output=True, text=True,
        timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    ok(proc)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for found in ranks:
        whole = found["ddp/replicate"]["placement"]
        replicated = whole["teacher"]["parameter_bytes"]
        initial = found.pop("initial")
        for setting, run in found.items():
            teacher = run["placement"]["teacher"]
            sharded = teacher["placement"] in ("shard", "cpu_offload")
            assert teacher["parameter_bytes"] == (replicated // 2 if sharded else replicated)
            student = run["placement"]["student"]["parameter_bytes"]
            half = whole["student"]["parameter_bytes"] // 2
            assert student == (half if setting.startswith("fsdp") else 2 * half)
            # The student is an ordinary module again, trained as with ddp.
            assert run["plain"] and run["class"] == "LlamaForCausalLM"
            assert_same_weights(
                {"s": found["ddp/replicate"]["weights"]}, {"s": run["weights"]}, setting,
                atol=1e-6,
            )
        trained = found["ddp/replicate"]["weights"]
        assert any(not torch.equal(initial[k], trained[k]) for k in initial)
    assert_same_weights(
        {"s": ranks[0]["fsdp/shard"]["weights"]}, {"s": ranks[1]["fsdp/shard"]["weights"]},
        atol=0,
    )


@needs_torchrun
def test_a_method_that_stops_a_forward_inside_a_sharded_unit_is_refused(tmp_path: Path) -> None:
    """AT reads the teacher's ``stages.0.0`` and stops its forward there, inside the FSDP
    unit ``stages.0``: refused, naming the method, the model, the unit and what to do."""
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    torch.save(create("cnn-4", num_classes=10, in_channels=1).state_dict(), teacher)
    recipe = tmp_path / "at.yaml"
    recipe.write_text(yaml.safe_dump({
        "data": {"name": "digits", "subset": 64, "batch_size": 16},
        "models": {"teacher": {"arch": "cnn-4", "checkpoint": str(teacher)},
                   "student": {"arch": "cnn-2"}},
        "train": {"epochs": 1, "strategy": "fsdp"},
        "stages": [{"method": "at", "teacher": "teacher", "student": "student",
                    "pairs": [{"student": "stages.0", "teacher": "stages.0.0"}]}],
    }))
    proc = distill(tmp_path / "out", recipe, 2)
    assert proc.returncode != 0  # torchrun's code for a failed process; theirs is 2
    assert (
        "[student] at: AT stops the forward of the sharded model 'teacher' inside its FSDP "
        "unit 'stages.0'" in proc.stderr
    )
    assert "set train.teacher_placement: replicate for this stage" in proc.stderr


# --- one process -------------------------------------------------------------------------


def digits_recipe(**train: Any) -> dict[str, Any]:
    return {
        "seed": 0,
        "data": {"name": "digits", "subset": 64, "batch_size": 16},
        "models": {"model": {"arch": "cnn-2"}},
        "train": {"epochs": 1, **train},
        "stages": [{"method": "train", "model": "model"}],
    }


def test_fsdp_with_one_process_shards_nothing_and_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    fsdp = Pipeline(parse_recipe(digits_recipe(strategy="fsdp")), tmp_path / "fsdp",
                    progress=False, log=said.append)
    fsdp.run()
    ddp = Pipeline(parse_recipe(digits_recipe()), tmp_path / "ddp", progress=False,
                   log=lambda _: None)
    ddp.run()
    assert "train.strategy fsdp with one process: nothing to shard, models train whole" in said
    assert_same_weights(final_weights(tmp_path / "ddp"), final_weights(tmp_path / "fsdp"))


def test_an_unknown_block_class_is_refused_before_anything_trains(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(Path(json.__file__).read_text()[:3000])
    data = {"name": "text", "files": [str(tmp_path / "a.txt")], "seq_len": 16}
    raw = lm_recipe(data)
    raw["stages"][1]["train"] = {"strategy": "fsdp", "fsdp_blocks": "LlamaDecodrLayer"}
    with pytest.raises(ConfigError) as error:
        Pipeline(parse_recipe(raw), tmp_path / "out", progress=False, log=print).run()
    assert str(error.value).startswith(
        "stage 'student': train.fsdp_blocks: no module of student, teacher is a "
        "'LlamaDecodrLayer'; closest: LlamaDecoderLayer"
    )
    assert not list((tmp_path / "out" / "checkpoints").rglob("*.pt"))


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("precision", "fp16", "precision fp16: its loss scaling would see only each process's"),
        ("channels_last", True, "channels_last: FSDP shards contiguous parameters only"),
        ("compile", True, "compile: set it to false"),
        ("sync_batchnorm", True, "sync_batchnorm: set it to false"),
    ],
)
def test_fsdp_refuses_what_it_cannot_shard(field: str, value: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=f"^train.strategy: fsdp does not go with {words}"):
        parse_recipe(digits_recipe(strategy="fsdp", **{field: value}))
    recipe = digits_recipe(**{field: value})
    recipe["stages"][0]["strategy"] = "fsdp"  # a stage's own setting is named as such
    with pytest.raises(ConfigError, match=r"^stages\.0\.strategy: fsdp does not go with"):
        parse_recipe(recipe)
    parse_recipe(digits_recipe(**{field: value}))  # fine with ddp


def test_teacher_placement_defaults_to_the_strategy() -> None:
    def train(**fields: Any) -> Any:
        return parse_recipe(digits_recipe(**fields)).train

    assert train().placement == "replicate"
    assert train(strategy="fsdp").placement == "shard"
    assert train(strategy="fsdp", teacher_placement="replicate").placement == "replicate"
    assert train(teacher_placement="cpu_offload").placement == "cpu_offload"
    assert train(fsdp_blocks="LlamaDecoderLayer").fsdp_blocks == ["LlamaDecoderLayer"]
    with pytest.raises(ConfigError, match="teacher_placement: must be 'shard', 'replicate'"):
        train(teacher_placement="offload")


def test_blocks_are_decoder_layers_stages_or_named_classes() -> None:
    llama = create("hf:", config={**LLAMA, "hidden_size": 8, "num_hidden_layers": 3},
                   task="causal_lm")
    assert find_blocks(llama) == list(llama.model.layers)
    assert find_blocks(llama, ["LlamaMLP"]) == [layer.mlp for layer in llama.model.layers]
    assert find_blocks(llama, ["NotThere"]) == list(llama.model.layers)  # the model's default
    zoo = create("resnet8", num_classes=10, in_channels=1)
    assert find_blocks(zoo) == list(zoo.stages)
    assert find_blocks(nn.Sequential(nn.Linear(2, 2))) == []


def test_a_sharded_copy_starts_from_the_original_tensors_and_leaves_them_alone() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model[0].weight.requires_grad_(False)
    twin = alias_copy(model)
    for mine, theirs in zip(model.state_dict().values(), twin.state_dict().values(),
                            strict=True):
        assert mine.data_ptr() == theirs.data_ptr()  # no memory spent
    assert not twin[0].weight.requires_grad and twin[0].bias.requires_grad
    twin[0].weight.data = torch.zeros(4, 3)  # rebinding the copy's tensor, as FSDP does
    assert model[0].weight.abs().sum() > 0


class Store:
    """A teacher-output store that holds every output (``hit``) or none."""

    def __init__(self, hit: bool) -> None:
        self.hit = hit

    def lookup(self, batch: dict, compute: Any) -> torch.Tensor:
        if self.hit:
            return torch.full((len(batch["inputs"]), 3), 7.0)
        return compute(batch)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("hit", [True, False])
@pytest.mark.parametrize("others_run", [True, False])
def test_a_sharded_teacher_with_a_store_runs_whenever_any_process_does(
    hit: bool, others_run: bool
) -> None:
    torch.manual_seed(0)
    rows: list[int] = []
    teacher = Teacher(nn.Linear(2, 3), store=Store(hit))
    teacher.module.register_forward_hook(lambda m, args, out: rows.append(len(args[0])))
    asked: list[bool] = []

    def in_step(flag: bool) -> bool:
        asked.append(flag)
        return flag or others_run

    teacher.in_step = in_step
    batch = {"inputs": torch.randn(4, 2), "targets": torch.zeros(4, dtype=torch.long)}
    out = teacher(batch)
    assert asked == [not hit]  # one agreement per batch
    if hit:
        assert torch.equal(out, torch.full((4, 3), 7.0))
        assert rows == ([1] if others_run else [])  # one sample, to take part
        assert teacher.calls == 0
    else:
        assert torch.allclose(out, teacher.module(batch["inputs"]))
        assert rows[0] == 4 and teacher.calls == 1
