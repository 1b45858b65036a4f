"""The hf: model source: tiny transformers models built from a config, saved and loaded back."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

from distill.errors import ConfigError
from distill.models.hf import DTYPES, TASKS, create_hf, save_hf
from distill.taps import unwrap as unwrap_model

transformers = pytest.importorskip("transformers")

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
GPT2: dict[str, Any] = {
    "model_type": "gpt2",
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 2,
    "vocab_size": 300,
    "n_positions": 64,
}
N, L, V = 3, 7, 300


def llama(seed: int = 0, **options: Any) -> nn.Module:
    torch.manual_seed(seed)
    return create_hf("", config=LLAMA, **options)


def tokens(seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (N, L), generator=generator)


def logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def leftovers(directory: Path) -> list[str]:
    """Hidden temporary siblings that a save left behind."""
    return [p.name for p in directory.parent.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A tiny llama saved with save_hf, and its logits on tokens()."""
    model = llama(seed=3)
    directory = tmp_path_factory.mktemp("saved") / "llama"
    save_hf(model, directory)
    return directory, logits(model, tokens())


# -- new models from a config ------------------------------------------------------------------


def test_llama_from_config_shapes_names_and_arch() -> None:
    model = llama()
    assert isinstance(model, transformers.LlamaForCausalLM)
    assert model.arch == "hf:"
    assert model.config.num_hidden_layers == 2 and model.config.num_key_value_heads == 1
    assert next(model.parameters()).dtype == torch.float32
    assert logits(model, tokens()).shape == (N, L, V)
    # Features are tapped by dotted name; in this transformers version a decoder layer is
    # model.layers.I and returns the hidden states as a tensor [N, L, H] (not a tuple).
    names = [name for name, _ in model.named_modules()]
    assert {"model.layers.0", "model.layers.1", "model.norm", "lm_head"} <= set(names)
    seen: list[Any] = []
    handle = model.get_submodule("model.layers.1").register_forward_hook(
        lambda module, args, output: seen.append(output)
    )
    logits(model, tokens())
    handle.remove()
    assert isinstance(seen[0], torch.Tensor) and seen[0].shape == (N, L, 32)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    assert same_weights(llama(seed=5), llama(seed=5))
    assert not same_weights(llama(seed=5), llama(seed=6))
    torch.manual_seed(5)
    first = create_hf("", config=GPT2)
    torch.manual_seed(5)
    assert same_weights(first, create_hf("", config=GPT2))


def test_another_family_gpt2_builds_saves_and_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_hf("", config=GPT2)
    assert isinstance(model, transformers.GPT2LMHeadModel)
    assert model.config.hidden_size == 32  # the alias of n_embd
    want = logits(model, tokens())
    assert want.shape == (N, L, V)
    save_hf(model, tmp_path / "gpt2")  # tied input and output embeddings
    loaded = create_hf(str(tmp_path / "gpt2"))
    assert isinstance(loaded, transformers.GPT2LMHeadModel)
    assert torch.equal(logits(loaded, tokens()), want)
    assert loaded.lm_head.weight is loaded.transformer.wte.weight


def test_legacy_keywords_that_transformers_translates_are_accepted() -> None:
    model = create_hf("", config={**LLAMA, "rope_theta": 500.0, "torch_dtype": "float32"})
    assert model.config.rope_parameters["rope_theta"] == 500.0


@pytest.mark.parametrize("name", ["bf16", "bfloat16"])
def test_dtype_option(name: str) -> None:
    assert DTYPES[name] is torch.bfloat16
    model = llama(dtype=name)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


# -- saving and loading ------------------------------------------------------------------------


def test_save_hf_loads_in_transformers_with_identical_logits(
    saved_llama: tuple[Path, torch.Tensor],
) -> None:
    directory, want = saved_llama
    assert {"config.json", "model.safetensors"} <= set(os.listdir(directory))
    assert not leftovers(directory)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    assert torch.equal(logits(loaded, tokens()), want)


def test_create_hf_loads_a_saved_folder(saved_llama: tuple[Path, torch.Tensor]) -> None:
    directory, want = saved_llama
    model = create_hf(str(directory))
    assert model.arch == f"hf:{directory}"
    assert torch.equal(logits(model, tokens()), want)


def test_saved_config_fields_can_be_overridden(saved_llama: tuple[Path, torch.Tensor]) -> None:
    directory, want = saved_llama
    model = create_hf(str(directory), config={"model_type": "llama", "attention_dropout": 0.25})
    assert model.config.attention_dropout == 0.25
    assert torch.equal(logits(model, tokens()), want)  # eval mode: dropout is off


