"""Language-model benchmark: KD with each divergence against the same student trained alone.

On ``python-stdlib`` (the running Python's standard library, byte tokenizer), with the models
and budget of ``distill demo --task lm`` (:data:`distill.demo.DEMO_SETTINGS`):

1. ``teacher``: trained once (seed 0) and loaded (``models.teacher.checkpoint``) by every run;
2. ``seed-<s>`` for each seed: the student trained alone (the baseline) and the same student
   distilled with each divergence kind — forward KL (Hinton's KD), reverse KL, generalised
   JSD (β = 0.5), skew forward KL (α = 0.1) and TVD — at the demo's temperature and α, all
   with the teacher-output cache (the teacher runs once per stage).

Scores are test perplexities on the held-out test files, which play no part in any choice. The
table (mean ± std over seeds, per-seed gain over the student alone) goes between the
``lm`` markers of ``docs/benchmarks.md``. Finished runs are read back, interrupted ones
continued.

    python benchmarks/lm.py            # the benchmark (3 seeds)
    python benchmarks/lm.py --quick    # smoke run: 1 seed, a small budget; writes only under
                                       # runs/lm-quick/
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distill.demo import demo_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, mean_std, run  # noqa: E402
from speed import replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- lm:begin -->", "<!-- lm:end -->"
KINDS: dict[str, dict[str, Any] | None] = {
    "forward KL (Hinton's KD)": None,
    "reverse KL": {"kind": "reverse_kl"},
    "JSD, β = 0.5": {"kind": "jsd", "beta": 0.5},
    "skew forward KL, α = 0.1": {"kind": "skew_forward_kl", "skew": 0.1},
    "TVD": {"kind": "tvd"},
}


def budget(quick: bool) -> dict[str, Any]:
    """The demo's recipe (one seed's), shrunk for ``--quick``."""
    recipe = demo_recipe("python-stdlib", ["kd"])
    if quick:
        recipe["data"].update(max_files=40, subset=256)
        recipe["train"]["epochs"] = 2
        recipe["stages"][0]["epochs"] = 1
    return recipe


def teacher_recipe(base: dict[str, Any]) -> dict[str, Any]:
    recipe = copy.deepcopy(base)
    recipe["seed"] = 0
    recipe["models"] = {"teacher": recipe["models"]["teacher"]}
    recipe["stages"] = [recipe["stages"][0]]
    return recipe


def train_teacher(base: dict[str, Any], out: Path) -> tuple[dict[str, Any], Path]:
    """The teacher, trained once (seed 0) under ``out/teacher``, or read back when that run
    finished: its summary and its checkpoint, which every seed's recipe loads."""
    teacher = run(teacher_recipe(base), out / "teacher")
    print(f"teacher: test perplexity {teacher['models']['teacher']['test_perplexity']:.3f}")
    return teacher, out / "teacher" / "checkpoints" / "teacher.pt"


def seed_recipe(base: dict[str, Any], seed: int, teacher: Path) -> dict[str, Any]:
    """The student alone and one KD student per divergence kind, for one seed."""
    recipe = copy.deepcopy(base)
    recipe["seed"] = seed
    student = recipe["models"]["student"]
    recipe["models"] = {"teacher": {**recipe["models"]["teacher"], "checkpoint": str(teacher)}}
    recipe["models"]["student"] = student
    kd = next(s for s in recipe["stages"] if s["method"] == "kd")
    recipe["stages"] = [{"method": "train", "model": "student"}]
    for index, loss in enumerate(KINDS.values()):
        name = f"student_kd{index}"
        recipe["models"][name] = copy.deepcopy(student)
        stage = {**kd, "student": name}
        if loss is not None:
            stage["loss"] = loss
        recipe["stages"].append(stage)
    return recipe


def markdown(results: list[dict[str, Any]], base: dict[str, Any], wall: float) -> str:
    """The section of docs/benchmarks.md."""
    alone = [r["models"]["student"]["test_perplexity"] for r in results]
    rows = [("student alone", alone, None)]
    for index, label in enumerate(KINDS):
        values = [r["models"][f"student_kd{index}"]["test_perplexity"] for r in results]
        gains = [a - v for a, v in zip(alone, values, strict=True)]
        rows.append((f"KD, {label}", values, gains))
    teacher = results[0]["models"]["teacher"]
    data, kd = base["data"], next(s for s in base["stages"] if s["method"] == "kd")
    models = {r: base["models"][r]["config"] for r in ("teacher", "student")}
    params = {r: results[0]["models"][r]["params"] for r in ("teacher", "student")}
    lines = [
        BEGIN,
        f"Test perplexity (bytes) of the student, mean ± std over {len(results)} seed(s); "
        "lower is better. The gain is the student alone's perplexity minus the distilled "
        "student's, per seed.",
        "",
        "| student trained by | test perplexity | gain |",
        "|---|---|---|",
    ]
    for label, values, gains in rows:
        m, s = mean_std(values)
        gain = "" if gains is None else "{:+.3f} ± {:.3f}".format(*mean_std(gains))
        lines.append(f"| {label} | {m:.3f} ± {s:.3f} | {gain} |")
    lines += [
        "",
        f"- Teacher: llama, hidden {models['teacher']['hidden_size']}, "
        f"{models['teacher']['num_hidden_layers']} layers ({params['teacher']:,} parameters), "
        f"{base['stages'][0]['epochs']} epochs, test perplexity "
        f"{teacher['test_perplexity']:.3f}; student: hidden {models['student']['hidden_size']}, "
        f"{models['student']['num_hidden_layers']} layers ({params['student']:,} parameters), "
        f"{base['train']['epochs']} epochs alone and in every KD stage.",
        f"- Data: `python-stdlib`, the first {data['max_files']} files of this machine's "
        f"Python {sys.version.split()[0]} standard library, byte tokenizer, blocks of "
        f"{data['seq_len']} tokens, {data['subset']} training blocks, files split "
        f"{1 - data['val_fraction'] - data['test_fraction']:.0%} / "
        f"{data['val_fraction']:.0%} / {data['test_fraction']:.0%} train / validation / test.",
        f"- KD: T = {kd['temperature']:g}, α = {kd['alpha']:g}, the soft term T²·D(p_T, q_T); "
        "AdamW, cosine schedule, the demo's settings.",
        f"- Machine: {machine()}; wall time {wall / 60:.1f} min.",
        "",
        "Regenerate: `python benchmarks/lm.py` (`--quick` for a smoke run).",
        END,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, a small budget")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (3)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (runs/lm)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    out = args.out or ROOT / "runs" / ("lm-quick" if args.quick else "lm")
    base = budget(args.quick)
    started = time.perf_counter()
    teacher, teacher_file = train_teacher(base, out)
    results = []
    for seed in range(seeds):
        summary = run(seed_recipe(base, seed, teacher_file), out / f"seed-{seed}")
        results.append(summary)
        shown = {n: round(m["test_perplexity"], 3) for n, m in summary["models"].items()}
        print(f"seed {seed}: {shown}")
    wall = teacher["wall_seconds"] + sum(r["wall_seconds"] for r in results)
    section = markdown(results, base, wall)
    print(section)
    if not args.quick:
        replace_section(DOCS, BEGIN, END, section, "## Language models")
        print(f"wrote {DOCS}")
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sys.exit(main())
