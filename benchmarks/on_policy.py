"""On-policy distillation benchmark (GKD): off-policy KD against KD on the student's own samples.

On ``python-stdlib`` with the models and budget of ``distill demo --task lm``
(:data:`distill.demo.DEMO_SETTINGS`), as ``benchmarks/lm.py``:

1. ``teacher``: trained once (seed 0) and loaded by every run;
2. ``seed-<s>`` for each seed: the student trained alone, and the same student distilled with
   reverse KL and with JSD (β = 0.5), each at λ ∈ {0, 0.5, 1}: the share of batches on which
   the student continues the first ``PROMPT_TOKENS`` bytes of each block with
   ``MAX_NEW_TOKENS`` bytes of its own (sampled at temperature 1, no nucleus cut) and the
   divergence is taken over those tokens only (λ = 0 is off-policy KD). The demo's T and α.

3. ``warm-<s>``: GKD's own protocol, which starts from a trained student: the seed's student
   alone, then one more epoch of KD with reverse KL at λ = 0 and at λ = 1.

Two scores per student: its test perplexity on the held-out files, and how plausible the
teacher finds what the student writes, the teacher's mean negative log-likelihood per token of
the student's samples (:func:`distill.generation.sample_nll`: ``EVAL_NEW_TOKENS`` bytes sampled
after the first ``PROMPT_TOKENS`` bytes of the first ``EVAL_PROMPTS`` test blocks). Plus
seconds per optimizer step and the share of them spent generating. The table (mean ± std over
seeds) goes between the ``on-policy`` markers of ``docs/benchmarks.md``. Finished runs are read
back, interrupted ones continued. Torch runs one thread: on a shared 2-core machine more
threads only wait for each other.

    python benchmarks/on_policy.py            # the benchmark (3 seeds, about 40 minutes)
    python benchmarks/on_policy.py --quick    # smoke run: 1 seed, a small budget; writes only
                                              # under runs/lm-on-policy-quick/
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, mean_std, run  # noqa: E402
from lm import budget, train_teacher  # noqa: E402
from speed import replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- on-policy:begin -->", "<!-- on-policy:end -->"
LOSSES: dict[str, dict[str, Any]] = {
    "reverse KL": {"kind": "reverse_kl"},
    "JSD, β = 0.5": {"kind": "jsd", "beta": 0.5},
}
FRACTIONS = (0.0, 0.5, 1.0)
PROMPT_TOKENS, MAX_NEW_TOKENS = 32, 32
EVAL_PROMPTS, EVAL_NEW_TOKENS = 128, 64
WARM = (0.0, 1.0)  # λ of the warm-start pair (reverse KL)


def model_name(loss: int, fraction: float) -> str:
    return f"student_l{loss}_f{int(fraction * 100):03d}"


def seed_recipe(base: dict[str, Any], seed: int, teacher: Path) -> dict[str, Any]:
    """The student alone and one KD student per (divergence, λ), for one seed."""
    recipe = copy.deepcopy(base)
    recipe["seed"] = seed
    student = recipe["models"]["student"]
    recipe["models"] = {"teacher": {**recipe["models"]["teacher"], "checkpoint": str(teacher)}}
    recipe["models"]["student"] = student
    kd = next(s for s in recipe["stages"] if s["method"] == "kd")
    recipe["stages"] = [{"method": "train", "model": "student"}]
    for index, loss in enumerate(LOSSES.values()):
        for fraction in FRACTIONS:
            name = model_name(index, fraction)
            recipe["models"][name] = copy.deepcopy(student)
            stage = {**kd, "student": name, "loss": loss}
            if fraction > 0:
                stage["on_policy"] = {
                    "fraction": fraction,
                    "max_new_tokens": MAX_NEW_TOKENS,
                    "prompt_tokens": PROMPT_TOKENS,
                }
            recipe["stages"].append(stage)
    return recipe


def warm_name(fraction: float) -> str:
    return f"warm_l0_f{int(fraction * 100):03d}"


def warm_recipe(base: dict[str, Any], seed: int, teacher: Path, student: Path) -> dict[str, Any]:
    """GKD's own protocol, from a trained student: the seed's student alone (``student``, a
    checkpoint), then one epoch of KD with reverse KL at λ = 0 and at λ = 1 (AdamW at a
    fine-tuning rate, 1e-3)."""
    recipe = seed_recipe(base, seed, teacher)
    config = recipe["models"]["student"]["config"]
    recipe["models"] = {"teacher": recipe["models"]["teacher"]}
    recipe["train"]["epochs"] = 1
    recipe["train"]["optimizer"]["lr"] = 1.0e-3
    stages = []
    for fraction in WARM:
        name = warm_name(fraction)
        recipe["models"][name] = {"arch": "hf:", "config": config, "checkpoint": str(student)}
        stage = next(s for s in recipe["stages"] if s.get("student") == model_name(0, fraction))
        stages.append({**stage, "student": name})
    recipe["stages"] = stages
    return recipe


def sample_scores(recipe: dict[str, Any], out: Path, prompts: int) -> dict[str, dict[str, float]]:
    """The teacher's NLL of each model's samples on the first ``prompts`` test blocks (kept in
    ``out/sample_nll.json``, so a finished run is only read back)."""
    saved = out / "sample_nll.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    from torch.utils.data import DataLoader, Subset
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    from distill.data import load
    from distill.data.batches import BatchItems
    from distill.generation import Sampling, sample_nll
    from distill.recipe import parse_recipe

    logging.disable_progress_bar()
    parsed = parse_recipe(recipe)
    data = load(parsed.data, seed=parsed.seed)
    test = Subset(data.test, range(min(prompts, len(data.test))))
    batches = list(DataLoader(BatchItems(test), batch_size=32, collate_fn=data.collate))
    sampling = Sampling(max_new_tokens=EVAL_NEW_TOKENS, prompt_tokens=PROMPT_TOKENS)
    models = {
        n: AutoModelForCausalLM.from_pretrained(out / "models" / n)
        for n in recipe["models"]
        if (out / "models" / n).is_dir()
    }
    if "teacher" not in models:  # loaded from a checkpoint, so not written by this run
        models["teacher"] = AutoModelForCausalLM.from_pretrained(
            Path(recipe["models"]["teacher"]["checkpoint"]).parent.parent / "models" / "teacher"
        )
    scores = {
        name: sample_nll(model, models["teacher"], batches, data.tokenizer, sampling, seed=0)
        for name, model in models.items()
    }
    saved.write_text(json.dumps(scores, indent=1) + "\n")
    return scores


def step_costs(out: Path, name: str, batch_size: int) -> tuple[float, float]:
    """(seconds per optimizer step, share of them spent generating) of the stage that trained
    ``name``, from its records in ``metrics.jsonl`` (one optimizer step per batch here; the
    ``gen_seconds`` part is a mean per batch)."""
    seconds, generating, steps = 0.0, 0.0, 0
    summary = json.loads((out / "summary.json").read_text())
    batches = -(-summary["data"]["train"] // batch_size)
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["stage"] == name:
            seconds += record["seconds"]
            generating += record["train"].get("gen_seconds", 0.0) * batches
            steps += batches
    return seconds / steps, generating / seconds


def markdown(results: list[dict[str, Any]], base: dict[str, Any], wall: float) -> str:
    """The section of docs/benchmarks.md."""

    def cells(name: str) -> list[str]:
        ppl = [r["summary"]["models"][name]["test_perplexity"] for r in results]
        nll = [r["nll"][name]["nll"] for r in results]
        length = [r["nll"][name]["length"] for r in results]
        return [
            "{:.3f} ± {:.3f}".format(*mean_std(ppl)),
            "{:.3f} ± {:.3f}".format(*mean_std(nll)),
            f"{mean_std(length)[0]:.1f}",
        ]

    lines = [
        BEGIN,
        f"Mean ± std over {len(results)} seed(s); lower is better in both score columns. "
        "*Teacher NLL of samples*: the teacher's mean negative log-likelihood (nats per byte) "
        "of what the model writes itself: "
        f"{EVAL_NEW_TOKENS} bytes sampled at temperature 1 after the first {PROMPT_TOKENS} "
        f"bytes of each of the first {EVAL_PROMPTS} test blocks (stopping at EOS; *length* is "
        "the mean continuation). λ: the share of training batches on which the student "
        "continued the prompts itself (on-policy); λ = 0 is off-policy KD.",
        "",
        "| student trained by | test perplexity | teacher NLL of samples | length | s / step "
        "| generating |",
        "|---|---|---|---|---|---|",
        f"| teacher (its own samples) | {' | '.join(cells('teacher'))} | | |",
        f"| student alone | {' | '.join(cells('student'))} | {{:.3f}} | |".format(
            mean_std([r["costs"]["student"][0] for r in results])[0]
        ),
    ]
    for index, label in enumerate(LOSSES):
        for fraction in FRACTIONS:
            name = model_name(index, fraction)
            per_step = mean_std([r["costs"][name][0] for r in results])[0]
            share = mean_std([r["costs"][name][1] for r in results])[0]
            lines.append(
                f"| KD, {label}, λ = {fraction:g} | {' | '.join(cells(name))} | "
                f"{per_step:.3f} | {share:.0%} |"
            )
    for fraction in WARM if warm_name(0.0) in results[0]["nll"] else ():
        name = warm_name(fraction)
        per_step = mean_std([r["costs"][name][0] for r in results])[0]
        share = mean_std([r["costs"][name][1] for r in results])[0]
        lines.append(
            f"| student alone, then 1 epoch of KD, reverse KL, λ = {fraction:g} | "
            f"{' | '.join(cells(name))} | {per_step:.3f} | {share:.0%} |"
        )
    lines += ["", "**What wins here.**", "", *verdict(results)]
    data, kd = base["data"], next(s for s in base["stages"] if s["method"] == "kd")
    models = {r: base["models"][r]["config"] for r in ("teacher", "student")}
    params = {r: results[0]["summary"]["models"][r]["params"] for r in ("teacher", "student")}
    lines += [
        "",
        f"- The demo's models and data (`distill demo --task lm`, as `benchmarks/lm.py`): teacher "
        f"hidden {models['teacher']['hidden_size']}, {models['teacher']['num_hidden_layers']} "
        f"layers ({params['teacher']:,} parameters, {base['stages'][0]['epochs']} epochs); "
        f"student hidden {models['student']['hidden_size']}, "
        f"{models['student']['num_hidden_layers']} layers ({params['student']:,} parameters), "
        f"{base['train']['epochs']} epochs alone and in every KD stage; `python-stdlib`, the "
        f"first {data['max_files']} files, byte tokenizer, blocks of {data['seq_len']}, "
        f"{data['subset']} training blocks, batch {data['batch_size']}.",
        f"- KD: T = {kd['temperature']:g}, α = {kd['alpha']:g}: off-policy batches train "
        "(1 − α)·CE + α·T²·D over the block; on-policy batches α·T²·D over the generated tokens "
        "only (no CE on the student's own samples), the teacher scoring prompt + continuation "
        f"in one forward. Training generations: {MAX_NEW_TOKENS} bytes after the first "
        f"{PROMPT_TOKENS} of each block, temperature 1, top-p 1, with the KV cache. The teacher "
        "cache serves the off-policy batches.",
        "- s / step: training seconds per optimizer step (evaluation excluded); generating: "
        "the share of them spent in `generate`.",
        f"- Machine: {machine()}, shared with other jobs while it ran (timings are "
        f"indicative); wall time {wall / 60:.1f} min.",
        "",
        "Regenerate: `python benchmarks/on_policy.py` (`--quick` for a smoke run).",
        END,
    ]
    return "\n".join(lines)


def verdict(results: list[dict[str, Any]]) -> list[str]:
    """Plain sentences: which student is best on each score, and on-policy against
    off-policy per seed."""

    def mean(name: str, score: str) -> float:
        values = [
            r["summary"]["models"][name]["test_perplexity"]
            if score == "ppl"
            else r["nll"][name]["nll"]
            for r in results
        ]
        return mean_std(values)[0]

    labels = {"student": "the student alone"}
    for index, label in enumerate(LOSSES):
        for fraction in FRACTIONS:
            labels[model_name(index, fraction)] = f"KD with {label} at λ = {fraction:g}"
    best_ppl = min(labels, key=lambda n: mean(n, "ppl"))
    best_nll = min(labels, key=lambda n: mean(n, "nll"))
    lines = [
        f"- Lowest test perplexity: {labels[best_ppl]} ({mean(best_ppl, 'ppl'):.3f}).",
        f"- Lowest teacher NLL of the student's own samples: {labels[best_nll]} "
        f"({mean(best_nll, 'nll'):.3f}; the teacher's on its own samples: "
        f"{mean('teacher', 'nll'):.3f}).",
    ]
    for index, label in enumerate(LOSSES):
        off = model_name(index, 0.0)
        for fraction in FRACTIONS[1:]:
            on = model_name(index, fraction)
            ppl = [
                r["summary"]["models"][on]["test_perplexity"]
                - r["summary"]["models"][off]["test_perplexity"]
                for r in results
            ]
            nll = [r["nll"][on]["nll"] - r["nll"][off]["nll"] for r in results]
            lines.append(
                f"- {label}, λ = {fraction:g} − λ = 0, per seed: perplexity "
                "{:+.3f} ± {:.3f}, teacher NLL {:+.3f} ± {:.3f} ".format(
                    *mean_std(ppl), *mean_std(nll)
                )
                + f"(better in {sum(d < 0 for d in ppl)}/{len(ppl)} and "
                f"{sum(d < 0 for d in nll)}/{len(nll)} seeds)."
            )
    if warm_name(0.0) in results[0]["nll"]:
        on, off = warm_name(1.0), warm_name(0.0)
        ppl = [
            r["summary"]["models"][on]["test_perplexity"]
            - r["summary"]["models"][off]["test_perplexity"]
            for r in results
        ]
        nll = [r["nll"][on]["nll"] - r["nll"][off]["nll"] for r in results]
        lines.append(
            "- From the trained student alone (GKD's setting), one more epoch with reverse KL, "
            "λ = 1 − λ = 0, per seed: perplexity {:+.3f} ± {:.3f}, teacher NLL {:+.3f} ± "
            "{:.3f} ".format(*mean_std(ppl), *mean_std(nll))
            + f"(better in {sum(d < 0 for d in ppl)}/{len(ppl)} and "
            f"{sum(d < 0 for d in nll)}/{len(nll)} seeds)."
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, a small budget")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (3)")
    parser.add_argument("--out", type=Path, default=None, help="run folder (runs/lm-on-policy)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    out = args.out or ROOT / "runs" / ("lm-on-policy-quick" if args.quick else "lm-on-policy")
    base = budget(args.quick)
    started = time.perf_counter()
    teacher, teacher_file = train_teacher(base, out)
    results, wall = [], teacher["wall_seconds"]
    for seed in range(seeds):
        recipe = seed_recipe(base, seed, teacher_file)
        folder = out / f"seed-{seed}"
        summary = run(recipe, folder)
        t0 = time.perf_counter()
        nll = sample_scores(recipe, folder, 32 if args.quick else EVAL_PROMPTS)
        wall += summary["wall_seconds"] + time.perf_counter() - t0
        size = recipe["data"]["batch_size"]
        costs = {n: step_costs(folder, n, size) for n in recipe["models"] if n != "teacher"}
        warm = warm_recipe(base, seed, teacher_file, folder / "checkpoints" / "student.pt")
        warm_folder = out / f"warm-{seed}"
        warm_summary = run(warm, warm_folder)
        t0 = time.perf_counter()
        warm_nll = sample_scores(warm, warm_folder, 32 if args.quick else EVAL_PROMPTS)
        wall += warm_summary["wall_seconds"] + time.perf_counter() - t0
        summary["models"].update(warm_summary["models"])
        nll.update({n: v for n, v in warm_nll.items() if n != "teacher"})
        costs.update(
            {n: step_costs(warm_folder, n, size) for n in warm["models"] if n != "teacher"}
        )
        results.append({"summary": summary, "nll": nll, "costs": costs})
        shown = {
            n: (round(m["test_perplexity"], 3), round(nll[n]["nll"], 3))
            for n, m in summary["models"].items()
        }
        print(f"seed {seed} (test perplexity, teacher NLL of samples): {shown}")
    section = markdown(results, base, wall)
    print(section)
    if not args.quick:
        replace_section(DOCS, BEGIN, END, section, "## On-policy distillation")
        print(f"wrote {DOCS}")
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main())
