"""hidden_states: a causal LM's last hidden states at the logits positions, through its own
forward, with its output layer skipped; the output layer maps them to the model's logits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from distill.errors import ConfigError
from distill.heads import check_output_layer, hidden_states, output_layer
from distill.models import create
from distill.tasks import get_task

pytest.importorskip("transformers")


def model() -> nn.Module:
    torch.manual_seed(0)
    config = {
        "model_type": "llama",
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "max_position_embeddings": 32,
        "vocab_size": 50,
    }
    return create("hf:", config=config, task="causal_lm")


def test_hidden_states_are_the_base_models_last_states_at_the_logits_positions() -> None:
    lm, task = model(), get_task("causal_lm")
    ids = torch.randint(0, 50, (2, 9))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    hidden = hidden_states(lm, task, batch)
    with torch.no_grad():
        base = lm.model(input_ids=ids).last_hidden_state  # after the final norm
        logits = lm(input_ids=ids).logits
    assert hidden.shape == (2, 8, 16)
    assert torch.allclose(hidden, base[:, :-1], atol=1e-6)
    assert torch.allclose(output_layer(lm)(hidden), logits[:, :-1], atol=1e-5)
    # The graph reaches the body's parameters; the output layer ran on no position (it stays
    # in the graph with an empty output, so its gradient is zero).
    hidden.sum().backward()
    assert lm.model.embed_tokens.weight.grad is not None
    assert lm.model.embed_tokens.weight.grad.abs().sum() > 0
    assert lm.lm_head.weight.grad is not None and not lm.lm_head.weight.grad.any()
    check_output_layer(lm, task, batch)  # agrees, so no error


def test_the_output_layer_runs_on_an_empty_sequence() -> None:
    lm, task = model(), get_task("causal_lm")
    shapes = []
    lm.lm_head.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape)))
    hidden_states(lm, task, {"input_ids": torch.randint(0, 50, (3, 7))})
    assert shapes == [(3, 0, 50)]
    assert len(lm.lm_head._forward_hooks) == 1 and not lm.lm_head._forward_pre_hooks  # removed


def test_a_model_without_a_known_output_layer_is_refused() -> None:
    with pytest.raises(ConfigError, match="Sequential has none"):
        output_layer(nn.Sequential(nn.Linear(2, 2)))
