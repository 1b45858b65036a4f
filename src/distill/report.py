"""Human-readable outputs of a run: the results table, ``report.md`` and PNG plots."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}%"


def results_table(summary: dict[str, Any], markdown: bool = False) -> str:
    """The per-model table: name, architecture, parameters, accuracies, training seconds."""
    has_test = any("test_accuracy" in m for m in summary["models"].values())
    header = ["model", "arch", "params", "val acc"] + (["test acc"] if has_test else [])
    header += ["trained by", "seconds"]
    rows = []
    for name, m in summary["models"].items():
        row = [name, m["arch"], f"{m['params']:,}", _pct(m.get("val_accuracy"))]
        if has_test:
            row.append(_pct(m.get("test_accuracy")))
        row += [m.get("trained_by", ""), f"{m.get('seconds', 0.0):.1f}"]
        rows.append(row)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    numeric = {2, 3, 4, len(header) - 1}

    def fmt(row: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(r) for r in rows)])


def _curves(metrics: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Validation accuracy per model over the run, one point per epoch (x counts epochs
    of every stage that trained the model, in order)."""
    curves: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for rec in metrics:
        if rec.get("model") and rec.get("val_accuracy") is not None:
            points = curves[rec["model"]]
            points.append((len(points) + 1, rec["val_accuracy"]))
    return curves


