"""Accuracy benchmark: every method against the same student trained alone, over seeds.

Runs, each with :class:`distill.pipeline.Pipeline` on Fashion-MNIST under ``--out``
(``runs/accuracy`` by default):

1. ``teacher-resnet20`` and ``teacher-<large>``: the two teachers, trained once (seed 0) and
   loaded (``models.<name>.checkpoint``) by every later run;
2. ``tune``: the KD student with T in {2, 4, 8} x alpha in {0.5, 0.9}, and the student alone,
   on seed 0; the pair with the best validation accuracy is used by every KD-style loss;
3. ``seed-<s>`` for each seed: the ``cnn-2`` student trained alone (the baseline); the same
   student with KD, FitNets (hint + KD), FSP (FSP + cross-entropy), DKD, DIST, CRD, RKD, PKT
   (each with its paper's settings, not the tuned KD pair), TAKD through a ``cnn-4``
   assistant; ``cnn-4`` alone; DML cohorts ``cnn-2 + cnn-2`` and ``cnn-2 + cnn-4``; the large
   gap: KD from ``--large-teacher`` (``resnet56``) straight into ``cnn-2`` and TAKD through the
   assistants :func:`distill.assistant_ladder` proposes.

Scores are test accuracies on the official 10,000-image test set, which is never used for any
choice. The table (mean ± std over seeds, per-seed gain over the same architecture trained
alone) goes between the accuracy markers of ``docs/benchmarks.md``, the student's rows between
the results markers of ``README.md`` and the plot into ``docs/accuracy.png``. Finished runs
are read back, interrupted ones continued, so the command can be re-run after a crash.

    python benchmarks/accuracy.py            # the benchmark (3 seeds; about an hour on 2 cores)
    python benchmarks/accuracy.py --quick    # smoke run: 1 seed, small budget, < 10 minutes;
                                             # writes only under runs/accuracy-quick/

With ``--data cifar100 --data-dir DIR`` (the extracted ``cifar-100-binary`` folder), it runs
RepDistiller's CIFAR-100 setting instead, for machines with a GPU (see :func:`cifar_main`):
resnet32x4 -> resnet8x4 and wrn-40-2 -> wrn-16-2, 240 epochs, and writes its own section.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

import distill
from distill.config import deep_merge
from distill.demo import DEMO_SETTINGS, demo_methods
from distill.pipeline import Pipeline
from distill.recipe import parse_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import device_label, replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
README = ROOT / "README.md"
RECIPES = ROOT / "benchmarks" / "recipes" / "accuracy"
# Where a run's section and plot go: CPU runs (the reference budget) and GPU runs each keep
# their own section, labelled with the device, so one never overwrites the other.
TARGETS = {
    "cpu": ("<!-- accuracy:begin -->", "<!-- accuracy:end -->", "accuracy.png", "## Accuracy"),
    "cuda": (
        "<!-- accuracy-cuda:begin -->",
        "<!-- accuracy-cuda:end -->",
        "accuracy-cuda.png",
        "## Accuracy on a GPU",
    ),
}
BEGIN, END, _, _ = TARGETS["cpu"]
README_BEGIN, README_END = "<!-- results:begin -->", "<!-- results:end -->"

TEACHER, STUDENT, ASSISTANT = "resnet20", "cnn-2", "cnn-4"
DEFAULT_T, DEFAULT_ALPHA = 4.0, 0.9

# What the published results lead one to expect, per method (shown under the table).
# The published gain over the student alone on CIFAR-100, beside each row of the table:
# RepDistiller's / mdistiller's pairs resnet32x4 → resnet8x4 and wrn-40-2 → wrn-16-2 (student
# alone 72.50 / 73.26) where both are reported, the range over RepDistiller's five pairs for
# the first methods, the papers' own settings otherwise (the bullets below the table give the
# sources and the accuracies these come from).
PUBLISHED_GAIN = {
    "student_kd": "+0.8 to +2.6 (5 pairs)",
    "student_fitnets": "-0.1 to +1.0 (5 pairs)",
    "student_fsp": "-0.4 to +0.9 (5 pairs)",
    "student_at": "+0.9, +0.8",
    "student_kd_ls": "+4.1, +2.9",
    "student_dkd": "+3.8, +3.0",
    "student_dist": "+3.8 (first pair)",
    "student_crd": "+3.0, +2.2",
    "student_rkd": "-0.6, +0.1",
    "student_pkt": "+1.1, +1.3",
    "student_takd": "+0.45 (ResNet110 → ResNet20 → ResNet8)",
    "student_dml_same": "0 to +1.2 (ResNet-32 pairs)",
    "dml_peer_same": "0 to +1.2 (ResNet-32 pairs)",
    "student_large_kd": "+0.04 (ResNet110 → ResNet8)",
    "student_large_takd": "+0.45 (ResNet110 → ResNet20 → ResNet8)",
}

EXPECTATIONS = {
    "KD": "KD (Hinton et al., 2015): on MNIST the paper's small net made 146 test errors alone "
    "and 74 with soft targets; on CIFAR-100 (RepDistiller's table of five teacher-student "
    "pairs) KD adds +0.8 to +2.6 points over the student alone.",
    "FitNets": "FitNets (Romero et al., 2015): in the same CIFAR-100 table, -0.1 to +1.0 points "
    "over the student alone, below KD in four of five pairs (that table runs it as one step, "
    "CE + hint; here it is the paper's two steps, hint then KD).",
    "FSP": "FSP (Yim et al., 2017): -0.4 to +0.9 points over the student alone in that table, "
    "below KD in all five pairs; its second step is plain cross-entropy, with no soft labels.",
    "TAKD": "TAKD (Mirzadeh et al., 2020): CIFAR-100 ResNet8 from ResNet110: 61.37 alone, 61.41 "
    "by KD, 61.82 through a ResNet20 assistant; the gain over KD is small and shows when the "
    "teacher-student gap is large.",
    "DML": "DML (Zhang et al., 2018): reproductions report 0 to +1.2 points for ResNet-32 "
    "pairs on CIFAR-100 over the same network trained alone.",
    "AT": "AT (Zagoruyko and Komodakis, 2017): 73.44 and 74.08 on the two pairs "
    "(RepDistiller: resnet32x4 → resnet8x4, wrn-40-2 → wrn-16-2; student alone 72.50 / 73.26, "
    "KD 73.33 / 74.92), i.e. about KD's level; RepDistiller runs it with CE, without KD.",
    "KD + LS": "KD with logit standardisation (Sun et al., 2024): 76.62 and 76.11 on the two "
    "pairs, +3.3 and +1.2 points over KD (base temperature 2, KD weight 9 in the paper; here "
    "KD's T and alpha).",
    "DKD": "DKD (Zhao et al., 2022): CIFAR-100 resnet32x4 → resnet8x4 76.32 and wrn-40-2 → "
    "wrn-16-2 76.24 (mdistiller; KD 73.33 / 74.92, student alone 72.50 / 73.26), i.e. +3.0 "
    "points over KD on the first pair; reproductions report 75.8-76.2 there.",
    "DIST": "DIST (Huang et al., 2022): 76.31 on resnet32x4 → resnet8x4 (KD 73.33, student "
    "alone 72.50), its gain over KD growing with the teacher's strength.",
    "CRD": "CRD (Tian et al., 2020): 75.51 and 75.48 on the two pairs (RepDistiller), +2.2 and "
    "+0.6 points over KD; its negatives come from a memory of the whole training set, and its "
    "published runs are 240 epochs long.",
    "RKD": "RKD (Park et al., 2019): 71.90 and 73.35 on the two pairs (RepDistiller), below the "
    "student alone on resnet32x4 → resnet8x4 (72.50) and below KD on both.",
    "PKT": "PKT (Passalis and Tefas, 2018): 73.64 and 74.54 on the two pairs (RepDistiller), "
    "about KD's level (+0.3 and -0.4 points).",
}

# The newer methods' own settings (their papers'; not the KD pair the search picks).
# CRD's negatives: the share of the training set they are on CIFAR-100 (16,384 of 50,000).
CRD_SHARE = 16384 / 50000


def dkd_warmup(epochs: int) -> int:
    """DKD's warm-up as the same share of the schedule as mdistiller's 20 of 240 epochs,
    rounded up (1: no warm-up)."""
    return max(1, math.ceil(20 * epochs / 240))


def crd_negatives(subset: int) -> int:
    """CRD's K for a training subset of this size."""
    return max(1, round(subset * CRD_SHARE))


