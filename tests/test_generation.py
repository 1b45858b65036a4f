"""Generated sequences for on-policy distillation: prompts out of a batch, seeded sampling with
the KV cache, the masks of a generated batch (prompt, padding, EOS), and the teacher's NLL of a
student's samples."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from distill.errors import ConfigError
from distill.generation import Sampling, continuation_batch, prompts, sample, sample_nll
from distill.models import create

pytest.importorskip("transformers")

PAD, EOS = 38, 39


def llama(hidden: int, layers: int = 1, vocab: int = 40) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 64,
        "vocab_size": vocab,
    }


def lm(hidden: int, seed: int = 0, layers: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create("hf:", config=llama(hidden, layers), task="causal_lm")


class Tokenizer:
    eos_token_id, pad_token_id = EOS, PAD

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def test_prompts_are_the_unlabelled_prefix_or_the_first_tokens_left_padded() -> None:
    ids = torch.arange(1, 9).repeat(4, 1)  # every row 1..8
    labels = ids.clone()
    labels[0, :3] = -100  # a prompt/completion record: prompt of 3 tokens
    mask = torch.ones_like(ids)
    mask[1, 2:], labels[1, 2:], ids[1, 2:] = 0, -100, PAD  # a short row: 2 tokens
    labels[2] = -100  # nothing labelled: the whole row is the prompt
    # row 3: packed text, labelled from its first token: the first prompt_tokens tokens
    got, got_mask = prompts({"input_ids": ids, "labels": labels, "attention_mask": mask}, 5, PAD)
    want_rows = [[1, 2, 3], [1, 2], list(range(1, 9)), [1, 2, 3, 4, 5]]
    assert got.shape == (4, 8)
    for row, want in enumerate(want_rows):
        fill = 8 - len(want)
        assert got[row].tolist() == [PAD] * fill + want
        assert got_mask[row].tolist() == [0] * fill + [1] * len(want)


def naive_continuation(
    ids: torch.Tensor, mask: torch.Tensor, new: torch.Tensor
) -> list[tuple[list[int], list[int]]]:
    """(tokens, labels) per row, by hand: the prompt's real tokens, then the new ones up to and
    including the first EOS."""
    rows = []
    for i in range(ids.shape[0]):
        prompt = [int(t) for t, m in zip(ids[i], mask[i], strict=True) if m]
        kept = []
        for token in new[i].tolist():
            kept.append(token)
            if token == EOS:
                break
        rows.append((prompt + kept, [-100] * len(prompt) + kept))
    return rows


@pytest.mark.parametrize("pad", [PAD, EOS])  # pad == eos (a common choice) included
def test_a_generated_batch_labels_the_generated_tokens_up_to_eos_only(pad: int) -> None:
    ids = torch.tensor([[pad, pad, 5, 6], [1, 2, 3, 4], [pad, pad, pad, 7]])
    mask = (torch.arange(4) >= torch.tensor([[2], [0], [3]])).long()
    new = torch.tensor(
        [
            [11, EOS, pad, pad, pad],  # ends early: generate's fill after EOS is dropped
            [EOS, pad, pad, pad, pad],  # EOS first: one generated token, the EOS
            [12, pad, 13, 14, 15],  # no EOS: all kept, a sampled pad id too (if not EOS)
        ]
    )
    batch = continuation_batch(ids, mask, new, EOS, pad)
    want = naive_continuation(ids, mask, new)
    width = max(len(tokens) for tokens, _ in want)
    assert batch["input_ids"].shape == (3, width)
    for row, (tokens, labels) in enumerate(want):
        fill = width - len(tokens)
        assert batch["input_ids"][row].tolist() == tokens + [pad] * fill
        assert batch["labels"][row].tolist() == labels + [-100] * fill
        assert batch["attention_mask"][row].tolist() == [1] * len(tokens) + [0] * fill
    # The loss positions after the task's shift are exactly the generated tokens.
    from distill.tasks import get_task

    counted = get_task("causal_lm").count(batch)
    third = 5 if pad != EOS else 2  # with pad == EOS, row 3's sampled pad id ends it
    assert int(counted) == sum(1 for _, labels in want for x in labels if x != -100) == 3 + third


def test_sampling_is_seeded_keeps_the_global_rng_and_restores_the_mode() -> None:
    model = lm(16).train()
    ids, mask = torch.randint(0, 30, (3, 6)), torch.ones(3, 6, dtype=torch.long)
    settings = Sampling(max_new_tokens=12, temperature=1.5)
    state = torch.get_rng_state()
    first = sample(model, ids, mask, settings, eos_id=EOS, pad_id=PAD, seed=7)
    assert torch.equal(torch.get_rng_state(), state), "the global random state is untouched"
    assert model.training, "the model's train mode is restored"
    again = sample(model, ids, mask, settings, eos_id=EOS, pad_id=PAD, seed=7)
    other = sample(model, ids, mask, settings, eos_id=EOS, pad_id=PAD, seed=8)
    assert torch.equal(first, again) and not torch.equal(first, other)
    limited = sample(model, ids, mask, settings, eos_id=EOS, pad_id=PAD, seed=7, vocab_limit=5)
    assert int(limited.max()) < 5


def test_samples_follow_the_model_not_its_generation_config() -> None:
    model = lm(16)
    model.generation_config.top_k = 1  # would make sampling greedy if it applied
    model.generation_config.repetition_penalty = 5.0
    ids, mask = torch.randint(0, 30, (4, 5)), torch.ones(4, 5, dtype=torch.long)
    drawn = sample(model, ids, mask, Sampling(max_new_tokens=10), eos_id=EOS, pad_id=PAD, seed=0)
    nearly_greedy = Sampling(max_new_tokens=10, top_p=1e-6)  # the nucleus is the top token
    greedy = sample(model, ids, mask, nearly_greedy, eos_id=EOS, pad_id=PAD, seed=1)
    assert not torch.equal(drawn, greedy)


def test_left_padded_generation_matches_the_right_padded_scoring_forward() -> None:
    """Prompts of unequal length are generated left-padded (positions from the mask) and scored
    right-padded: each greedy token is the argmax of the scoring forward at its position."""
    model = lm(16).eval()
    batch = {
        "input_ids": torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, PAD, PAD, PAD]]),
        "attention_mask": torch.tensor([[1] * 6, [1, 1, 1, 0, 0, 0]]),
        "labels": torch.tensor([[-100, -100, 5, 6, 7, 8], [9, 10, 11, -100, -100, -100]]),
    }
    ids, mask = prompts(batch, 2, PAD)  # prompts [3, 4] and [9, 10]
    greedy = Sampling(max_new_tokens=8, top_p=1e-6)
    new = sample(model, ids, mask, greedy, eos_id=EOS, pad_id=PAD, seed=0)
    scored = continuation_batch(ids, mask, new, EOS, PAD)
    with torch.no_grad():
        logits = model(
            input_ids=scored["input_ids"], attention_mask=scored["attention_mask"]
        ).logits
    where = scored["labels"][:, 1:] != -100
    assert torch.equal(logits[:, :-1].argmax(-1)[where], scored["labels"][:, 1:][where])


def test_sample_nll_is_the_teachers_mean_nll_of_the_students_samples() -> None:
    from distill.seeding import derive_seed

    student, teacher = lm(8, seed=1), lm(16, seed=2, layers=2)
    ids = torch.randint(0, 30, (3, 10))
    batches = [{"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}]
    settings = Sampling(max_new_tokens=6, prompt_tokens=4)
    got = sample_nll(student, teacher, batches, Tokenizer(), settings, seed=3)
    new = sample(
        student,
        ids[:, :4],
        torch.ones(3, 4, dtype=torch.long),
        settings,
        eos_id=EOS,
        pad_id=PAD,
        seed=derive_seed(3, "sample-nll", 0),
    )
    total, count = 0.0, 0
    for row in range(3):
        tokens = ids[row, :4].tolist()
        for token in new[row].tolist():
            with torch.no_grad():
                logits = teacher(input_ids=torch.tensor([tokens])).logits[0, -1]
            total -= torch.log_softmax(logits.double(), -1)[token].item()
            count += 1
            tokens.append(token)
            if token == EOS:
                break
    assert got["tokens"] == count and got["length"] == pytest.approx(count / 3)
    assert got["nll"] == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer >= 1"),
        ({"prompt_tokens": 0}, "prompt_tokens must be an integer >= 1"),
        ({"temperature": 0.0}, "temperature must be a finite number greater than 0"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ],
)
def test_bad_sampling_settings_are_named(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Sampling(**options)
