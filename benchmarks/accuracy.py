"""Accuracy benchmark: every method against the same student trained alone, over seeds.

For each seed one recipe on Fashion-MNIST is run with :class:`distill.pipeline.Pipeline`:

- a ``resnet20`` teacher, and the ``cnn-2`` student trained alone (the baseline);
- the same student with KD, FitNets (hint + KD), FSP (FSP + cross-entropy), TAKD through a
  ``cnn-4`` assistant, DML with a ``cnn-2`` peer and DML with a ``cnn-4`` peer;
- a large-gap setting: a larger teacher (``--large-teacher``, ``resnet56`` by default) with KD
  straight into ``cnn-2`` and TAKD through the assistants :func:`distill.assistant_ladder`
  proposes.

Scores are test accuracies on the official 10,000-image test set; that set is never used for
any choice (``--tune`` picks the KD temperature on the validation split of seed 0). The table
(mean ± std over seeds, gain over the baseline) goes between the accuracy markers of
``docs/benchmarks.md`` and the plot into ``docs/accuracy.png``.

    python benchmarks/accuracy.py            # the benchmark (3 seeds; about 90 minutes on 2 cores)
    python benchmarks/accuracy.py --quick    # smoke run: 1 seed, small budget, < 10 minutes
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import distill
from distill.config import deep_merge
from distill.demo import DEMO_METHODS
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import device_label  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "accuracy.png"
BEGIN, END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"

TEACHER, STUDENT, ASSISTANT = "resnet20", "cnn-2", "cnn-4"
ALPHA = 0.9
DEFAULT_T = 4.0

# What the published results lead one to expect, per method (shown under the table).
EXPECTATIONS = {
    "KD": "KD (Hinton et al., 2015) typically adds +1 to +2 points to a small student.",
    "FitNets": "FitNets (Romero et al., 2015) is about as good as KD or slightly below on "
    "CIFAR in later re-evaluations (e.g. CRD, Tian et al., 2020).",
    "FSP": "FSP (Yim et al., 2017) usually lands below KD in those re-evaluations.",
    "TAKD": "TAKD (Mirzadeh et al., 2020) gives small gains over KD, mainly when the "
    "teacher-student gap is large.",
    "DML": "DML (Zhang et al., 2018) gives 0 to +1.2 points over the student alone.",
}


def budget(args: argparse.Namespace) -> dict[str, Any]:
    """The training budget after --quick defaults and explicit flags."""
    quick = {
        "seeds": 1,
        "subset": 2000,
        "epochs": 10,
        "teacher_epochs": 12,
        "hint_epochs": 2,
        "large_teacher": "resnet14",
    }
    full = {
        "seeds": 3,
        "subset": 10000,
        "epochs": 10,
        "teacher_epochs": 15,
        "hint_epochs": 3,
        "large_teacher": "resnet56",
    }
    chosen = dict(quick if args.quick else full)
    for key in chosen:
        value = getattr(args, key)
        if value is not None:
            chosen[key] = value
    return chosen


def build_recipe(
    seed: int, b: dict[str, Any], temperature: float, data_dir: str | None
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """One seed's recipe and its report rows ``(label, model name, group)``."""
    t, epochs = temperature, b["epochs"]
    kd = {"temperature": t, "alpha": ALPHA}
    large = b["large_teacher"]
    ladder = None
    for n in (2, 1):
        try:
            ladder = distill.assistant_ladder(large, STUDENT, n, in_channels=1)
            break
        except distill.ConfigError:
            continue
    models = {
        "teacher": TEACHER,
        "student": STUDENT,
        "student_kd": STUDENT,
        "student_fitnets": STUDENT,
        "student_fsp": STUDENT,
        "assistant": ASSISTANT,
        "student_takd": STUDENT,
        "dml_peer_same": STUDENT,
        "student_dml_same": STUDENT,
        "dml_peer_large": ASSISTANT,
        "student_dml_large": STUDENT,
        "teacher_large": large,
        "student_large_kd": STUDENT,
    }
    stages: list[dict[str, Any]] = [
        {"method": "train", "model": "teacher", "epochs": b["teacher_epochs"]},
        {"method": "train", "model": "student"},
        {"method": "kd", "teacher": "teacher", "student": "student_kd", "cache": "teacher", **kd},
        # The demo's layer choices (resnet20 teacher, cnn-2 student), with this budget.
        deep_merge(
            DEMO_METHODS["fitnets"][1],
            {"hint": {"epochs": b["hint_epochs"]}, "cache": "teacher", **kd},
        ),
        deep_merge(DEMO_METHODS["fsp"][1], {"fsp": {"epochs": b["hint_epochs"]}}),
        {
            "method": "takd",
            "chain": ["teacher", "assistant", "student_takd"],
            "cache": "teacher",
            **kd,
        },
        {"method": "dml", "cohort": ["dml_peer_same", "student_dml_same"], "temperature": 1.0},
        {"method": "dml", "cohort": ["dml_peer_large", "student_dml_large"], "temperature": 1.0},
        {"method": "train", "model": "teacher_large", "epochs": b["teacher_epochs"]},
        {
            "method": "kd",
            "teacher": "teacher_large",
            "student": "student_large_kd",
            "cache": "teacher",
            **kd,
        },
    ]
    rows = [
        (f"teacher ({TEACHER})", "teacher", "teacher"),
        (f"student alone ({STUDENT})", "student", "baseline"),
        ("KD", "student_kd", "KD"),
        ("FitNets", "student_fitnets", "FitNets"),
        ("FSP", "student_fsp", "FSP"),
        (f"TAKD ({TEACHER} → {ASSISTANT} → {STUDENT})", "student_takd", "TAKD"),
        (f"  assistant ({ASSISTANT}, KD from {TEACHER})", "assistant", "helper"),
        (f"DML, {STUDENT} peer", "student_dml_same", "DML"),
        (f"DML, {ASSISTANT} peer", "student_dml_large", "DML"),
        (f"large teacher ({large})", "teacher_large", "teacher"),
        (f"KD from {large}", "student_large_kd", "KD"),
    ]
    if ladder is not None:
        names = ["teacher_large"]
        for i, arch in enumerate(ladder[1:-1]):
            models[f"large_assistant{i + 1}"] = arch
            names.append(f"large_assistant{i + 1}")
        models["student_large_takd"] = STUDENT
        names.append("student_large_takd")
        stages.append({"method": "takd", "chain": names, "cache": "teacher", **kd})
        rows.append((f"TAKD ({' → '.join(ladder)})", "student_large_takd", "TAKD"))
    data: dict[str, Any] = {"name": "fashion-mnist", "batch_size": 128, "subset": b["subset"]}
    if data_dir:
        data["dir"] = data_dir
    recipe = {
        "seed": seed,
        "data": data,
        "models": {name: {"arch": arch} for name, arch in models.items()},
        "train": {
            "epochs": epochs,
            "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
            "schedule": {"name": "cosine"},
        },
        "stages": stages,
    }
    return recipe, rows


