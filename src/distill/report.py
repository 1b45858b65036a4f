"""Human-readable outputs of a run: the results table, ``report.md`` and PNG plots.

Everything here reads a run's ``summary.json`` (and ``metrics.jsonl``) and shows the metrics
of the run's task (:mod:`distill.tasks`): accuracy for classifiers, loss, perplexity and token
accuracy for language models. Each method may add a section of its own
(:meth:`StageSpec.report_section <distill.methods.StageSpec.report_section>`); the helpers
below are what those sections share.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from .files import atomic_write_text
from .tasks import Metric, Task, get_task


def task_of(summary: dict[str, Any]) -> Task:
    """The task of a run's summary (``classification`` for summaries that do not say)."""
    return get_task(summary.get("task", "classification"))


def results_table(summary: dict[str, Any], markdown: bool = False) -> str:
    """The per-model table: name, architecture, parameters, the task's metrics (validation,
    and test when there is a test split), who trained the model, and its training seconds."""
    task = task_of(summary)
    metrics = [task.metric(name) for name in task.summary_metrics]
    splits = ["val", "test"] if "test" in summary["data"] else ["val"]
    columns = [(split, m) for m in metrics for split in splits]
    header = ["model", "arch", "params"] + [f"{split} {m.label}" for split, m in columns]
    header += ["trained by", "seconds"]
    rows = []
    for name, model in summary["models"].items():
        row = [name, model["arch"], f"{model['params']:,}"]
        row += [m.format(model.get(f"{split}_{m.name}")) for split, m in columns]
        row += [model.get("trained_by", ""), f"{model.get('seconds', 0.0):.1f}"]
        rows.append(row)
    if markdown:
        return "\n".join(markdown_table(header, rows))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    numeric = {2, *range(3, 3 + len(columns)), len(header) - 1}

    def fmt(row: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(r) for r in rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _curves(metrics: list[dict[str, Any]], key: str) -> dict[str, list[tuple[int, float]]]:
    """``key`` per model over the run, one point per epoch (x counts epochs of every stage
    that trained the model, in order)."""
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for rec in metrics:
        if rec.get("model") and rec.get(key) is not None:
            points = curves[rec["model"]]
            points.append((len(points) + 1, rec[key]))
    return curves


def _scaled(metric: Metric, value: float) -> float:
    return 100 * value if metric.percent else value


def write_plots(out: Path, summary: dict[str, Any], metrics: list[dict[str, Any]]) -> list[str]:
    """Write ``val_<metric>.png`` (the primary validation metric per epoch per model) and
    ``final_<metric>.png`` (its final value per model); return the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = task_of(summary).primary
    unit = " (%)" if metric.percent else ""
    written = []
    curves = _curves(metrics, f"val_{metric.name}")
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, points in curves.items():
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, [_scaled(metric, y) for y in ys], marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch (of the stages that trained the model)")
        ax.set_ylabel(f"validation {metric.name.replace('_', ' ')}{unit}")
        ax.set_title(f"Validation {metric.name.replace('_', ' ')} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"val_{metric.name}.png", dpi=110)
        plt.close(fig)
        written.append(f"val_{metric.name}.png")
    names = list(summary["models"])
    if names:
        models = summary["models"].values()
        split = "test" if all(f"test_{metric.name}" in m for m in models) else "val"
        key = f"{split}_{metric.name}"
        values = [_scaled(metric, summary["models"][n][key]) for n in names]
        fig, ax = plt.subplots(figsize=(max(4.5, 1.2 * len(names) + 2), 4.2))
        bars = ax.bar(names, values, color="#4c72b0")
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(
                f"{value:.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=9,
            )
        if metric.percent:
            low = min(values)
            ax.set_ylim(max(0.0, low - max(5.0, (max(values) - low) * 2)), 100)
        ax.set_ylabel(f"{key.replace('_', ' ')}{unit}")
        ax.set_title(f"Final {metric.name.replace('_', ' ')} per model")
        fig.tight_layout()
        fig.savefig(out / f"final_{metric.name}.png", dpi=110)
        plt.close(fig)
        written.append(f"final_{metric.name}.png")
    return written


# --- what the methods' sections share -----------------------------------------------------------


def baselines(
    summary: dict[str, Any], method: str = "train", teacher: str | None = None
) -> dict[str, str]:
    """Architecture -> the first model of that architecture trained by a ``method`` stage (with
    ``teacher`` as its only teacher, when given): by default the "alone" baseline of a method's
    section; with ``method="kd"``, say, the student distilled directly from ``teacher``."""
    found: dict[str, str] = {}
    for stage in summary["stages"]:
        if stage["method"] != method:
            continue
        if teacher is not None and stage.get("teachers") != [teacher]:
            continue
        for name in stage["models"]:
            model = summary["models"].get(name)
            if model is not None:
                found.setdefault(model["arch"], name)
    return found


def metric_cells(
    summary: dict[str, Any], name: str | None, has_test: bool, stage: dict[str, Any] | None = None
) -> list[str]:
    """The primary metric of model ``name`` on validation (and test); validation as ``stage``
    left the model when ``stage`` trained it (a later stage may train it further)."""
    metric = task_of(summary).primary
    model = summary["models"].get(name) if name else None
    if model is None:
        return ["—"] * (2 if has_test else 1)
    key = f"val_{metric.name}"
    at_stage = (stage or {}).get(key, {})
    cells = [metric.format(at_stage.get(name, model.get(key)))]
    if has_test:
        cells.append(metric.format(model.get(f"test_{metric.name}")))
    return cells


def alone_cells(
    summary: dict[str, Any], name: str, alone: dict[str, str], has_test: bool
) -> list[str]:
    """:func:`metric_cells` of the model that ``alone`` (from :func:`baselines`) lists for
    ``name``'s architecture, with its name in brackets; dashes when there is none."""
    arch = summary["models"].get(name, {}).get("arch")
    other = alone.get(arch) if arch else None
    if other is None or other == name:
        return ["—"] * (2 if has_test else 1)
    cells = metric_cells(summary, other, has_test)
    return [f"{cells[0]} ({other})", *cells[1:]]


ALONE_NOTE = (
    "*Alone*: a model of the same architecture trained by a `train` stage of this recipe (its "
    "name in brackets); add such a stage to get this baseline."
)


def method_sections(summary: dict[str, Any]) -> list[str]:
    """The report.md sections of the methods that have one, for the stages that ran them."""
    from .methods import METHODS

    lines: list[str] = []
    for method, spec in METHODS.items():
        stages = [s for s in summary["stages"] if s["method"] == method]
        if stages:
            lines += spec.report_section(summary, stages)
    return lines


def _trained_by(summary: dict[str, Any], name: str) -> str:
    """How model ``name`` was trained: ``stage `x`, kd``, or where it was loaded from."""
    stage_name = summary["models"].get(name, {}).get("trained_by")
    stage = next((s for s in summary["stages"] if s["name"] == stage_name), None)
    if stage is None:
        return stage_name or "not trained"
    return f"stage `{stage['name']}`, {stage['method']}"


def samples_section(summary: dict[str, Any]) -> list[str]:
    """What each model makes of fixed inputs (a language model's greedy continuations of
    validation prompts), when the run's task gives them."""
    samples = summary.get("samples")
    if not samples:
        return []
    if "prompt" in samples:  # a summary written before there were several prompts
        samples = {
            "prompts": [samples["prompt"]],
            "continuations": {n: [t] for n, t in samples["continuations"].items()},
        }
    prompts, continuations = samples["prompts"], samples["continuations"]
    models = "; ".join(f"`{name}` ({_trained_by(summary, name)})" for name in continuations)
    lines = [
        "",
        "## Samples",
        "",
        f"Greedy continuation by each model of {len(prompts)} fixed prompt(s) from the "
        f"validation split, the same on every run. Models: {models}.",
    ]
    fence = "~~~~"  # not ```, which source code may hold
    for number, prompt in enumerate(prompts):
        heading = f"### Prompt {number + 1}" if len(prompts) > 1 else "Prompt:"
        lines += ["", heading, "", fence, prompt, fence]
        for name, texts in continuations.items():
            lines += ["", f"`{name}`:", "", fence, texts[number], fence]
    return lines


def write_report(out: str | Path, summary: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
    """Write ``report.md`` and the plots into the run directory ``out``."""
    out = Path(out)
    task = task_of(summary)
    metric = task.primary
    plots = write_plots(out, summary, metrics)
    data = summary["data"]
    split = f"{data['train']} train / {data['val']} validation"
    if "test" in data:
        split += f" / {data['test']} test"
    lines = [
        "# distill run report",
        "",
        f"Recipe: `{summary['recipe']}` · seed {summary.get('seed', 0)} · task {task.name} · "
        f"data: {data['name']} ({split})",
        "",
        *(line for note in summary.get("notes", []) for line in (note, "")),
        "## Models",
        "",
        results_table(summary, markdown=True),
        "",
        "Metrics are measured on the validation split"
        + (
            "; test metrics are on the test split, measured once at the end."
            if "test" in data
            else "."
        ),
        "",
        "## Stages",
        "",
    ]
    rows = []
    for i, stage in enumerate(summary["stages"]):
        shown = ", ".join(
            f"{k} {metric.format(v)}" for k, v in stage.get(f"val_{metric.name}", {}).items()
        )
        teachers = ", ".join(stage.get("teachers", [])) or "—"
        rows.append(
            [str(i), stage["name"], stage["method"], ", ".join(stage["models"]), teachers,
             str(stage["epochs"]), f"{stage['seconds']:.1f}", shown]
        )
    header = ["#", "stage", "method", "trains", "teachers", "epochs", "seconds"]
    lines += markdown_table([*header, f"val {metric.label}"], rows)
    lines += method_sections(summary)
    lines += samples_section(summary)
    for plot in plots:
        lines += ["", f"![{plot}]({plot})"]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
