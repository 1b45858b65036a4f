"""The ``kd`` stage's on-policy fields (GKD, :class:`~distill.generation.OnPolicy`) and their
``report.md`` section."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from ..checks import Temperature, Weight
from ..config import Strict
from ..errors import ConfigError
from ..generation import OnPolicy
from ..report import alone_cells, markdown_table, metric_cells, task_of
from ..seeding import derive_seed
from .base import StageContext


class OnPolicySettings(Strict):
    """``on_policy: {fraction: 0.5, max_new_tokens: 64, temperature: 1.0, top_p: 1.0,
    prompt_tokens: 16}``: the share of batches on which the student distils on its own
    samples (GKD's λ), and how they are sampled (see :class:`~distill.generation.Sampling`;
    ``prompt_tokens`` is the prompt length for plain text blocks, whose tokens are all
    labelled; a ``jsonl`` record's prompt is its own)."""

    fraction: Weight = 0.5
    max_new_tokens: int = Field(64, ge=1)
    temperature: Temperature = 1.0
    top_p: float = Field(1.0, gt=0, le=1)
    prompt_tokens: int = Field(16, ge=1)


class OnPolicyFields(Strict):
    """Recipe fields of on-policy distillation (``kd`` on ``causal_lm``):

    - ``on_policy``: ``null`` (default: off-policy KD) or :class:`OnPolicySettings`;
    - ``seq_kd``: the teacher writes the sequences instead of the student, and the student
      also takes the cross-entropy on them (sequence-level KD); needs ``on_policy``.
    """

    on_policy: OnPolicySettings | None = None
    seq_kd: bool = False

    @model_validator(mode="after")
    def _seq_kd_needs_settings(self) -> OnPolicyFields:
        if self.seq_kd and self.on_policy is None:
            raise ValueError(
                "seq_kd: true needs on_policy settings (e.g. on_policy: {fraction: 1.0, "
                "max_new_tokens: 64}): the share of batches the teacher writes, and how"
            )
        return self

    def on_policy_options(self, ctx: StageContext, stage: str) -> dict[str, Any]:
        """``{"on_policy": OnPolicy(...)}`` for :class:`~distill.methods.KD`, or ``{}``; the
        draws are seeded from the recipe's seed and the stage's name."""
        if self.on_policy is None:
            return {}
        return {
            "on_policy": OnPolicy(
                ctx.tokenizer,
                **self.on_policy.model_dump(),
                seq_kd=self.seq_kd,
                seed=derive_seed(ctx.seed, stage, "on-policy"),
            )
        }

    def check_on_policy(
        self, ctx: StageContext, where: str, teacher: str, student: str, vocab: str
    ) -> None:
        """Before anything trains, the errors :meth:`OnPolicy.check
        <distill.generation.OnPolicy.check>` would raise, prefixed with ``where``."""
        if self.on_policy is None:
            return
        try:
            on_policy = self.on_policy_options(ctx, where)["on_policy"]
            on_policy.check(ctx.task, ctx.models[teacher], ctx.models[student], vocab)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def summary_fields(self) -> dict[str, Any]:
        fields = super().summary_fields()  # type: ignore[misc]
        if self.on_policy is None:
            fields.pop("on_policy", None)
            fields.pop("seq_kd", None)
        return fields


def _like(summary: dict[str, Any], name: str, method: str) -> dict[str, str]:
    """A baseline of model ``name`` for :func:`~distill.report.alone_cells`: the first model of
    its architecture *and* size (every ``hf:`` model shares one arch string) that a ``method``
    stage (off-policy for ``kd``) trained."""
    models = summary["models"]
    key = (models.get(name, {}).get("arch"), models.get(name, {}).get("params"))
    for stage in summary["stages"]:
        if stage["method"] != method or stage.get("on_policy"):
            continue
        for other in stage["models"]:
            entry = models.get(other, {})
            if other != name and (entry.get("arch"), entry.get("params")) == key:
                return {entry["arch"]: other}
    return {}


def report_section(summary: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
    """The ``report.md`` section of the ``kd`` stages that generate: who wrote the sequences,
    on which share of batches, and the student's metric beside the same student alone."""
    generating = [s for s in stages if s.get("on_policy")]
    if not generating:
        return []
    has_test = "test" in summary["data"]
    label = task_of(summary).primary.label
    rows = []
    for stage in generating:
        settings = stage["on_policy"]
        loss = (stage.get("loss") or {}).get("kind", "forward_kl")
        student = stage["models"][0]
        rows.append(
            [
                f"`{stage['name']}`",
                "teacher (seq_kd)" if stage.get("seq_kd") else "student",
                f"{settings['fraction']:g}",
                f"{settings['max_new_tokens']}",
                f"{settings['temperature']:g} / {settings['top_p']:g}",
                loss,
                *metric_cells(summary, student, has_test, stage),
                *alone_cells(summary, student, _like(summary, student, "kd"), has_test),
                *alone_cells(summary, student, _like(summary, student, "train"), has_test),
            ]
        )
    header = ["stage", "sequences by", "share λ", "new tokens", "T / top-p", "divergence"]
    for who in ("", "off-policy KD, ", "alone, "):
        header += [f"{who}val {label}"] + ([f"{who}test {label}"] if has_test else [])
    return [
        "",
        "## On-policy distillation",
        "",
        "On a share λ of the batches the student (or with `seq_kd` the teacher) continued the "
        "batch's prompts, sampling at temperature T with nucleus top-p, and the divergence was "
        "taken over the generated tokens only; no cross-entropy on the student's own samples. "
        "The other batches were off-policy KD. Beside the student: the same model distilled "
        "off-policy and trained alone, when the recipe has them (their names in brackets). "
        "Generation seconds per batch are the `gen_seconds` part of the training records in "
        "`metrics.jsonl`.",
        "",
        *markdown_table(header, rows),
    ]