def budget(args: argparse.Namespace) -> dict[str, Any]:
    """The training budget after --quick defaults and explicit flags."""
    quick = {
        "seeds": 1,
        "subset": 3000,
        "epochs": 8,
        "teacher_epochs": 8,
        "hint_epochs": 2,
        "large_teacher": "resnet32",
        "large_assistants": 1,
        "batch_size": 64,
    }
    full = {
        "seeds": 3,
        "subset": 10000,
        "epochs": 10,
        "teacher_epochs": 15,
        "hint_epochs": 3,
        "large_teacher": "resnet56",
        "large_assistants": 2,
        "batch_size": 128,
    }
    chosen = dict(quick if args.quick else full)
    for key in chosen:
        value = getattr(args, key, None)
        if value is not None:
            chosen[key] = value
    return chosen


def base_recipe(seed: int, b: dict[str, Any], data_dir: str | None) -> dict[str, Any]:
    """The data and training settings every run of the benchmark shares."""
    data: dict[str, Any] = {
        "name": "fashion-mnist",
        "batch_size": b["batch_size"],
        "subset": b["subset"],
    }
    if data_dir:
        data["dir"] = data_dir
    return {
        "seed": seed,
        "data": data,
        # The demo's optimizer and schedule on this dataset, with this budget's epochs.
        "train": deep_merge(DEMO_SETTINGS["fashion-mnist"]["train"], {"epochs": b["epochs"]}),
    }


def teacher_recipe(arch: str, b: dict[str, Any], data_dir: str | None) -> dict[str, Any]:
    """A teacher trained once (seed 0) and loaded by every seed's recipe."""
    recipe = base_recipe(0, b, data_dir)
    recipe["models"] = {"teacher": {"arch": arch}}
    recipe["stages"] = [{"method": "train", "model": "teacher", "epochs": b["teacher_epochs"]}]
    return recipe


def teacher_dir(out: Path, arch: str) -> Path:
    return out / f"teacher-{arch}"


def teacher_file(out: Path, arch: str) -> str:
    """Where :func:`teacher_recipe`'s run leaves the trained teacher's weights."""
    return str(teacher_dir(out, arch).resolve() / "checkpoints" / "teacher.pt")


Row = tuple[str, str, str, str | None]  # label, model name, group, baseline model name


def build_recipe(
    seed: int,
    b: dict[str, Any],
    hp: dict[str, float],
    out: Path,
    data_dir: str | None,
) -> tuple[dict[str, Any], list[Row]]:
    """One seed's recipe and its report rows ``(label, model, group, baseline model)``.

    The teachers are loaded from :func:`teacher_file`; ``hp`` holds the KD temperature and
    alpha used by every KD-style stage (KD, FitNets' second phase, each TAKD link).
    """
    kd = {"temperature": hp["temperature"], "alpha": hp["alpha"]}
    large = b["large_teacher"]
    models = {
        "teacher": {"arch": TEACHER, "checkpoint": teacher_file(out, TEACHER)},
        "student": STUDENT,
        "student_kd": STUDENT,
        "student_fitnets": STUDENT,
        "student_fsp": STUDENT,
        "assistant": ASSISTANT,
        "student_takd": STUDENT,
        "peer_alone": ASSISTANT,
        "dml_peer_same": STUDENT,
        "student_dml_same": STUDENT,
        "dml_peer_large": ASSISTANT,
        "student_dml_large": STUDENT,
        "teacher_large": {"arch": large, "checkpoint": teacher_file(out, large)},
        "student_large_kd": STUDENT,
        "student_at": STUDENT,
        "student_kd_ls": STUDENT,
        "student_dkd": STUDENT,
        "student_dist": STUDENT,
        "student_crd": STUDENT,
        "student_rkd": STUDENT,
        "student_pkt": STUDENT,
    }
    stages: list[dict[str, Any]] = [
        {"method": "train", "model": "student"},
        {"method": "kd", "teacher": "teacher", "student": "student_kd", "cache": "teacher", **kd},
        # The demo's layer choices (resnet20 teacher, cnn-2 student), with this budget.
        deep_merge(
            demo_methods()["fitnets"].stage,
            {"hint": {"epochs": b["hint_epochs"]}, "cache": "teacher", **kd},
        ),
        deep_merge(demo_methods()["fsp"].stage, {"fsp": {"epochs": b["hint_epochs"]}}),
        # Pairs by probe: both models' sections of the same spatial size (two of them).
        {"method": "at", "teacher": "teacher", "student": "student_at"},
        {
            "method": "kd",
            "teacher": "teacher",
            "student": "student_kd_ls",
            "cache": "teacher",
            "standardize": True,
            **kd,
        },
        {
            "method": "dkd",
            "teacher": "teacher",
            "student": "student_dkd",
            "cache": "teacher",
            "warmup_epochs": dkd_warmup(b["epochs"]),
        },
        {
            "method": "dist",
            "teacher": "teacher",
            "student": "student_dist",
            "cache": "teacher",
        },
        {
            "method": "crd",
            "teacher": "teacher",
            "student": "student_crd",
            "num_negatives": crd_negatives(b["subset"]),
        },
        {"method": "rkd", "teacher": "teacher", "student": "student_rkd"},
        {"method": "pkt", "teacher": "teacher", "student": "student_pkt"},
        {
            "method": "takd",
            "chain": ["teacher", "assistant", "student_takd"],
            "cache": "teacher",
            **kd,
        },
        {"method": "train", "model": "peer_alone"},
        {"method": "dml", "cohort": ["dml_peer_same", "student_dml_same"], "temperature": 1.0},
        {"method": "dml", "cohort": ["dml_peer_large", "student_dml_large"], "temperature": 1.0},
        {
            "method": "kd",
            "teacher": "teacher_large",
            "student": "student_large_kd",
            "cache": "teacher",
            **kd,
        },
    ]
    rows: list[Row] = [
        (f"student alone ({STUDENT})", "student", "baseline", None),
        ("KD", "student_kd", "KD", "student"),
        ("FitNets", "student_fitnets", "FitNets", "student"),
        ("FSP", "student_fsp", "FSP", "student"),
        ("AT", "student_at", "AT", "student"),
        ("KD + logit standardisation", "student_kd_ls", "KD + LS", "student"),
        ("DKD", "student_dkd", "DKD", "student"),
        ("DIST", "student_dist", "DIST", "student"),
        ("CRD", "student_crd", "CRD", "student"),
        ("RKD", "student_rkd", "RKD", "student"),
        ("PKT", "student_pkt", "PKT", "student"),
        (f"TAKD ({TEACHER} → {ASSISTANT} → {STUDENT})", "student_takd", "TAKD", "student"),
        (f"  assistant ({ASSISTANT}, KD from {TEACHER})", "assistant", "helper", "peer_alone"),
        (f"{ASSISTANT} alone", "peer_alone", "baseline", None),
        (f"DML {STUDENT} + {STUDENT}: member", "student_dml_same", "DML", "student"),
        (f"DML {STUDENT} + {STUDENT}: other member", "dml_peer_same", "DML", "student"),
        (f"DML {STUDENT} + {ASSISTANT}: {STUDENT}", "student_dml_large", "DML", "student"),
        (f"DML {STUDENT} + {ASSISTANT}: {ASSISTANT}", "dml_peer_large", "DML", "peer_alone"),
        (f"KD from {large} (large gap)", "student_large_kd", "KD", "student"),
    ]
    ladder = distill.assistant_ladder(large, STUDENT, b["large_assistants"], in_channels=1)
    names = ["teacher_large"]
    helper_rows: list[Row] = []
    for i, arch in enumerate(ladder[1:-1]):
        models[f"large_assistant{i + 1}"] = arch
        helper_rows.append(
            (
                f"  assistant {i + 1} ({arch}, KD from {ladder[i]})",
                f"large_assistant{i + 1}",
                "helper",
                None,
            )
        )
        names.append(f"large_assistant{i + 1}")
    models["student_large_takd"] = STUDENT
    names.append("student_large_takd")
    stages.append({"method": "takd", "chain": names, "cache": "teacher", **kd})
    rows.append((f"TAKD {' → '.join(ladder)} (large gap)", "student_large_takd", "TAKD", "student"))
    rows += helper_rows
    recipe = base_recipe(seed, b, data_dir)
    recipe["models"] = {
        name: spec if isinstance(spec, dict) else {"arch": spec} for name, spec in models.items()
    }
    recipe["stages"] = stages
    return recipe, rows