def run(recipe: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run a recipe (continuing an interrupted run of the same recipe in ``out``)."""
    done = out / "summary.json"
    if done.is_file() and (out / "progress.json").is_file():
        state = json.loads((out / "progress.json").read_text())
        if state.get("fingerprint") == parse_recipe(recipe).fingerprint():
            return json.loads(done.read_text())
    return Pipeline(
        parse_recipe(recipe), out, resume=True, progress=False, log=lambda _m: None
    ).run()


def tune(b: dict[str, Any], out: Path, data_dir: str | None) -> tuple[float, dict[float, float]]:
    """KD temperature in {2, 4, 8} on seed 0, scored by validation accuracy (never test)."""
    recipe, _ = build_recipe(0, b, DEFAULT_T, data_dir)
    temps = (2.0, 4.0, 8.0)
    recipe["models"] = {
        "teacher": {"arch": TEACHER},
        **{f"student_kd_t{int(t)}": {"arch": STUDENT} for t in temps},
    }
    recipe["stages"] = [recipe["stages"][0]] + [
        {
            "method": "kd",
            "teacher": "teacher",
            "student": f"student_kd_t{int(t)}",
            "cache": "teacher",
            "temperature": t,
            "alpha": ALPHA,
        }
        for t in temps
    ]
    summary = run(recipe, out / "tune")
    scores = {t: summary["models"][f"student_kd_t{int(t)}"]["val_accuracy"] for t in temps}
    return max(temps, key=lambda t: (scores[t], -abs(t - DEFAULT_T))), scores


def model_seconds(summary: dict[str, Any], name: str) -> float:
    """Seconds of the stages that trained ``name`` (a TAKD or DML stage counted whole)."""
    return sum(s["seconds"] for s in summary["stages"] if name in s["models"])


def aggregate(summaries: list[dict[str, Any]], rows: list[tuple[str, str, str]]) -> list[dict]:
    def mean_std(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    base = [100 * s["models"]["student"]["test_accuracy"] for s in summaries]
    table = []
    for label, name, group in rows:
        acc = [100 * s["models"][name]["test_accuracy"] for s in summaries]
        gain = [a - b0 for a, b0 in zip(acc, base, strict=True)]
        m, sd = mean_std(acc)
        gm, gsd = mean_std(gain)
        first = summaries[0]["models"][name]
        table.append(
            {
                "label": label,
                "name": name,
                "group": group,
                "arch": first["arch"],
                "mean": m,
                "std": sd,
                "gain": gm,
                "gain_std": gsd,
                "params": first["params"],
                "seconds": statistics.fmean(model_seconds(s, name) for s in summaries),
                "student": first["arch"] == STUDENT and group not in ("baseline", "teacher"),
            }
        )
    return table


def machine() -> str:
    return f"{device_label(torch.device('cpu'))}, torch {torch.__version__}"


def markdown(
    table: list[dict],
    b: dict[str, Any],
    args: argparse.Namespace,
    t: float,
    t_note: str,
    wall: float,
    train_size: int,
) -> str:
    command = "python benchmarks/accuracy.py" + "".join(f" {a}" for a in sys.argv[1:])
    lines = [BEGIN]
    if args.quick:
        lines += [
            "**QUICK SMOKE RUN — not the benchmark's result.** One seed and a tiny budget, "
            "only to check that the script works end to end; the numbers below say nothing "
            "about the methods. The full run (3 seeds) is pending.",
            "",
        ]
    lines += [
        f"Budget: Fashion-MNIST, first {b['subset']:,} training images ({train_size:,} after "
        f"the validation split), {b['epochs']} epochs per student, {b['teacher_epochs']} per "
        f"teacher, plus {b['hint_epochs']} hint (FitNets) or FSP epochs; seeds: {b['seeds']}; "
        f"machine: {machine()}; total wall time {wall / 60:.1f} min.",
        f"Hyper-parameters: {t_note} (T = {t:g}, alpha = {ALPHA}). Test accuracy on the "
        "official 10,000-image test set, mean ± std over seeds; gain in points over the "
        f"`{STUDENT}` student trained alone with the same seed; seconds of the stage(s) that "
        "trained the model (a TAKD chain or a DML cohort counted whole; teacher not included).",
        "",
        "| model | arch | params | test acc (%) | gain (points) | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in table:
        gain = f"{r['gain']:+.2f} ± {r['gain_std']:.2f}" if r["student"] else ""
        lines.append(
            f"| {r['label']} | `{r['arch']}` | {r['params']:,} | {r['mean']:.2f} ± "
            f"{r['std']:.2f} | {gain} | {r['seconds']:.0f} |"
        )
    lines += ["", f"Regenerate: `{command}`", "", "What the literature leads one to expect:", ""]
    lines += [f"- {text}" for text in EXPECTATIONS.values()]
    lines += ["", f"![accuracy per method]({PLOT.name})", END]
    return "\n".join(lines) + "\n"


def write_docs(section: str) -> None:
    text = DOCS.read_text() if DOCS.is_file() else "# Benchmarks\n"
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: section, text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n## Accuracy\n\n" + section
    DOCS.write_text(text)


def plot(table: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"teacher": "0.6", "baseline": "0.3", "helper": "0.8"}
    fig, ax = plt.subplots(figsize=(10, 4.5))
    xs = range(len(table))
    ax.bar(
        xs,
        [r["mean"] for r in table],
        yerr=[r["std"] for r in table],
        capsize=3,
        color=[colors.get(r["group"], "tab:blue") for r in table],
    )
    base = next(r["mean"] for r in table if r["group"] == "baseline")
    ax.axhline(base, color="0.3", linestyle="--", linewidth=1, label="student alone")
    low = min(r["mean"] - r["std"] for r in table)
    ax.set_ylim(max(0.0, low - 5), 100)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["label"].strip() for r in table], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, small budget")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3; 1 with --quick)")
    p.add_argument("--subset", type=int, help="training images (default 10000)")
    p.add_argument("--epochs", type=int, help="epochs per student (default 10)")
    p.add_argument("--teacher-epochs", type=int, help="epochs per teacher (default 15)")
    p.add_argument("--hint-epochs", type=int, help="FitNets hint / FSP epochs (default 3)")
    p.add_argument("--large-teacher", help="teacher of the large-gap setting (resnet56)")
    p.add_argument(
        "--tune", action="store_true", help="pick T in {2,4,8} for KD on seed 0's validation split"
    )
    p.add_argument("--out", help="runs root (default runs/accuracy, runs/accuracy-quick)")
    p.add_argument("--data-dir", help="folder of the Fashion-MNIST *-ubyte.gz files")
    p.add_argument("--no-docs", action="store_true", help="do not write docs/")
    args = p.parse_args(argv)
    b = budget(args)
    out = Path(args.out or ("runs/accuracy-quick" if args.quick else "runs/accuracy"))
    start = time.perf_counter()

    t, t_note = DEFAULT_T, "literature defaults, no tuning"
    if args.tune:
        t, scores = tune(b, out, args.data_dir)
        shown = ", ".join(f"T={k:g}: {100 * v:.2f}%" for k, v in scores.items())
        t_note = f"T tuned for KD on seed 0's validation split ({shown}), alpha fixed"
        print(f"tuning: {shown} -> T={t:g}", flush=True)

    summaries, rows = [], []
    for seed in range(b["seeds"]):
        recipe, rows = build_recipe(seed, b, t, args.data_dir)
        t0 = time.perf_counter()
        summaries.append(run(recipe, out / f"seed-{seed}"))
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    wall = time.perf_counter() - start
    table = aggregate(summaries, rows)
    for r in table:
        print(
            f"{r['label']:<45} {r['mean']:6.2f} ± {r['std']:4.2f}  "
            f"{r['gain']:+6.2f}  {r['seconds']:6.0f}s"
        )
    print(f"total {wall:.0f} s")
    if not args.no_docs:
        section = markdown(table, b, args, t, t_note, wall, summaries[0]["data"]["train"])
        write_docs(section)
        title = (
            f"Fashion-MNIST test accuracy, {b['seeds']} seed(s), subset {b['subset']}, "
            f"{b['epochs']} epochs" + (" — QUICK SMOKE RUN" if args.quick else "")
        )
        plot(table, title)
        print(f"wrote {DOCS.relative_to(ROOT)} and {PLOT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
