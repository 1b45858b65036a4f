r"""Sequences a causal language model writes itself, for on-policy distillation (GKD).

Off-policy KD trains the student on fixed text; when it generates, it then conditions on its own
mistakes, which it never saw (exposure bias). On-policy distillation (Agarwal et al. 2024, GKD)
lets the student sample continuations of the data's prompts and has the teacher score them
token by token. Here:

- :func:`prompts` takes the prompts out of a batch: the tokens before the first labelled one
  (a ``jsonl`` record's prompt, whose labels are −100), or, for a sequence labelled from its
  first token (plain text packed into blocks), its first ``prompt_tokens`` tokens;
- :func:`sample` continues them with Hugging Face ``generate`` (KV cache, sampling at a
  temperature and nucleus ``top_p``, seeded without touching the global random state);
- :func:`continuation_batch` turns prompts and continuations into an ordinary ``causal_lm``
  batch whose labels are the generated tokens only: prompt, padding and every token after a
  row's first EOS carry −100 (the EOS itself is scored: the model chose to stop);
- :class:`OnPolicy` is what :class:`~distill.methods.KD` takes to do this for a share of its
  batches (GKD's λ), and :func:`sample_nll` is the teacher's mean negative log-likelihood per
  token of a student's samples, how plausible the teacher finds what the student writes.

Batches follow the ``causal_lm`` layout (:mod:`distill.tasks.causal_lm`): ``input_ids``,
``attention_mask`` and ``labels`` ``[N, L]``, padded on the right.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .checks import check_fraction, check_temperature
from .data.batches import batch_device
from .errors import ConfigError
from .precision import autocast
from .seeding import derive_seed
from .tasks import IGNORE_INDEX, Batch, CausalLM, Task, get_task
from .tasks.causal_lm import vocab_size
from .teachers import Teacher

__all__ = [
    "Generated",
    "OnPolicy",
    "Sampling",
    "continuation_batch",
    "prompts",
    "sample",
    "sample_nll",
]


def _count(value: Any, name: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1 ({hint}), got {value!r}")
    return value


@dataclass(frozen=True)
class Sampling:
    """How continuations are sampled.

    Attributes:
        max_new_tokens: tokens generated after each prompt, at most (>= 1; fewer when every row
            has ended with EOS).
        temperature: the sampling temperature (> 0): tokens are drawn from
            ``softmax(logits / temperature)``. Not the loss's temperature.
        top_p: nucleus sampling, in (0, 1]: draw from the smallest set of most likely tokens
            whose probabilities sum to at least ``top_p`` (1: the whole distribution). Top-k is
            off and no repetition penalty applies, whatever the model's own generation config.
        prompt_tokens: prompt length for sequences labelled from their first token (>= 1).
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    prompt_tokens: int = 16

    def __post_init__(self) -> None:
        _count(self.max_new_tokens, "max_new_tokens", "tokens generated per prompt")
        _count(self.prompt_tokens, "prompt_tokens", "the prompt of a sequence with no prompt")
        check_temperature(self.temperature, "temperature")
        top_p = self.top_p
        if isinstance(top_p, bool) or not isinstance(top_p, int | float) or not 0 < top_p <= 1:
            raise ConfigError(f"top_p must be in (0, 1] (1: no nucleus cut), got {top_p!r}")