RAN: dict[str, tuple[dict[str, Any], Path]] = {}  # run name -> (recipe, run directory)


def run(recipe: dict[str, Any], out: Path) -> dict[str, Any]:
    """Run a recipe (continuing an interrupted run of the same recipe in ``out``).

    The summary gains ``wall_seconds``: the wall time spent on this run, over all attempts
    (kept in ``out/wall.json``, so a finished run that is only read back keeps its time).
    """
    RAN[out.name] = (recipe, out)
    parsed = parse_recipe(recipe)
    fingerprint = parsed.fingerprint()
    done, progress, wall_file = out / "summary.json", out / "progress.json", out / "wall.json"

    def ours() -> bool:
        return progress.is_file() and json.loads(progress.read_text()).get("fingerprint") == (
            fingerprint
        )

    if progress.is_file() and not ours():
        # `--resume` would keep the stages that did not change; a benchmark never mixes runs.
        raise distill.ConfigError(
            f"--out {out}: holds the outputs of a different recipe "
            f"({json.loads(progress.read_text()).get('source')})"
        )
    spent = json.loads(wall_file.read_text())["seconds"] if ours() and wall_file.is_file() else 0.0
    if done.is_file() and ours():
        return {**json.loads(done.read_text()), "wall_seconds": spent}
    t0 = time.perf_counter()
    try:
        summary = Pipeline(parsed, out, resume=True, progress=False, log=lambda _m: None).run()
    finally:
        if ours():  # never write into another recipe's run directory
            spent += time.perf_counter() - t0
            wall_file.write_text(json.dumps({"seconds": round(spent, 1)}) + "\n")
    return {**summary, "wall_seconds": spent}


TEMPERATURES = (2.0, 4.0, 8.0)
ALPHAS = (0.5, 0.9)


def tune(
    b: dict[str, Any], out: Path, data_dir: str | None
) -> tuple[dict[str, float], dict[tuple[float, float], float], float, float]:
    """KD's T in {2, 4, 8} and alpha in {0.5, 0.9} by validation accuracy on seed 0.

    Returns the chosen pair, every pair's score, the student alone's score (for reference) and
    the search's wall time in seconds.
    The test set plays no part. Ties go to the literature default (T = 4, alpha = 0.9).
    """
    grid = [(t, a) for t in TEMPERATURES for a in ALPHAS]
    recipe = base_recipe(0, b, data_dir)
    recipe["models"] = {"teacher": {"arch": TEACHER, "checkpoint": teacher_file(out, TEACHER)}}
    recipe["models"]["student"] = {"arch": STUDENT}
    recipe["stages"] = [{"method": "train", "model": "student"}]
    for t, a in grid:
        name = f"kd_t{t:g}_a{a:g}".replace(".", "")
        recipe["models"][name] = {"arch": STUDENT}
        recipe["stages"].append(
            {
                "method": "kd",
                "teacher": "teacher",
                "student": name,
                "cache": "teacher",
                "temperature": t,
                "alpha": a,
            }
        )
    summary = run(recipe, out / "tune")
    names = [s["student"] for s in recipe["stages"][1:]]
    scores = {
        (t, a): summary["models"][n]["val_accuracy"] for (t, a), n in zip(grid, names, strict=True)
    }
    best = max(grid, key=lambda g: (scores[g], -abs(g[0] - DEFAULT_T), -abs(g[1] - DEFAULT_ALPHA)))
    alone = summary["models"]["student"]["val_accuracy"]
    return {"temperature": best[0], "alpha": best[1]}, scores, alone, summary["wall_seconds"]