def write_plots(out: Path, summary: dict[str, Any], metrics: list[dict[str, Any]]) -> list[str]:
    """Write ``val_accuracy.png`` (per epoch per model) and ``final_accuracy.png``; return
    the file names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    curves = _curves(metrics)
    if curves:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for name, points in curves.items():
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, [100 * y for y in ys], marker="o", markersize=3, label=name)
        ax.set_xlabel("epoch (of the stages that trained the model)")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title("Validation accuracy per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "val_accuracy.png", dpi=110)
        plt.close(fig)
        written.append("val_accuracy.png")
    names = list(summary["models"])
    if names:
        key = (
            "test_accuracy"
            if all("test_accuracy" in m for m in summary["models"].values())
            else "val_accuracy"
        )
        values = [100 * summary["models"][n][key] for n in names]
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
        low = min(values)
        ax.set_ylim(max(0.0, low - max(5.0, (max(values) - low) * 2)), 100)
        ax.set_ylabel(f"{key.replace('_', ' ')} (%)")
        ax.set_title("Final accuracy per model")
        fig.tight_layout()
        fig.savefig(out / "final_accuracy.png", dpi=110)
        plt.close(fig)
        written.append("final_accuracy.png")
    return written


# --- per-method sections of report.md ----------------------------------------------------------


def _baselines(
    summary: dict[str, Any], method: str = "train", teacher: str | None = None
) -> dict[str, str]:
    """Architecture -> the first model of that architecture trained by a ``method`` stage (with
    ``teacher`` as its only teacher, when given): by default the "alone" baseline of the TAKD
    and DML sections; with ``method="kd"``, the student distilled directly from a chain's
    teacher."""
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


def _accuracy_cells(
    summary: dict[str, Any], name: str | None, has_test: bool, stage: dict[str, Any] | None = None
) -> list[str]:
    """Validation (and test) accuracy of ``name``; validation as the stage left the model when
    ``stage`` trained it (a later stage may train it further)."""
    model = summary["models"].get(name) if name else None
    if model is None:
        return ["—"] * (2 if has_test else 1)
    at_stage = (stage or {}).get("val_accuracy", {})
    cells = [_pct(at_stage.get(name, model.get("val_accuracy")))]
    if has_test:
        cells.append(_pct(model.get("test_accuracy")))
    return cells


def _alone_cells(
    summary: dict[str, Any], name: str, baselines: dict[str, str], has_test: bool
) -> list[str]:
    arch = summary["models"].get(name, {}).get("arch")
    alone = baselines.get(arch) if arch else None
    if alone is None or alone == name:
        return ["—"] * (2 if has_test else 1)
    cells = _accuracy_cells(summary, alone, has_test)
    return [f"{cells[0]} ({alone})", *cells[1:]]


_ALONE_NOTE = (
    "*Alone*: a model of the same architecture trained by a `train` stage of this recipe (its "
    "name in brackets); add such a stage to get this baseline."
)


def _takd_section(summary: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
    has_test = "test" in summary["data"]
    baselines = _baselines(summary)
    split = ["val", "test"] if has_test else ["val"]
    header = ["link", "teacher → model", "arch", "T", "α"]
    header += [f"after distillation ({s})" for s in split] + [f"alone ({s})" for s in split]
    header += [f"KD from the chain's teacher ({s})" for s in split]
    lines = ["", "## Teacher-assistant chains (TAKD)"]
    for stage in stages:
        chain = stage.get("chain", [])
        lines += ["", f"Stage `{stage['name']}`: {' → '.join(chain)}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        start = chain[0] if chain else None
        direct = _baselines(summary, "kd", teacher=start) if start else {}
        if start is not None:
            arch = summary["models"].get(start, {}).get("arch", "")
            row = ["start", start, arch, "—", "—"]
            row += _accuracy_cells(summary, start, has_test)
            row += _alone_cells(summary, start, baselines, has_test)
            row += ["—"] * len(split)
            lines.append("| " + " | ".join(row) + " |")
        for link in stage.get("links", []):
            student = link["student"]
            arch = summary["models"].get(student, {}).get("arch", "")
            note = " (already trained: kept)" if link.get("skipped") else ""
            row = [
                link["phase"],
                f"{link['teacher']} → {student}{note}",
                arch,
                f"{link['temperature']:g}",
                f"{link['alpha']:g}",
            ]
            row += _accuracy_cells(summary, student, has_test, stage)
            row += _alone_cells(summary, student, baselines, has_test)
            row += _alone_cells(summary, student, direct, has_test)
            lines.append("| " + " | ".join(row) + " |")
    note = (
        "*KD from the chain's teacher*: a model of the same architecture distilled directly "
        "from the chain's first model by a `kd` stage of this recipe, to see whether the "
        "assistants helped."
    )
    return [*lines, "", _ALONE_NOTE, "", note]


def _dml_section(summary: dict[str, Any], stages: list[dict[str, Any]]) -> list[str]:
    has_test = "test" in summary["data"]
    baselines = _baselines(summary)
    split = ["val", "test"] if has_test else ["val"]
    header = ["model", "arch", "role"]
    header += [f"in the cohort ({s})" for s in split] + [f"alone ({s})" for s in split]
    lines = ["", "## Deep mutual learning (DML)"]
    for stage in stages:
        members = [(name, "learner") for name in stage.get("cohort", [])]
        if stage.get("teacher"):
            members.append((stage["teacher"], "fixed teacher"))
        lines += [
            "",
            f"Stage `{stage['name']}`: {len(members)} members, T = {stage.get('temperature', 1):g}"
            f", {stage.get('update', 'joint')} updates",
            "",
        ]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for name, role in members:
            arch = summary["models"].get(name, {}).get("arch", "")
            row = [name, arch, role, *_accuracy_cells(summary, name, has_test, stage)]
            row += _alone_cells(summary, name, baselines, has_test)
            lines.append("| " + " | ".join(row) + " |")
    return [*lines, "", _ALONE_NOTE]


#: Stage method -> writer of its report.md section (given the summary and that method's stages).
METHOD_SECTIONS: dict[str, Callable[[dict[str, Any], list[dict[str, Any]]], list[str]]] = {
    "takd": _takd_section,
    "dml": _dml_section,
}


def method_sections(summary: dict[str, Any]) -> list[str]:
    """The report.md sections of the methods that have one, for the stages that ran them."""
    lines: list[str] = []
    for method, section in METHOD_SECTIONS.items():
        stages = [s for s in summary["stages"] if s["method"] == method]
        if stages:
            lines += section(summary, stages)
    return lines


def write_report(out: str | Path, summary: dict[str, Any], metrics: list[dict[str, Any]]) -> None:
    """Write ``report.md`` and the plots into the run directory ``out``."""
    out = Path(out)
    plots = write_plots(out, summary, metrics)
    data = summary["data"]
    split = f"{data['train']} train / {data['val']} validation"
    if "test" in data:
        split += f" / {data['test']} test"
    lines = [
        "# distill run report",
        "",
        f"Recipe: `{summary['recipe']}` · seed {summary.get('seed', 0)} · data: "
        f"{data['name']} ({split})",
        "",
        "## Models",
        "",
        results_table(summary, markdown=True),
        "",
        "Accuracies are top-1 on the validation split carved from the training data"
        + (
            "; test accuracy is on the official test split, measured once at the end."
            if "test" in data
            else "."
        ),
        "",
        "## Stages",
        "",
        "| # | stage | method | trains | teachers | epochs | seconds | val acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, stage in enumerate(summary["stages"]):
        accs = ", ".join(f"{k} {_pct(v)}" for k, v in stage["val_accuracy"].items())
        lines.append(
            f"| {i} | {stage['name']} | {stage['method']} | {', '.join(stage['models'])} | "
            f"{', '.join(stage.get('teachers', [])) or '—'} | {stage['epochs']} | "
            f"{stage['seconds']:.1f} | {accs} |"
        )
    lines += method_sections(summary)
    for plot in plots:
        lines += ["", f"![{plot}]({plot})"]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