def test_dtype_default_is_float32_and_auto_keeps_the_saved_dtype(tmp_path: Path) -> None:
    save_hf(llama(dtype="bfloat16"), tmp_path / "bf16")
    assert next(create_hf(str(tmp_path / "bf16")).parameters()).dtype == torch.float32
    kept = create_hf(str(tmp_path / "bf16"), dtype="auto")
    assert next(kept.parameters()).dtype == torch.bfloat16


def test_save_hf_writes_the_tokenizer_too(tmp_path: Path) -> None:
    class Tokenizer:
        def save_pretrained(self, directory: str | os.PathLike[str]) -> None:
            Path(directory, "tokenizer.json").write_text('{"version": "1.0"}')

    save_hf(llama(), tmp_path / "m", Tokenizer())
    assert (tmp_path / "m" / "tokenizer.json").read_text() == '{"version": "1.0"}'


def test_save_hf_replaces_a_saved_model_whole(tmp_path: Path) -> None:
    target = tmp_path / "m"
    save_hf(llama(seed=1), target)
    (target / "stale.txt").write_text("from the first save")
    second = llama(seed=2)
    save_hf(second, target)
    assert not (target / "stale.txt").exists()
    assert leftovers(target) == []
    assert same_weights(create_hf(str(target)), second)


def test_a_failing_save_keeps_the_old_model_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "m"
    first = llama(seed=1)
    save_hf(first, target)
    broken = llama(seed=2)

    def crash(directory: str | os.PathLike[str], **kwargs: Any) -> None:
        Path(directory, "config.json").write_text("{}")  # half a model folder
        raise OSError("disk full")

    broken.save_pretrained = crash
    with pytest.raises(OSError, match="disk full"):
        save_hf(broken, target)
    assert same_weights(create_hf(str(target)), first)
    assert leftovers(target) == []
    with pytest.raises(OSError, match="disk full"):
        save_hf(broken, tmp_path / "new")
    assert not (tmp_path / "new").exists() and leftovers(target) == []


def test_a_failure_while_swapping_puts_the_old_model_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "m"
    first = llama(seed=1)
    save_hf(first, target)
    rename = os.rename

    def rename_failing_for_the_new_folder(src: Any, dst: Any) -> None:
        if str(src).endswith(".tmp"):  # the finished new folder, about to take the name
            raise OSError("interrupted")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_failing_for_the_new_folder)
    with pytest.raises(OSError, match="interrupted"):
        save_hf(llama(seed=2), target)
    monkeypatch.undo()
    assert same_weights(create_hf(str(target)), first)
    assert leftovers(target) == []


def test_save_hf_refuses_to_replace_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="holds no config.json.*refusing to replace"):
        save_hf(llama(), tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        save_hf(llama(), tmp_path / "file")
    with pytest.raises(ValueError, match="save_hf saves transformers models.*Linear"):
        save_hf(nn.Linear(2, 2), tmp_path / "linear")


def test_wrapped_models_save_as_the_model_inside(tmp_path: Path) -> None:
    model = llama(seed=4)
    want = logits(model, tokens())
    compiled = torch.compile(model)  # compiles lazily: wrapping alone is cheap
    assert unwrap_model(nn.DataParallel(compiled)) is model
    save_hf(nn.DataParallel(compiled), tmp_path / "compiled")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "compiled")
    assert set(loaded.state_dict()) == set(model.state_dict())  # no _orig_mod. / module.
    assert torch.equal(logits(loaded, tokens()), want)

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        assert unwrap_model(ddp) is model
        save_hf(ddp, tmp_path / "ddp")
    finally:
        dist.destroy_process_group()
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ddp")
    assert torch.equal(logits(loaded, tokens()), want)


# -- classification ----------------------------------------------------------------------------


def test_classification_from_config_and_from_a_language_model_folder(
    saved_llama: tuple[Path, torch.Tensor],
) -> None:
    assert TASKS["classification"] == "AutoModelForSequenceClassification"
    torch.manual_seed(0)
    # Decoder-only classifiers read each row's last non-padding token: they need pad_token_id.
    model = create_hf("", task="classification", config={**LLAMA, "pad_token_id": 0}, num_classes=4)
    assert isinstance(model, transformers.LlamaForSequenceClassification)
    assert logits(model, tokens()).shape == (N, 4)

    directory, _ = saved_llama
    loaded = create_hf(
        str(directory), task="classification", num_classes=5, config={"pad_token_id": 0}
    )
    assert logits(loaded, tokens()).shape == (N, 5)
    # The body is the saved language model's; only the head is new.
    body = create_hf(str(directory)).model
    assert same_weights(loaded.model, body)