def model_seconds(summary: dict[str, Any], name: str) -> float:
    """Seconds of the stages that trained ``name`` (a TAKD or DML stage counted whole)."""
    return sum(s["seconds"] for s in summary["stages"] if name in s["models"])


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(
    summaries: list[dict[str, Any]], rows: list[Row], teachers: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Table rows: the teachers (one run each), then every row of ``rows`` over the seeds.

    ``gain`` is the mean over seeds of (model's accuracy - its baseline's accuracy with the same
    seed), in points; ``None`` where the row has no baseline.
    """
    table = []
    for label, summary in teachers.items():
        first = summary["models"]["teacher"]
        table.append(
            {
                "label": label,
                "name": "teacher",
                "group": "teacher",
                "arch": first["arch"],
                "mean": 100 * first["test_accuracy"],
                "std": None,
                "gain": None,
                "gain_std": None,
                "params": first["params"],
                "seconds": model_seconds(summary, "teacher"),
            }
        )
    for label, name, group, base in rows:
        acc = [100 * s["models"][name]["test_accuracy"] for s in summaries]
        m, sd = mean_std(acc)
        gm = gsd = None
        if base is not None:
            ref = [100 * s["models"][base]["test_accuracy"] for s in summaries]
            gm, gsd = mean_std([a - r for a, r in zip(acc, ref, strict=True)])
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
                "base": base,
                "values": acc,
                "params": first["params"],
                "seconds": statistics.fmean(model_seconds(s, name) for s in summaries),
            }
        )
    return table


def device_type() -> str:
    """Where the pipeline trains: Accelerate picks the GPU when there is one."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def machine() -> str:
    return f"{device_label(torch.device(device_type()))}, torch {torch.__version__}"


def fmt_gain(r: dict[str, Any]) -> str:
    return "" if r["gain"] is None else f"{r['gain']:+.2f} ± {r['gain_std']:.2f}"


def by_name(table: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(r for r in table if r["name"] == name and r["group"] != "teacher")


def final_fit(run_dir: Path, names: list[str]) -> dict[str, tuple[float, float]]:
    """Last epoch's training cross-entropy and validation loss of models trained alone."""
    fit = {}
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        record = json.loads(line)
        if record.get("method") == "train" and record.get("model") in names:
            fit[record["model"]] = (record["train"]["ce"], record["val_loss"])
    return fit


# Loss parts that are not a distillation term.
NOT_TERMS = ("ce", "loss", "gen_seconds")
# How a distillation loss part is named in a sentence.
TERM_NAMES = {
    "kd": "soft term",
    "at": "attention term",
    "crd_s": "contrastive terms",
    "crd_t": "contrastive terms",
    "distance": "distance and angle terms",
    "angle": "distance and angle terms",
    "pkt": "PKT term",
    "fsp": "FSP loss",
    "hint": "hint loss",
    "tckd": "DKD terms",
    "nckd": "DKD terms",
    "inter": "DIST terms",
    "intra": "DIST terms",
}
# How a phase is named in a sentence.
PHASE_NAMES = {"fsp": "FSP", "hint": "hint", "ce": "cross-entropy"}
# Methods on one student whose loss trains the student's outputs on the teacher's soft
# predictions, and those that match features and leave the outputs to the labels.
SOFT_LABELS = {
    "student_kd": "KD",
    "student_fitnets": "FitNets' second phase",
    "student_dkd": "DKD",
    "student_dist": "DIST",
    "student_takd": "TAKD",
}
FEATURES_ONLY = {
    "student_fsp": "FSP",
    "student_at": "AT",
    "student_crd": "CRD",
    "student_rkd": "RKD",
    "student_pkt": "PKT",
}


def read_curves(run_dirs: list[Path]) -> dict[str, dict[str, Any]]:
    """Every model's training curves in the runs ``run_dirs`` (one per seed), per epoch the
    mean over the runs that trained it, from each run's ``metrics.jsonl``.

    Per model: ``phases``, its phases in order, each ``{"phase", "parts", "val_loss",
    "val_accuracy"}`` with one entry per epoch (``parts``: the logged, weighted loss parts);
    ``stage``: the settings of the stage that trained it, defaults filled in (from the run's
    ``recipe.yaml``; empty without one); ``ce_weight``: the weight of the ``ce`` part of its
    last phase (1 - alpha in a KD phase, else 1); ``runs``: how many runs were averaged.
    """
    import yaml

    per_run: list[dict[str, dict[str, Any]]] = []
    for run_dir in run_dirs:
        path = run_dir / "metrics.jsonl"
        if not path.is_file():
            continue
        stages: dict[str, dict[str, Any]] = {}
        if (run_dir / "recipe.yaml").is_file():
            parsed = parse_recipe(yaml.safe_load((run_dir / "recipe.yaml").read_text()))
            stages = {
                n: s.model_dump() for n, s in zip(parsed.stage_names(), parsed.stages, strict=True)
            }
        models: dict[str, dict[str, Any]] = {}
        for line in path.read_text().splitlines():
            record = json.loads(line)
            name = record.get("model")
            if not name:
                continue
            model = models.setdefault(
                name, {"phases": {}, "stage": stages.get(record.get("stage"), {})}
            )
            model["phases"].setdefault(record["phase"], []).append(record)
        per_run.append(models)
    curves: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(n for models in per_run for n in models):
        runs = [models[name] for models in per_run if name in models]
        phases = []
        for phase in runs[0]["phases"]:
            records = [r["phases"][phase] for r in runs if phase in r["phases"]]
            epochs = min(len(r) for r in records)
            parts = [
                {
                    k: statistics.fmean(r[e]["train"].get(k, 0.0) for r in records)
                    for k in records[0][e]["train"]
                }
                for e in range(epochs)
            ]
            phases.append(
                {
                    "phase": phase,
                    "parts": parts,
                    **{
                        key: [mean_of([r[e].get(key) for r in records]) for e in range(epochs)]
                        for key in ("val_loss", "val_accuracy")
                    },
                }
            )
        stage = runs[0]["stage"]
        kd_phase = "kd" in phases[-1]["parts"][-1] and stage.get("alpha") is not None
        curves[name] = {
            "phases": phases,
            "stage": stage,
            "ce_weight": 1.0 - stage["alpha"] if kd_phase else 1.0,
            "runs": len(runs),
        }
    return curves


def mean_of(values: list[float | None]) -> float:
    """The mean of the values that are there (NaN if none is)."""
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else math.nan


def terms(parts: dict[str, float]) -> float:
    """The distillation terms of one epoch's loss parts, summed."""
    return sum(v for k, v in parts.items() if k not in NOT_TERMS)


def num(x: float) -> str:
    """A loss value with about three significant digits."""
    return f"{x:.2f}" if abs(x) < 10 else f"{x:.1f}" if abs(x) < 100 else f"{x:.0f}"


def times(ratio: float) -> str:
    return f"{ratio:.0f}×" if ratio >= 10 else f"{ratio:.1f}×" if ratio >= 1 else f"{ratio:.2f}×"


def trend(values: list[float]) -> str:
    """How a term moved over a phase: ``down from A to B``, or where it turned back up."""
    low = min(range(len(values)), key=values.__getitem__)
    if values[-1] <= values[low]:
        way = "down" if values[-1] <= values[0] else "up"
        return f"{way} from {num(values[0])} to {num(values[-1])}"
    return (
        f"down from {num(values[0])} to {num(values[low])} at epoch {low + 1}, then back up to "
        f"{num(values[-1])}"
    )


def why_not(r: dict[str, Any], kd: dict[str, Any], curves: dict[str, dict[str, Any]]) -> str | None:
    """One sentence on why the method of row ``r`` does not help (or trails KD), read from
    its student's curves against the student alone's (:func:`read_curves`): the size of its
    distillation term against the CE term at the last epoch and how that term moved, and the
    last epoch's training cross-entropy and validation loss. A cause the curves only suggest
    says "likely"; where they show none, the sentence says so. ``None`` without curves for
    both students."""
    curve, alone = curves.get(r["name"]), curves.get("student")
    if curve is None or alone is None:
        return None
    spread = abs(r["gain"]) <= (r["gain_std"] or 0.0)
    gain = f"{fmt_gain(r)} points" + (", within the seeds' spread" if spread else "")
    if r["gain"] < 1.0:
        head = f"Why {r['label']} does not help here ({gain})"
    else:
        head = f"Why {r['label']} stays below KD here ({gain}; KD {fmt_gain(kd)})"
    stage, last = curve["stage"], curve["phases"][-1]
    epochs = len(last["parts"])
    seeds = f"{curve['runs']} seed{'s' if curve['runs'] > 1 else ''}"
    with_terms = [p for p in curve["phases"] if any(k not in NOT_TERMS for k in p["parts"][-1])]
    if not with_terms:
        return f"{head}: its curves hold no distillation term to read."
    keys = [k for k in with_terms[-1]["parts"][-1] if k not in NOT_TERMS]
    name = " and ".join(dict.fromkeys(TERM_NAMES.get(k, k) for k in keys))
    plural = name.endswith("terms")
    values = [terms(p) for p in with_terms[-1]["parts"]]
    rose = values[-1] > min(values)  # the term turned back up before the end
    if with_terms[-1] is last:
        ratio = values[-1] / last["parts"][-1]["ce"]
        facts = (
            f"at the last epoch (mean of {seeds}) its {name} {'are' if plural else 'is'} "
            f"{times(ratio)} the CE term"
        )
        kd_curve = curves.get("student_kd")
        if stage.get("standardize") and kd_curve is not None:
            kd_last = kd_curve["phases"][-1]["parts"][-1]
            facts += f" (plain KD's: {times(terms(kd_last) / kd_last['ce'])})"
        facts += f"; over {epochs} epochs {'they' if plural else 'it'} went {trend(values)}"
    else:  # the distillation was an earlier phase (FSP: then cross-entropy alone)
        first = with_terms[-1]["phase"]
        facts = (
            f"its {PHASE_NAMES.get(first, first)} phase ({len(values)} epochs, mean of {seeds}) "
            f"took the {name} {trend(values)}"
        )
        if len(values) > 1 and values[-1] < values[-2]:
            facts += f", still falling in its last epoch (from {num(values[-2])})"
        facts += (
            f"; the {epochs} epochs of {PHASE_NAMES.get(last['phase'], last['phase'])} that "
            "follow start from those weights with no teacher term"
        )
    if curve["ce_weight"] <= 0 or any(
        "ce" not in p for c in (curve, alone) for p in c["phases"][-1]["parts"]
    ):
        return f"{head}: {facts}; its last phase has no cross-entropy term to compare."
    ces = [p["ce"] / curve["ce_weight"] for p in last["parts"]]
    ce = ces[-1]
    ce0 = alone["phases"][-1]["parts"][-1]["ce"] / alone["ce_weight"]
    vl, vl0 = last["val_loss"][-1], alone["phases"][-1]["val_loss"][-1]
    va, va0 = last["val_accuracy"][-1], alone["phases"][-1]["val_accuracy"][-1]
    fit = (
        f"the student's training cross-entropy ends at {ce:.2f} against {ce0:.2f} alone "
        f"(validation loss {vl:.2f} against {vl0:.2f})"
    )
    said: list[str] = []
    if stage.get("standardize") and ce > 1.5 * ce0:
        # Z-scored logits: the soft term cannot raise the logits' scale; only CE can.
        if len(ces) > 1:
            fit += f", {ces[1]:.2f} at epoch 2"
        fit += f", while its validation accuracy reaches {100 * va:.1f}% ({100 * va0:.1f}% alone)"
        said.append(
            "the z-scored soft term ignores the logits' scale, which only the CE term (weight "
            f"{curve['ce_weight']:.2g}) sets, so the logits likely stay small, and a soft term "
            "this small likely adds little; the paper pairs the z-score with T = 2 and a KD "
            f"weight of 9 (here T = {stage['temperature']:g}, alpha = {stage['alpha']:g})"
        )
    elif ce > 1.1 * ce0:
        said.append(f"the {'terms compete' if plural else 'term competes'} with the labels")
        if ce0 > vl0:
            said[-1] += (
                f", which the {r['params']:,}-parameter student already underfits alone in "
                f"{epochs} epochs"
            )
    elif ce < 0.9 * ce0:
        said.append("it fits the labels better than alone")
    else:
        said.append("it fits the labels about as well as alone")
    method = stage.get("method")
    if method == "at" and ce > 1.1 * ce0:
        said.append(
            f"likely β = {stage['beta']:g}, RepDistiller's weight for CIFAR-100 ResNets, is "
            "too heavy for this student"
        )
    if method == "crd" and rose and with_terms[-1] is last:
        said.append(
            f"the term has not settled: likely its memory of {stage['num_negatives']:,} "
            f"negatives, each row refreshed once an epoch (momentum {stage['momentum']:g}), "
            f"needs more than {epochs} epochs (the published runs: 240)"
        )
    if len(said) == 1 and said[0].startswith("it fits the labels about"):
        said.append("the curves show no clear cause")
    return f"{head}: {facts}; {fit}: {'; '.join(said)}."


def findings(
    table: list[dict[str, Any]],
    seeds: int,
    fit: dict[str, tuple[float, float]] | None = None,
    curves: dict[str, dict[str, Any]] | None = None,
) -> list[str]:
    """Sentences that read the measured table (so they stay true when it is regenerated).

    ``fit`` (from :func:`final_fit` on seed 0) adds the training-vs-validation loss of the
    models trained alone to the DML sentence when DML members lose. ``curves`` (from
    :func:`read_curves` over the seeds) adds, after each method on one student that gains
    less than +1 point or less than KD, a sentence on why (:func:`why_not`).
    """
    kd, large_kd = by_name(table, "student_kd"), by_name(table, "student_large_kd")
    large_takd = by_name(table, "student_large_takd")
    verdict = "meets" if kd["gain"] >= 1.0 else "misses"
    lines = [
        f"KD {'gains' if kd['gain'] >= 0 else 'loses'} {abs(kd['gain']):.2f} points over the "
        f"student alone (mean of {seeds} seed(s)); this {verdict} the +1.0-point bar.",
    ]
    for name in (
        "student_fitnets",
        "student_fsp",
        "student_at",
        "student_kd_ls",
        "student_dkd",
        "student_dist",
        "student_crd",
        "student_rkd",
        "student_pkt",
        "student_takd",
    ):
        r = by_name(table, name)
        lines.append(
            f"{r['label']}: {r['gain']:+.2f} points over the student alone, "
            f"{r['mean'] - kd['mean']:+.2f} against KD."
        )
        if curves and (r["gain"] < 1.0 or r["gain"] < kd["gain"]):
            why = why_not(r, kd, curves)
            if why:
                lines.append(why)
    soft = {n: by_name(table, n)["gain"] for n in SOFT_LABELS}
    features = {n: by_name(table, n)["gain"] for n in FEATURES_ONLY}
    if max(features.values()) < min(soft.values()):
        lines.append(
            "The methods on one student split in two: those whose loss trains the student's "
            f"outputs on the teacher's soft predictions ({', '.join(SOFT_LABELS.values())}) gain "
            f"{min(soft.values()):+.2f} to {max(soft.values()):+.2f} points; those that match "
            f"features and leave the outputs to the labels ({', '.join(FEATURES_ONLY.values())}) "
            f"{min(features.values()):+.2f} to {max(features.values()):+.2f} (KD + logit "
            f"standardisation, soft predictions of z-scored logits: "
            f"{by_name(table, 'student_kd_ls')['gain']:+.2f}). Here the teacher likely helps "
            "through its predictions, not its features."
        )
    teachers = [r for r in table if r["group"] == "teacher"]
    if len(teachers) == 2:
        small, big = teachers
        ratio = big["params"] / by_name(table, "student")["params"]
        lines.append(
            f"The large teacher ({big['arch']}, {ratio:.0f}x the student's parameters) scores "
            f"{big['mean'] - small['mean']:+.2f} points against {small['arch']} with this "
            "budget: the large gap is one of size more than of accuracy."
        )
    diff = [t - k for t, k in zip(large_takd["values"], large_kd["values"], strict=True)]
    lines.append(
        f"Large gap: KD from the large teacher {fmt_gain(large_kd)} points over the student "
        f"alone, TAKD through assistants {fmt_gain(large_takd)}; TAKD - KD, per seed: "
        f"{statistics.fmean(diff):+.2f} ± {mean_std(diff)[1]:.2f} points."
    )
    helpers = [r for r in table if r["group"] == "helper"]
    if helpers:
        lines.append(
            "Assistants trained by KD: "
            + "; ".join(
                f"{r['label'].strip()} {r['mean']:.2f}%"
                + ("" if r["gain"] is None else f" ({fmt_gain(r)} over the same net alone)")
                for r in helpers
            )
            + "."
        )
    dml = [by_name(table, n) for n in ("student_dml_same", "dml_peer_same")]
    dml_large = [by_name(table, n) for n in ("student_dml_large", "dml_peer_large")]
    lines.append(
        "DML, two cnn-2 members: "
        + ", ".join(f"{fmt_gain(r)}" for r in dml)
        + " points over cnn-2 alone; cnn-2 with a cnn-4 peer: cnn-2 "
        + f"{fmt_gain(dml_large[0])} over cnn-2 alone, cnn-4 {fmt_gain(dml_large[1])} over "
        + "cnn-4 alone."
    )
    if (
        fit
        and "student" in fit
        and "peer_alone" in fit
        and by_name(table, "dml_peer_same")["gain"] < 0
    ):
        (s_ce, s_val), (p_ce, p_val) = fit["student"], fit["peer_alone"]
        lines.append(
            "Why DML members of the same size lose here: DML's published gains come from "
            "networks that overfit their training set, where a peer's soft predictions "
            f"regularise; with this budget {STUDENT} and {ASSISTANT} trained alone underfit "
            f"(last epoch, seed 0: training cross-entropy {s_ce:.2f} and {p_ce:.2f} against "
            f"validation loss {s_val:.2f} and {p_val:.2f}), so the mutual term mostly pulls each "
            "member toward a peer no better than itself. With a larger peer the small member "
            "learns from it as from a teacher, and the larger one pays for it."
        )
    return lines


def optimizer_text() -> str:
    """The shared optimizer and schedule in words, e.g. ``sgd (lr 0.05, momentum 0.9), cosine
    schedule``."""
    train = DEMO_SETTINGS["fashion-mnist"]["train"]
    settings = {k: v for k, v in train["optimizer"].items() if k != "name"}
    shown = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in settings.items())
    return f"{train['optimizer']['name'].upper()} ({shown}), {train['schedule']['name']} schedule"


def markdown(
    table: list[dict[str, Any]],
    b: dict[str, Any],
    args: argparse.Namespace,
    hp: dict[str, float],
    hp_note: str,
    wall: float,
    sizes: dict[str, int],
    device: str = "cpu",
    fit: dict[str, tuple[float, float]] | None = None,
    curves: dict[str, dict[str, Any]] | None = None,
) -> str:
    begin, end, plot_name, _ = TARGETS[device]
    command = "python benchmarks/accuracy.py" + "".join(f" {a}" for a in sys.argv[1:])
    lines = [begin]
    if args.quick:
        lines += [
            "**QUICK SMOKE RUN — not the benchmark's result.** One seed and a tiny budget, "
            "only to check that the script works end to end; the numbers below say little "
            "about the methods.",
            "",
        ]
    lines += [
        f"**Budget.** Fashion-MNIST, the first {b['subset']:,} training images: "
        f"{sizes['train']:,} for training and {sizes['val']:,} for validation (a seeded split); "
        f"scores on the official {sizes['test']:,}-image test set. Batch {b['batch_size']}, "
        f"{optimizer_text()}; "
        f"{b['epochs']} epochs per student, assistant and DML cohort; {b['hint_epochs']} extra "
        f"hint (FitNets) or FSP epochs before those; {b['teacher_epochs']} epochs per teacher. "
        f"Each teacher is trained once (seed 0) and loaded by every seed; everything else is "
        f"trained anew with each of {b['seeds']} seed(s) (the seed also draws the validation "
        "split, the initial weights and the batch order). Teacher outputs are cached "
        "(`cache: teacher`); this changes speed, not results.",
        "",
        f"**Hyper-parameters.** {hp_note}; the choice (T = {hp['temperature']:g}, "
        f"alpha = {hp['alpha']:g}) is used by every KD-style loss (KD, FitNets' second phase, "
        "every TAKD link). DML uses T = 1 as in its paper; FSP's first phase uses the demo's "
        "lr 2e-4. The newer methods keep their papers' settings: DKD T = 4, alpha = 1, "
        f"beta = 8, warm-up {dkd_warmup(b['epochs'])} epoch(s) (mdistiller's 20 of 240, "
        "scaled); DIST beta = gamma = 2, tau = 4 (CIFAR-100); CRD beta = 0.8, dim 128, "
        f"{crd_negatives(b['subset']):,} negatives (the CIFAR-100 share of the training set), "
        "NCE T = 0.07, momentum 0.5; RKD distance 25, angle 50; PKT 30,000; the last three on "
        "the penultimate features. The test set is never used for any choice.",
        "",
        f"**Machine.** {machine()}; total wall time {wall / 60:.1f} min.",
        "",
        "Test accuracy, mean ± std over seeds. Gain: points over the same architecture trained "
        "alone with the same seed (mean ± std of the per-seed differences). Published gain: "
        "the method's reported gain over the student alone on CIFAR-100, for reference (on "
        "resnet32x4 → resnet8x4, wrn-40-2 → wrn-16-2 where both are given; sources below). "
        "Seconds: the "
        "stage(s) that trained the model, mean over seeds (a TAKD chain or a DML cohort "
        "counted whole).",
        "",
        "| model | arch | params | test acc (%) | gain (points) | published gain, CIFAR-100 "
        "| seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        acc = f"{r['mean']:.2f}" + ("" if r["std"] is None else f" ± {r['std']:.2f}")
        published = PUBLISHED_GAIN.get(r["name"], "")
        lines.append(
            f"| {r['label']} | `{r['arch']}` | {r['params']:,} | {acc} | {fmt_gain(r)} | "
            f"{published} | {r['seconds']:.0f} |"
        )
    folder = f"benchmarks/recipes/accuracy/{device}/"
    lines += [
        "",
        f"Regenerate: `{command}` (finished runs under `--out` are read back, not retrained). "
        f"The recipe of every run is in [`{folder}`](../{folder}).",
        "",
        "**What this run shows.**",
        "",
    ]
    lines += [f"- {text}" for text in findings(table, b["seeds"], fit, curves)]
    lines += ["", "**What the published results lead one to expect.**", ""]
    lines += [f"- {text}" for text in EXPECTATIONS.values()]
    lines += ["", f"![accuracy per method]({plot_name})", end]
    return "\n".join(lines) + "\n"


def readme_section(table: list[dict[str, Any]], b: dict[str, Any]) -> str:
    """The README's headline table: the student's rows only."""
    teachers = {r["arch"]: r for r in table if r["group"] == "teacher"}

    def teacher(arch: str) -> str:
        r = teachers[arch]
        return f"`{arch}` ({r['params']:,} parameters, {r['mean']:.2f}%)"

    lines = [
        README_BEGIN,
        f"Fashion-MNIST test accuracy of the `{STUDENT}` student "
        f"({by_name(table, 'student')['params']:,} parameters), mean ± std over "
        f"{b['seeds']} seeds, {b['subset']:,} training images, "
        f"{b['epochs']} epochs; teacher {teacher(TEACHER)} and, for the large gap, "
        f"{teacher(b['large_teacher'])}:",
        "",
        "| student trained by | test acc (%) | gain (points) |",
        "|---|---|---|",
    ]
    for r in table:
        if r["arch"] == STUDENT:
            acc = f"{r['mean']:.2f} ± {r['std']:.2f}"
            lines.append(f"| {r['label']} | {acc} | {fmt_gain(r)} |")
    lines += [
        "",
        "Every model, the teachers, timings, the hyper-parameter search, what the papers "
        "report and the command: "
        "[docs/benchmarks.md](docs/benchmarks.md#accuracy).",
        README_END,
    ]
    return "\n".join(lines) + "\n"


def export_recipes(folder: Path) -> list[Path]:
    """Write every recipe the benchmark ran to ``folder`` as YAML that ``distill run`` takes.

    Paths under the repository are made relative to it, so the files work from the
    repository root; each file says which ``--out`` its teacher paths expect.
    """
    import yaml

    def relative(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: relative(v) for k, v in value.items()}
        if isinstance(value, list):
            return [relative(v) for v in value]
        if isinstance(value, str) and value.startswith(str(ROOT) + "/"):
            return value[len(str(ROOT)) + 1 :]
        return value

    def shown(path: Path) -> Path:
        path = path.resolve()
        return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (recipe, out) in RAN.items():
        path = folder / f"{name}.yaml"
        header = (
            "# Written by benchmarks/accuracy.py (the accuracy table in docs/benchmarks.md).\n"
            f"# From the repository root: distill run {shown(path)} --out {shown(out)}\n"
            "# (the teacher-* recipes first: the others load their weights).\n"
        )
        path.write_text(header + yaml.safe_dump(relative(recipe), sort_keys=False))
        written.append(path)
    return written


def plot(table: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"teacher": "0.6", "baseline": "0.3", "helper": "0.8"}
    fig, ax = plt.subplots(figsize=(11, 4.8))
    xs = range(len(table))
    ax.bar(
        xs,
        [r["mean"] for r in table],
        yerr=[r["std"] or 0.0 for r in table],
        capsize=3,
        color=[colors.get(r["group"], "tab:blue") for r in table],
    )
    base = by_name(table, "student")["mean"]
    ax.axhline(base, color="0.3", linestyle="--", linewidth=1, label=f"{STUDENT} alone")
    low = min(r["mean"] - (r["std"] or 0.0) for r in table)
    ax.set_ylim(max(0.0, low - 3), min(100.0, max(r["mean"] for r in table) + 3))
    ax.set_xticks(list(xs))
    ax.set_xticklabels([r["label"].strip() for r in table], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- CIFAR-100, RepDistiller's setting ---------------------------------------------------------

CIFAR_BEGIN, CIFAR_END = "<!-- cifar100:begin -->", "<!-- cifar100:end -->"
#: RepDistiller's two pairs used here (teacher, student).
CIFAR_PAIRS = (("resnet32x4", "resnet8x4"), ("wrn-40-2", "wrn-16-2"))
#: Published top-1 (RepDistiller): (teacher, student alone, KD) per pair.
CIFAR_PUBLISHED = {
    ("resnet32x4", "resnet8x4"): (79.42, 72.50, 73.33),
    ("wrn-40-2", "wrn-16-2"): (75.61, 73.26, 74.92),
}
#: RepDistiller's schedule: SGD lr 0.05 (momentum 0.9, weight decay 5e-4), batch 64, 240
#: epochs, lr x 0.1 at epochs 150, 180 and 210; KD with T = 4, 0.9 KD + 0.1 CE.
CIFAR_EPOCHS, CIFAR_MILESTONES, CIFAR_BATCH = 240, (150, 180, 210), 64
CIFAR_KD = {"temperature": 4.0, "alpha": 0.9}
#: Share of the 50,000 training images held out for validation (RepDistiller trains on all).
CIFAR_VAL_FRACTION = 0.02


def cifar_budget(args: argparse.Namespace) -> dict[str, Any]:
    """The CIFAR-100 budget: RepDistiller's, or the flags' (milestones scale with epochs)."""
    epochs = args.epochs or CIFAR_EPOCHS
    pairs = CIFAR_PAIRS
    if args.pairs:
        pairs = tuple(tuple(p.split(":", 1)) for p in args.pairs.split(","))  # type: ignore[misc]
        if any(len(p) != 2 or not all(p) for p in pairs):
            raise distill.ConfigError(
                f"--pairs must be TEACHER:STUDENT[,TEACHER:STUDENT...], got {args.pairs!r}"
            )
    return {
        "seeds": args.seeds or 3,
        "subset": args.subset,
        "epochs": epochs,
        "teacher_epochs": args.teacher_epochs or epochs,
        "batch_size": args.batch_size or CIFAR_BATCH,
        "pairs": pairs,
    }


def cifar_train(epochs: int) -> dict[str, Any]:
    """RepDistiller's optimizer and schedule over ``epochs`` (milestones at the same fractions
    of the run as 150/180/210 of 240)."""
    milestones = sorted({max(1, round(m * epochs / CIFAR_EPOCHS)) for m in CIFAR_MILESTONES})
    return {
        "epochs": epochs,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4},
        "schedule": {"name": "step", "milestones": milestones, "gamma": 0.1},
    }


def cifar_base(seed: int, b: dict[str, Any], data_dir: str, epochs: int) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "cifar100",
        "dir": data_dir,
        "batch_size": b["batch_size"],
        "augment": "standard",
        "val_fraction": CIFAR_VAL_FRACTION,
    }
    if b["subset"]:
        data["subset"] = b["subset"]
    return {"seed": seed, "data": data, "train": cifar_train(epochs)}


def cifar_recipes(
    b: dict[str, Any], out: Path, data_dir: str, seed: int
) -> tuple[list[tuple[str, dict[str, Any], Path]], dict[str, Any]]:
    """The teachers' recipes ``(arch, recipe, run directory)`` and seed ``seed``'s recipe: per
    pair, the student alone and the student with KD from the loaded teacher."""
    teachers = []
    models: dict[str, Any] = {}
    stages: list[dict[str, Any]] = []
    for i, (teacher, student) in enumerate(b["pairs"]):
        recipe = cifar_base(0, b, data_dir, b["teacher_epochs"])
        recipe["models"] = {"teacher": {"arch": teacher}}
        recipe["stages"] = [{"method": "train", "model": "teacher"}]
        directory = out / f"teacher-{teacher}"
        teachers.append((teacher, recipe, directory))
        models[f"teacher{i}"] = {
            "arch": teacher,
            "checkpoint": str(directory.resolve() / "checkpoints" / "teacher.pt"),
        }
        models[f"alone{i}"] = {"arch": student}
        models[f"kd{i}"] = {"arch": student}
        stages.append({"method": "train", "model": f"alone{i}"})
        stages.append({"method": "kd", "teacher": f"teacher{i}", "student": f"kd{i}", **CIFAR_KD})
    recipe = cifar_base(seed, b, data_dir, b["epochs"])
    recipe["models"] = models
    recipe["stages"] = stages
    return teachers, recipe


def cifar_section(
    b: dict[str, Any], rows: list[dict[str, Any]], sizes: dict[str, int], wall: float
) -> str:
    """The docs section: last-epoch test accuracy per pair beside RepDistiller's."""
    command = "python benchmarks/accuracy.py" + "".join(f" {a}" for a in sys.argv[1:])
    lines = [
        CIFAR_BEGIN,
        f"**Budget.** CIFAR-100, {sizes['train']:,} training and {sizes['val']:,} validation "
        f"images (a seeded split; RepDistiller trains on all 50,000), scores on the official "
        f"{sizes['test']:,}-image test set after the last epoch. RepDistiller's schedule: batch "
        f"{b['batch_size']}, SGD lr 0.05 (momentum 0.9, weight decay 5e-4), "
        f"{b['epochs']} epochs (teachers {b['teacher_epochs']}), lr x 0.1 at "
        f"{', '.join(map(str, cifar_train(b['epochs'])['schedule']['milestones']))}; standard "
        f"augmentation (4-pixel padded crops, flips); KD with T = 4, alpha = 0.9. "
        f"{b['seeds']} seed(s), teachers trained once (seed 0).",
        "",
        f"**Machine.** {machine()}; total wall time {wall / 3600:.1f} h.",
        "",
        "| pair | teacher | student alone | KD | gain | published (teacher / alone / KD) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        published = CIFAR_PUBLISHED.get(r["pair"])
        shown = " / ".join(f"{v:.2f}" for v in published) if published else "–"
        lines.append(
            f"| `{r['pair'][0]}` → `{r['pair'][1]}` | {r['teacher']:.2f} | "
            f"{r['alone'][0]:.2f} ± {r['alone'][1]:.2f} | {r['kd'][0]:.2f} ± {r['kd'][1]:.2f} | "
            f"{r['gain'][0]:+.2f} ± {r['gain'][1]:.2f} | {shown} |"
        )
    lines += ["", f"Regenerate: `{command}`.", CIFAR_END]
    return "\n".join(lines) + "\n"


def cifar_main(args: argparse.Namespace) -> int:
    """RepDistiller's CIFAR-100 pairs: each teacher trained once, then per seed every student
    alone and with KD; a table of last-epoch test accuracies beside the published ones, in
    ``OUT/cifar100.md`` and (unless ``--no-docs``) in docs/benchmarks.md between the cifar100
    markers. 240 epochs of resnet32x4 are GPU work (hours); ``--epochs``, ``--subset`` and
    ``--pairs`` make smaller runs."""
    if not args.data_dir:
        raise distill.ConfigError(
            "--data cifar100 needs --data-dir: the extracted cifar-100-binary folder (binary "
            "version, https://www.cs.toronto.edu/~kriz/cifar.html)"
        )
    b = cifar_budget(args)
    out = Path(args.out or "runs/accuracy-cifar100")
    teachers: dict[tuple[str, str], float] = {}
    summaries = []
    teacher_runs, _ = cifar_recipes(b, out, args.data_dir, 0)
    wall = 0.0
    for (arch, recipe, directory), pair in zip(teacher_runs, b["pairs"], strict=True):
        summary = run(recipe, directory)
        wall += summary["wall_seconds"]
        teachers[pair] = 100 * summary["models"]["teacher"]["test_accuracy"]
        print(f"teacher {arch}: {teachers[pair]:.2f}% test", flush=True)
    for seed in range(b["seeds"]):
        _, recipe = cifar_recipes(b, out, args.data_dir, seed)
        summaries.append(run(recipe, out / f"seed-{seed}"))
        wall += summaries[-1]["wall_seconds"]
    rows = []
    for i, pair in enumerate(b["pairs"]):
        alone = [100 * s["models"][f"alone{i}"]["test_accuracy"] for s in summaries]
        kd = [100 * s["models"][f"kd{i}"]["test_accuracy"] for s in summaries]
        gain = [k - a for k, a in zip(kd, alone, strict=True)]
        row = {
            "pair": pair,
            "teacher": teachers[pair],
            "alone": mean_std(alone),
            "kd": mean_std(kd),
            "gain": mean_std(gain),
        }
        rows.append(row)
        print(
            f"{pair[0]} -> {pair[1]}: teacher {row['teacher']:.2f}, alone "
            f"{row['alone'][0]:.2f}, KD {row['kd'][0]:.2f} ({row['gain'][0]:+.2f})",
            flush=True,
        )
    section = cifar_section(b, rows, summaries[0]["data"], wall)
    (out / "cifar100.md").write_text(section)
    print(f"wrote {out / 'cifar100.md'}")
    if not args.no_docs:
        replace_section(DOCS, CIFAR_BEGIN, CIFAR_END, section, "## CIFAR-100")
        print(f"wrote {DOCS.relative_to(ROOT)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, small budget")
    p.add_argument("--seeds", type=int, help="number of seeds (default 3; 1 with --quick)")
    p.add_argument("--subset", type=int, help="training images (default 10000)")
    p.add_argument("--epochs", type=int, help="epochs per student (default 10)")
    p.add_argument("--teacher-epochs", type=int, help="epochs per teacher (default 15)")
    p.add_argument("--hint-epochs", type=int, help="FitNets hint / FSP epochs (default 3)")
    p.add_argument("--batch-size", type=int, help="batch size (default 128; 64 with --quick)")
    p.add_argument("--large-teacher", help="teacher of the large-gap setting (resnet56)")
    p.add_argument(
        "--large-assistants",
        type=int,
        help="assistants in the large-gap TAKD chain (default 2; 1 with --quick)",
    )
    p.add_argument(
        "--no-tune",
        action="store_true",
        help="skip the search of KD's T and alpha on the validation split; use T=4, alpha=0.9",
    )
    p.add_argument("--out", help="runs root (default runs/accuracy, runs/accuracy-quick)")
    p.add_argument(
        "--data",
        choices=["fashion-mnist", "cifar100"],
        default="fashion-mnist",
        help="fashion-mnist (default; the CPU benchmark) or cifar100 (RepDistiller's setting, "
        "for a GPU; needs --data-dir)",
    )
    p.add_argument(
        "--pairs",
        help="cifar100 only: TEACHER:STUDENT pairs, comma-separated (default "
        "resnet32x4:resnet8x4,wrn-40-2:wrn-16-2)",
    )
    p.add_argument(
        "--data-dir",
        help="folder of the Fashion-MNIST *-ubyte.gz files, or of cifar-100-binary",
    )
    p.add_argument(
        "--no-docs",
        action="store_true",
        help="do not write docs/ and the README (--quick never does; every run writes "
        "accuracy.md and accuracy.png under --out)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="seeds trained at once, each in its own process (default 1); on a GPU the small "
        "models leave room for several",
    )
    p.add_argument("--only-seed", type=int, help=argparse.SUPPRESS)  # one seed (a --jobs child)
    args = p.parse_args(argv)
    if args.data == "cifar100":
        return cifar_main(args)
    if args.pairs:
        p.error("--pairs applies to --data cifar100 only")
    b = budget(args)
    for key in ("seeds", "epochs", "teacher_epochs", "hint_epochs", "batch_size"):
        if b[key] < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1; got {b[key]}")
    out = Path(args.out or ("runs/accuracy-quick" if args.quick else "runs/accuracy"))

    teachers: dict[str, dict[str, Any]] = {}

    def train_teacher(label: str, arch: str) -> None:
        t0 = time.perf_counter()
        teachers[label] = run(teacher_recipe(arch, b, args.data_dir), teacher_dir(out, arch))
        acc = 100 * teachers[label]["models"]["teacher"]["test_accuracy"]
        print(f"{label}: {acc:.2f}% test, {time.perf_counter() - t0:.0f} s", flush=True)

    train_teacher(f"teacher ({TEACHER})", TEACHER)
    hp = {"temperature": DEFAULT_T, "alpha": DEFAULT_ALPHA}
    hp_note = "Literature defaults, no search"
    tune_wall = 0.0
    if not args.no_tune:
        hp, scores, alone, tune_wall = tune(b, out, args.data_dir)
        shown = ", ".join(f"T={t:g} alpha={a:g}: {100 * v:.2f}%" for (t, a), v in scores.items())
        hp_note = (
            f"KD's T in {{{', '.join(f'{t:g}' for t in TEMPERATURES)}}} and alpha in "
            f"{{{', '.join(f'{a:g}' for a in ALPHAS)}}} were searched with seed 0: the KD student "
            f"trained with each pair, scored by validation accuracy ({shown}; the student alone: "
            f"{100 * alone:.2f}%); the best pair (ties to the literature default T = 4, "
            "alpha = 0.9) was kept"
        )
        print(
            f"tuning: {shown}; alone {100 * alone:.2f}% -> T={hp['temperature']:g} "
            f"alpha={hp['alpha']:g}",
            flush=True,
        )
    train_teacher(f"large teacher ({b['large_teacher']})", b["large_teacher"])

    if args.only_seed is not None:  # a child of --jobs: train one seed, write nothing else
        recipe, _ = build_recipe(args.only_seed, b, hp, out, args.data_dir)
        run(recipe, out / f"seed-{args.only_seed}")
        return 0
    if args.jobs > 1:  # every seed in its own process; the loop below reads them back
        parallel_seeds(argv if argv is not None else sys.argv[1:], b["seeds"], args.jobs)
    summaries: list[dict[str, Any]] = []
    rows: list[Row] = []
    for seed in range(b["seeds"]):
        recipe, rows = build_recipe(seed, b, hp, out, args.data_dir)
        t0 = time.perf_counter()
        summaries.append(run(recipe, out / f"seed-{seed}"))
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    wall = tune_wall + sum(s["wall_seconds"] for s in [*teachers.values(), *summaries])
    table = aggregate(summaries, rows, teachers)
    for r in table:
        std = "" if r["std"] is None else f" ± {r['std']:4.2f}"
        print(f"{r['label']:<48} {r['mean']:6.2f}{std:8}  {fmt_gain(r):>14}  {r['seconds']:6.0f}s")
    fit = final_fit(out / "seed-0", ["student", "peer_alone"])
    curves = read_curves([out / f"seed-{seed}" for seed in range(b["seeds"])])
    for line in findings(table, b["seeds"], fit, curves):
        print("-", line)
    print(f"total {wall:.0f} s")
    device = device_type()
    begin, end, plot_name, heading = TARGETS[device]
    section = markdown(table, b, args, hp, hp_note, wall, summaries[0]["data"], device, fit, curves)
    title = (
        f"Fashion-MNIST test accuracy ({device}), {b['seeds']} seed(s), {b['subset']} images, "
        f"{b['epochs']} epochs" + (" — QUICK SMOKE RUN" if args.quick else "")
    )
    # Always kept beside the runs; the docs only take a full run (a smoke run never replaces
    # the benchmark's published table).
    (out / "accuracy.md").write_text(section.replace(plot_name, "accuracy.png"))
    plot(table, title, out / "accuracy.png")
    print(f"wrote {out / 'accuracy.md'} and {out / 'accuracy.png'}")
    if not args.no_docs and not args.quick:
        replace_section(DOCS, begin, end, section, heading)
        export_recipes(RECIPES / device)
        plot(table, title, DOCS.parent / plot_name)
        if device == "cpu":
            replace_section(
                README, README_BEGIN, README_END, readme_section(table, b), "## Results"
            )
        print(f"wrote {DOCS.relative_to(ROOT)}, docs/{plot_name} and the README's results")
    return 0


def parallel_seeds(argv: list[str], seeds: int, jobs: int) -> None:
    """Train seeds ``0..seeds-1`` in up to ``jobs`` processes at once, each this script with
    ``--only-seed K`` (the teachers are already trained: each child reads them back)."""
    waiting = list(range(seeds))
    running: dict[int, subprocess.Popen] = {}
    while waiting or running:
        while waiting and len(running) < jobs:
            seed = waiting.pop(0)
            command = [sys.executable, __file__, *argv, "--only-seed", str(seed)]
            running[seed] = subprocess.Popen(command)
        time.sleep(1)
        for seed, proc in list(running.items()):
            if proc.poll() is not None:
                del running[seed]
                if proc.returncode != 0:
                    raise SystemExit(f"accuracy.py: seed {seed} failed (exit {proc.returncode})")


def cli(argv: list[str] | None = None) -> int:
    """:func:`main` with a one-line message, not a traceback, for the library's errors."""
    try:
        return main(argv)
    except distill.DistillError as exc:
        print(f"accuracy.py: error: {exc}", file=sys.stderr)
        if "different recipe" in str(exc):
            print(
                "accuracy.py: the flags (or the code) changed since that run; pass another "
                "--out to keep both",
                file=sys.stderr,
            )
        return 2


if __name__ == "__main__":
    raise SystemExit(cli())