def prompts(batch: Batch, prompt_tokens: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompts of a ``causal_lm`` batch, padded on the left for generation.

    Row ``i``'s prompt is its tokens before the first labelled one (``labels != -100``), or its
    first ``prompt_tokens`` tokens when its first token is labelled (packed text); never more
    than the row's own tokens (``attention_mask``), never fewer than one.

    Returns:
        ``(ids, mask)``, both int64 ``[N, P]`` with ``P`` the longest prompt: each prompt sits
        at the right end of its row, after ``pad_id`` fill whose mask is 0.
    """
    ids, labels = batch["input_ids"], batch["labels"]
    n, length = ids.shape
    mask = batch.get("attention_mask")
    lengths = mask.sum(dim=1) if mask is not None else torch.full((n,), length, device=ids.device)
    column = torch.arange(length, device=ids.device)
    first = torch.where(labels != IGNORE_INDEX, column, length).amin(dim=1)
    sizes = torch.where(first > 0, first, prompt_tokens).minimum(lengths).clamp_min(1)
    width = int(sizes.max())
    source = torch.arange(width, device=ids.device)[None] - (width - sizes)[:, None]
    inside = source >= 0
    taken = ids.gather(1, source.clamp_min(0))
    return torch.where(inside, taken, pad_id), inside.long()


class _KeepFirst:
    """A logits processor that leaves only the first ``size`` ids possible (two vocabularies
    of one family padded differently: ids past the shorter one are never drawn)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores[:, self.size :] = -math.inf
        return scores


def _generation_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside ``model`` (unwrapped from DistributedDataParallel)."""
    inner = getattr(model, "module", None)
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) and inner is not None:
        model = inner
    if not callable(getattr(model, "generate", None)):
        raise ConfigError(
            f"on_policy: generation needs a transformers causal LM with .generate(), got "
            f"{type(model).__name__}; use an hf: model"
        )
    return model


@torch.no_grad()
def sample(
    model: nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    sampling: Sampling,
    *,
    eos_id: int,
    pad_id: int,
    seed: int,
    vocab_limit: int | None = None,
) -> torch.Tensor:
    """Continuations of left-padded prompts ``ids``/``mask`` ``[N, P]`` sampled from ``model``
    with ``generate`` (KV cache), in eval mode (restored after), under whatever autocast
    surrounds the call.

    The draws are seeded with ``seed`` inside a forked random state: the same seed gives the
    same tokens, and the global random state is left as it was. ``vocab_limit`` keeps only the
    first ids drawable.

    Returns:
        The new tokens, int64 ``[N, G]`` with ``G <= sampling.max_new_tokens``; after a row's
        EOS, ``generate`` fills ``pad_id`` (see :func:`continuation_batch` for the masks).
    """
    from transformers import GenerationConfig, LogitsProcessorList

    model = _generation_model(model)
    config = GenerationConfig(
        do_sample=True,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=0,
        min_p=None,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_beams=1,
        min_new_tokens=0,
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
    )
    processors = LogitsProcessorList([_KeepFirst(vocab_limit)] if vocab_limit else [])
    was_training = model.training
    model.eval()
    devices = [ids.device] if ids.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=processors,
            )
    finally:
        model.train(was_training)
    return out[:, ids.shape[1] :]


def continuation_batch(
    ids: torch.Tensor, mask: torch.Tensor, new: torch.Tensor, eos_id: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """A ``causal_lm`` batch of each prompt followed by its continuation, padded on the right.

    Args:
        ids, mask: the left-padded prompts ``[N, P]`` (as :func:`prompts` makes them).
        new: the continuations ``[N, G]`` (as :func:`sample` makes them).
        eos_id: a row's continuation ends at its first ``eos_id``, which is kept; what follows
            is dropped (``generate``'s fill, whatever its id, even one equal to ``eos_id``).
        pad_id: the id of the padding on the right.

    Returns:
        ``{"input_ids", "attention_mask", "labels"}`` int64 ``[N, L]``, ``L`` the longest
        prompt + kept continuation; ``labels`` are the continuation's tokens and −100 on the
        prompt and the padding, so the losses of the ``causal_lm`` task apply to the generated
        tokens only.
    """
    prompt = mask.sum(dim=1)
    ended = new == eos_id
    after_eos = (ended.long().cumsum(dim=1) - ended.long()) > 0
    kept = (~after_eos).sum(dim=1)
    lengths = prompt + kept
    width = int(lengths.max())
    joined = torch.cat([ids, new], dim=1)
    column = torch.arange(width, device=ids.device)[None]
    source = (ids.shape[1] - prompt)[:, None] + column
    inside = column < lengths[:, None]
    tokens = torch.where(inside, joined.gather(1, source.clamp_max(joined.shape[1] - 1)), pad_id)
    generated = inside & (column >= prompt[:, None])
    return {
        "input_ids": tokens,
        "attention_mask": inside.long(),
        "labels": torch.where(generated, tokens, IGNORE_INDEX),
    }


def _special_ids(tokenizer: Any) -> tuple[int, int]:
    """``(eos_id, pad_id)`` of a tokenizer that can end and decode a generation."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if tokenizer is None or eos is None or not callable(getattr(tokenizer, "decode", None)):
        shown = "no tokenizer" if tokenizer is None else type(tokenizer).__name__
        raise ConfigError(
            f"on_policy: generation needs a tokenizer with an eos token (to end a sequence) "
            f"and decode() (to show one), got {shown}; use text data with tokenizer: byte or "
            "a Hugging Face tokenizer folder"
        )
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(eos), int(eos if pad is None else pad)


@dataclass
class Generated:
    """A batch of generated sequences, as :meth:`OnPolicy.generate` returns it.

    Attributes:
        batch: the :func:`continuation_batch` (labels on the generated tokens only).
        by_teacher: whether the teacher wrote them (``seq_kd``) rather than the student.
        seconds: wall time of the generation.
    """

    batch: dict[str, torch.Tensor]
    by_teacher: bool
    seconds: float


class OnPolicy:
    r"""Generalised knowledge distillation's data mix (Agarwal et al. 2024): for a share
    ``fraction`` (GKD's λ) of the batches, distil on sequences the student samples itself
    instead of the data.

    On such a batch, the student continues the batch's prompts (:func:`prompts`,
    :func:`sample`), the teacher scores prompt + continuation in one batched forward, and the
    divergence of :class:`~distill.methods.KD` is taken over the generated tokens only (EOS
    included, what follows it, the prompt and the padding masked). There is no cross-entropy
    on the student's own samples: the loss of such a batch is
    :math:`\alpha\,T^2\,D(p_T, q_T)` alone. With ``seq_kd=True`` the teacher writes the
    continuations instead, and the student also takes the usual
    :math:`(1-\alpha)\,\mathrm{CE}` on them: sequence-level KD (Kim and Rush 2016), mixed
    with the divergence. The other batches are trained as off-policy KD. Under gradient
    accumulation a generated micro-batch keeps the weight of the batch it replaces (its share
    of the step's labelled tokens).

    Which batches generate is drawn per micro-batch from ``(seed, epoch, step, micro-batch)``
    of the method's :class:`~distill.methods.base.Progress`, and the tokens are sampled with a
    seed from the same and the batch's sample indices: a resumed run generates exactly what
    an uninterrupted one does, every process decides alike (they stay in step) yet samples
    its own prompts differently, and the global random state is not touched (so
    ``fraction=0`` trains exactly as plain KD).

    Args:
        tokenizer: the data's tokenizer: its ``eos_token_id`` ends a generation, its
            ``pad_token_id`` (else EOS) pads; it must ``decode``.
        fraction: share of batches that generate, in [0, 1] (GKD's λ; TRL's default 0.5).
        max_new_tokens, temperature, top_p, prompt_tokens: see :class:`Sampling`.
        seq_kd: generate with the teacher instead of the student.
        seed: seeds the draws (a recipe's seed).

    Attributes:
        seconds: generation seconds so far (all batches).
    """

    def __init__(
        self,
        tokenizer: Any,
        fraction: float = 0.5,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        prompt_tokens: int = 16,
        *,
        seq_kd: bool = False,
        seed: int = 0,
    ) -> None:
        self.fraction = check_fraction(fraction, "fraction")
        self.sampling = Sampling(max_new_tokens, temperature, top_p, prompt_tokens)
        self.tokenizer = tokenizer
        self.eos_id, self.pad_id = -1, -1  # the tokenizer's, once check() has passed
        self.seq_kd, self.seed = bool(seq_kd), int(seed)
        self.vocab_limit: int | None = None
        self.seconds = 0.0
        self._step: tuple[int, int] | None = None
        self._micro = 0

    def check(
        self, task: Task, teacher: nn.Module, student: nn.Module, vocab: str = "equal"
    ) -> None:
        """Refuse what cannot generate, in this order: a task other than ``causal_lm``, a
        tokenizer without EOS or ``decode``, a model without ``generate``, vocabularies that
        differ (unless ``vocab="shared"``: then only the ids both models have are drawn) or an
        EOS id outside them. :class:`~distill.methods.KD` calls it when built."""
        if not isinstance(get_task(task), CausalLM):
            raise ConfigError(
                f"on_policy: generation needs task causal_lm (a language model), got task "
                f"{get_task(task).name}"
            )
        self.eos_id, self.pad_id = _special_ids(self.tokenizer)
        _generation_model(teacher if self.seq_kd else student)
        sizes = {"teacher": vocab_size(teacher), "student": vocab_size(student)}
        known = [size for size in sizes.values() if size is not None]
        if len(set(known)) > 1 and vocab != "shared":
            raise ConfigError(
                f"on_policy: the teacher predicts {sizes['teacher']} ids and the student "
                f"{sizes['student']}; the teacher must score the student's tokens with the same "
                "vocabulary (vocab: shared for one tokenizer family padded differently)"
            )
        self.vocab_limit = min(known) if len(set(known)) > 1 else None
        if known and self.eos_id >= min(known):
            raise ConfigError(
                f"on_policy: the tokenizer's eos id {self.eos_id} is not among the models' "
                f"{min(known)} ids; use the tokenizer the models were trained with"
            )

    def draw(self, progress: Any) -> int | None:
        """The number of this micro-batch within its optimizer step when it generates, else
        ``None`` (one call per micro-batch)."""
        step = (int(progress.epoch), int(progress.step))
        if step != self._step:
            self._step, self._micro = step, 0
        micro, self._micro = self._micro, self._micro + 1
        draw = random.Random(derive_seed(self.seed, "on-policy", *step, micro)).random()
        return micro if draw < self.fraction else None

    def generate(self, method: Any, batch: Batch) -> Generated | None:
        """For a drawn batch of ``method`` (a :class:`~distill.methods.KD`) in training mode,
        the sequences its student (or, with ``seq_kd``, its teacher) writes after the batch's
        prompts; ``None`` for the others, and in eval mode (an evaluation loss stays the
        off-policy one)."""
        if not method.training:
            return None
        micro = self.draw(method.progress)
        if micro is None:
            return None
        started = time.perf_counter()
        ids, mask = prompts(batch, self.sampling.prompt_tokens, self.pad_id)
        index = batch.get("index")
        indices = tuple(index.reshape(-1).tolist()) if isinstance(index, torch.Tensor) else ()
        step = (method.progress.epoch, method.progress.step)
        seed = derive_seed(self.seed, "on-policy-sample", *step, micro, indices)
        options = {"eos_id": self.eos_id, "pad_id": self.pad_id, "seed": seed}
        if self.seq_kd:
            teacher = method.teacher
            with autocast(batch_device(batch), teacher.precision):
                new = sample(
                    teacher.module,
                    ids,
                    mask,
                    self.sampling,
                    **options,
                    vocab_limit=self.vocab_limit,
                )
        else:
            new = sample(
                method.student, ids, mask, self.sampling, **options, vocab_limit=self.vocab_limit
            )
        generated = continuation_batch(ids, mask, new, self.eos_id, self.pad_id)
        if new.device.type == "cuda":
            torch.cuda.synchronize(new.device)
        seconds = time.perf_counter() - started
        self.seconds += seconds
        return Generated(generated, self.seq_kd, seconds)


@torch.no_grad()
def sample_nll(
    student: nn.Module,
    teacher: nn.Module,
    batches: Any,
    tokenizer: Any,
    sampling: Sampling | None = None,
    *,
    seed: int = 0,
    precision: str = "fp32",
) -> dict[str, float]:
    r"""How plausible the teacher finds what the student writes: the teacher's mean negative
    log-likelihood per token of the student's samples,

    .. math::
        \mathrm{NLL} = -\frac{1}{\sum_i |y^i|}\sum_i \sum_{t} \log p_{\text{teacher}}
        \big(y^i_t \mid x^i, y^i_{<t}\big),\quad y^i \sim q_{\text{student}}(\cdot \mid x^i)

    over the prompts :math:`x^i` of ``batches`` (:func:`prompts`), each continuation
    :math:`y^i` sampled with ``sampling`` (default: the model's own distribution, 64 tokens)
    and ending at its EOS. Lower is better; a student that repeats itself can score well, so
    read it beside the held-out perplexity. The draws are seeded per batch from ``seed``.

    Args:
        student, teacher: causal LMs over one vocabulary (``generate`` for the student); the
            teacher may be a :class:`~distill.teachers.Teacher`.
        batches: an iterable of ``causal_lm`` batches (a DataLoader), on the models' device.
        tokenizer: gives the EOS and padding ids.
        sampling: how to sample (:class:`Sampling`).
        seed: seeds the draws.
        precision: ``fp32``, ``bf16`` or ``fp16`` autocast for both models.

    Returns:
        ``{"nll": ..., "tokens": ..., "length": ...}``: the mean NLL (nats per token), the
        number of tokens scored, and the mean continuation length in tokens.
    """
    sampling = sampling or Sampling()
    eos_id, pad_id = _special_ids(tokenizer)
    task = get_task("causal_lm")
    module = teacher.module if isinstance(teacher, Teacher) else teacher
    was_training = module.training
    module.eval()
    total, tokens, rows = 0.0, 0.0, 0
    try:
        for number, batch in enumerate(batches):
            if not isinstance(batch, Mapping):
                raise TypeError(f"batches must yield dict batches, got {type(batch).__name__}")
            ids, mask = prompts(batch, sampling.prompt_tokens, pad_id)
            with autocast(ids.device, precision):
                new = sample(
                    student,
                    ids,
                    mask,
                    sampling,
                    eos_id=eos_id,
                    pad_id=pad_id,
                    seed=derive_seed(seed, "sample-nll", number),
                )
                scored = continuation_batch(ids, mask, new, eos_id, pad_id)
                stats = task.metrics(task.logits(module, scored).float(), scored)
            total += float(stats["loss"].sum())
            tokens += float(stats["count"].sum())
            rows += ids.shape[0]
    finally:
        module.train(was_training)
    if rows == 0:
        raise ValueError("sample_nll: batches gave no prompt")
    return {"nll": total / max(tokens, 1.0), "tokens": tokens, "length": tokens / rows}