# -- bad input ---------------------------------------------------------------------------------


def test_missing_folder_file_and_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^'hf:.*nowhere': no such directory$"):
        create_hf(str(tmp_path / "nowhere"))
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(ConfigError, match="is a file, not a model folder"):
        create_hf(str(tmp_path / "weights.bin"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a model folder: a saved model holds config.json"):
        create_hf(str(tmp_path / "empty"))


def test_a_model_folder_with_broken_weights(
    tmp_path: Path, saved_llama: tuple[Path, torch.Tensor]
) -> None:
    directory, _ = saved_llama
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_bytes((directory / "config.json").read_bytes())
    with pytest.raises(ConfigError, match="cannot load it: OSError.*model.safetensors"):
        create_hf(str(broken))
    data = (directory / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match="transformers cannot load it") as caught:
        create_hf(str(broken))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"hidden_size": 32}, r"config\.model_type is missing; .*e\.g\. model_type: llama"),
        ({**LLAMA, "model_type": "lama"}, r"'lama' is not a .*model type \(did you mean 'llama'"),
        ({**LLAMA, "model_type": 7}, r"7 is not a transformers model type"),
        ({**LLAMA, "num_hiden_layers": 2}, r"config\.num_hiden_layers: not a field of LlamaConf"),
        ({**LLAMA, "hidden_size": "wide"}, r"^'hf:': config: .*hidden_size.*expected int"),
        ({**LLAMA, "hidden_size": 30}, r"^'hf:': config: .*"),
        ({"model_type": "clip"}, r"'clip' has no causal_lm model in transformers"),
        ([1, 2], r"config must be a mapping"),
    ],
)
def test_bad_configs(config: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        create_hf("", config=config)
    assert "\n" not in str(caught.value)


def test_unknown_field_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"did you mean 'num_hidden_layers'\?\); its fields: "):
        create_hf("", config={**LLAMA, "num_hiden_layers": 2})


@pytest.mark.parametrize(
    ("path", "options", "message"),
    [
        ("", {"config": LLAMA, "dtyp": "bf16"}, r"unknown option 'dtyp' \(did you mean 'dtype'"),
        ("", {"config": LLAMA, "a": 1, "b": 2}, r"unknown options 'a', 'b'; hf: models take task"),
        ("", {"config": LLAMA, "task": "causal-lm"}, r"unknown task 'causal-lm' \(did you mean"),
        ("", {"config": LLAMA, "dtype": "half"}, r"dtype 'half' is not one of float32"),
        ("", {"config": LLAMA, "dtype": ["bf16"]}, r"dtype \['bf16'\] is not one of"),
        ("", {"config": LLAMA, "task": ["x"]}, r"unknown task \['x'\]; hf: models serve"),
        ("", {"config": LLAMA, "num_classes": 3}, r"num_classes=3 applies to task 'classif"),
        ("", {"config": LLAMA, "task": "classification"}, r"needs num_classes"),
        (
            "",
            {"config": LLAMA, "task": "classification", "num_classes": 1},
            r"num_classes must be an integer >= 2, got 1",
        ),
        (
            "",
            {"config": {**LLAMA, "num_labels": 3}, "task": "classification", "num_classes": 4},
            r"config\.num_labels=3 contradicts num_classes=4",
        ),
        ("", {}, r"name a saved model folder \(hf:PATH\) or describe a new model"),
    ],
)
def test_bad_options(path: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_hf(path, **options)


def test_bad_overrides_of_a_saved_folder(saved_llama: tuple[Path, torch.Tensor]) -> None:
    directory = str(saved_llama[0])
    with pytest.raises(ConfigError, match="model_type 'gpt2' differs from the saved model's"):
        create_hf(directory, config={"model_type": "gpt2"})
    with pytest.raises(ConfigError, match=r"config\.num_hiden_layers: not a field"):
        create_hf(directory, config={"num_hiden_layers": 3})
    with pytest.raises(ConfigError, match="transformers cannot load it"):
        create_hf(directory, config={"hidden_size": 64})  # the weights no longer fit


def test_without_transformers_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes the import fail
    with pytest.raises(ConfigError, match=r"pip install transformers"):
        create_hf("", config=LLAMA)
