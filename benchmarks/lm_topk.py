"""How the student's perplexity varies with the k of an offline teacher store.

On the language-model benchmark's setting (``benchmarks/lm.py``: ``python-stdlib``, byte
tokenizer, the models and budget of ``distill demo --task lm``, read from
:data:`distill.demo.DEMO_SETTINGS` at run time), for each seed:

1. the teacher, trained once (seed 0) and loaded by every run, as in ``benchmarks/lm.py``;
2. a store per k in {1, 8, 64, V} (V = the vocabulary, 259 bytes and specials), built by
   ``distill cache build``'s code from the KD stage (the demo's temperature, α and loss);
3. one run per row, each a one-stage recipe training the model ``student`` — alone, by KD
   from the live teacher (no cache), or by KD from one store (``teacher_logits``) — so that
   every row starts from the same initial weights and sees the same batches: the rows differ
   in the teacher's signal only, and k = V differs from the live teacher by the float16
   rounding of the stored log-probabilities alone.

The table (validation and test perplexity, mean ± std over seeds, and bytes per token of each
store) goes between the ``lm-topk`` markers of ``docs/teacher-store.md``.

    python benchmarks/lm_topk.py               # 1 seed (about 1.5 hours on 2 busy cores)
    python benchmarks/lm_topk.py --seeds 3
    python benchmarks/lm_topk.py --quick       # smoke run: a small budget, writes only under
                                               # runs/lm-topk-quick/
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch

from distill.cache.build import build_store
from distill.cache.offline import TeacherStore
from distill.recipe import parse_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import machine, mean_std, run  # noqa: E402
from lm import budget, train_teacher  # noqa: E402
from speed import replace_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "teacher-store.md"
BEGIN, END = "<!-- lm-topk:begin -->", "<!-- lm-topk:end -->"


def row_recipe(base: dict[str, Any], seed: int, teacher: Path, store: Path | None | str) -> dict:
    """A one-stage recipe training ``student``: alone (``store="alone"``), by KD from the live
    teacher (``None``) or from a store (its path)."""
    recipe = copy.deepcopy(base)
    recipe["seed"] = seed
    recipe["models"] = {
        "teacher": {**recipe["models"]["teacher"], "checkpoint": str(teacher)},
        "student": recipe["models"]["student"],
    }
    kd = next(s for s in recipe["stages"] if s["method"] == "kd")
    stage = {k: v for k, v in kd.items() if not k.startswith("cache")}  # live: no cache
    stage["student"] = "student"
    if store == "alone":
        stage = {"method": "train", "model": "student"}
    elif store is not None:
        stage["teacher_logits"] = str(store)
    recipe["stages"] = [stage]
    return recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, a small budget")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="run folder (runs/lm-topk)")
    args = parser.parse_args(argv)
    out = args.out or ROOT / "runs" / ("lm-topk-quick" if args.quick else "lm-topk")
    base = budget(args.quick)
    started = time.perf_counter()
    teacher, teacher_file = train_teacher(base, out)
    results, sizes = [], {}
    for seed in range(args.seeds):
        # The stores depend on the seed: it draws the data's splits.
        live = parse_recipe(row_recipe(base, seed, teacher_file, None))
        stores: dict[int, Path] = {}
        for k in (1, 8, 64, None):
            path = out / f"seed-{seed}" / "stores" / f"k{k or 'V'}"
            if k is None:  # the whole vocabulary
                k = TeacherStore(stores[1]).classes
            build_store(live, "student", path, topk=k, log=lambda _m: None)
            stores[k] = path
            store = TeacherStore(path)
            sizes[k] = store.nbytes / store.positions
            print(f"seed {seed}: {store.describe()}", flush=True)
        rows: dict[str, Any] = {"alone": "alone", "live": None, **stores}
        summary = {}
        for name, store_or_mode in rows.items():
            found = run(
                row_recipe(base, seed, teacher_file, store_or_mode),
                out / f"seed-{seed}" / f"student-{name}",
            )
            summary[name] = found["models"]["student"]
            print(f"seed {seed}, {name}: validation perplexity "
                  f"{summary[name]['val_perplexity']:.3f}", flush=True)
        results.append(summary)
    section = markdown(results, base, sizes, teacher, time.perf_counter() - started)
    print(section)
    if not args.quick:
        replace_section(DOCS, BEGIN, END, section, "## k against perplexity")
        print(f"wrote {DOCS}")
    return 0


def markdown(
    results: list[dict[str, Any]], base: dict[str, Any], sizes: dict[int, float],
    teacher: dict[str, Any], wall: float,
) -> str:
    rows: list[tuple[str, Any, int | None]] = [
        ("student alone", "alone", None), ("KD, live teacher", "live", None)
    ]
    rows += [(f"KD from the store, k = {k}", k, k) for k in sizes]
    vocab = max(sizes)
    lines = [
        BEGIN,
        f"Perplexity (bytes) of the student, mean ± std over {len(results)} seed(s); lower "
        "is better. Every row trains the same initial student on the same batches, so the "
        "last column pairs each row with the live teacher's row of the same seed (the seeds "
        "draw different data splits, which move every row together). Bytes per "
        f"token: the store's files over its tokens (dense float16 logits: {2 * vocab} bytes "
        f"per token at this vocabulary of {vocab} ids).",
        "",
        "| student trained by | bytes / token | validation perplexity | test perplexity "
        "| validation − live teacher's, per seed |",
        "|---|---|---|---|---|",
    ]
    for label, name, k in rows:
        val = mean_std([r[name]["val_perplexity"] for r in results])
        test = mean_std([r[name]["test_perplexity"] for r in results])
        size = "" if k is None else f"{sizes[k]:.0f}"
        paired = "" if name == "live" else "{:+.3f} ± {:.3f}".format(*mean_std(
            [r[name]["val_perplexity"] - r["live"]["val_perplexity"] for r in results]
        ))
        lines.append(
            f"| {label} | {size} | {val[0]:.3f} ± {val[1]:.3f} | {test[0]:.3f} ± {test[1]:.3f} "
            f"| {paired} |"
        )
    kd = next(s for s in base["stages"] if s["method"] == "kd")
    data = base["data"]
    models = {r: base["models"][r]["config"] for r in ("teacher", "student")}
    lines += [
        "",
        f"- Setting: `benchmarks/lm.py`'s (the demo's): teacher llama hidden "
        f"{models['teacher']['hidden_size']} × {models['teacher']['num_hidden_layers']} layers "
        f"(test perplexity {teacher['models']['teacher']['test_perplexity']:.3f}), student "
        f"hidden {models['student']['hidden_size']} × {models['student']['num_hidden_layers']} "
        f"layers, {base['train']['epochs']} epochs; `python-stdlib`, {data['max_files']} files, "
        f"{data['subset']} training blocks of {data['seq_len']} bytes; KD with T = "
        f"{kd['temperature']:g}, α = {kd['alpha']:g}, "
        f"{'forward KL' if 'loss' not in kd else kd['loss']['kind']}.",
        "- The live teacher runs at every step (no cache). The stores keep float16 "
        "log-probabilities; k = V keeps every id.",
        f"- Machine: {machine()}; wall time {wall / 60:.1f} min.",
        "",
        "Regenerate: `python benchmarks/lm_topk.py` (`--seeds 3` for more seeds).",
        END,
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    sys.exit(main())
