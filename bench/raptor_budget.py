"""how long must a Raptor distil before its fidelity plateaus? r2_pooled.final against distillation budget.

For each teacher (default: two digits teachers, SD 0.0 and 0.5 on the uniform schedule, the study's recipe) the
trial pipeline prepares the teacher, its states of the WHOLE training split (`data.raptor_samples` unset) and the
k-phase partition once; then, for every budget (stage-1 + stage-2 epochs), a Raptor of the same seed distils with
the reference's stage-1 schedule (`distill.tf_mode: loss_mix`, lambda 1 -> 0 over the first 25% of steps,
gradient clip 1.0) and its rollout is scored on the test split as the trial scores it (`r2_pooled.final`, also
the strict `r2.final` and the cls group). The study budget is the smallest budget whose mean over teachers of
`r2_pooled.final` lies within `--tolerance` (0.01) of the largest mean (docs/science.md, "The Raptor budget").
Writes results/<name>/ (results/README.md's layout for a measurement): <name>.json (machine, settings, per-run
rows, per-budget means, the pick) and README.md (the tables, the machine and the command).

Not part of CI (tests/test_raptor_budget.py runs it with tiny overrides). Usage:
    nice python -m bench.raptor_budget [--budgets 1:1 2:1 4:2 8:4 16:8] [--sds 0.0 0.5] [--k 3] [--device cpu]
                                       [--set data.name=fashion_mnist ...] [--name raptor_budget_digits]
    python -m bench.raptor_budget --merge A.json B.json --name NAME   (chunks measured apart, e.g. one teacher per
                                       GPU command: their runs pooled, the means and the pick computed again)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.common import RESULTS, machine_line, parse_sets, results_dir, write_json, write_report
from study.config import load_trial_config
from study.contract import R2_FINAL, R2_POOLED_FINAL, group_metric
from study.science.distill import evaluate_fidelity
from study.trial.pipeline import InProcess, prepare

RECIPE = {
    "distill.tf_mode": "loss_mix",
    "distill.anneal": 0.25,
    "distill.grad_clip": 1.0,
    "teacher.sd_schedule": "uniform",
    "dynamics.enabled": False,
}
"""The study's distillation recipe (docs/science.md, "The Raptor budget") and teachers on the paper's SD schedule."""


def parse_budget(text: str) -> tuple[int, int]:
    """'S1:S2' -> (stage-1 epochs, stage-2 epochs)."""
    first, sep, second = text.partition(":")
    try:
        budget = (int(first), int(second))
    except ValueError:
        budget = None
    if not sep or budget is None or min(budget) < 0 or sum(budget) == 0:
        raise SystemExit(f"--budgets {text}: expected S1:S2, stage epochs >= 0, not both 0")
    return budget


def measure(base: dict, sds: list[float], budgets: list[tuple[int, int]], out_root: Path) -> pd.DataFrame:
    """One row per (teacher SD, budget): r2_pooled.final, r2.final (all tokens and cls), optimizer steps (both stages)
    and the distillation time."""
    rows = []
    for sd in sds:
        prepared = prepare(load_trial_config(None, {**base, "teacher.sd_rate": sd}))
        for stage1, stage2 in budgets:
            cfg = load_trial_config(
                None,
                {
                    **base,
                    "teacher.sd_rate": sd,
                    "distill.stage1.epochs": stage1,
                    "distill.stage2.epochs": stage2,
                    "distill.stage2.enabled": stage2 > 0,
                },
            )
            run = dataclasses.replace(prepared, cfg=cfg, timings={})
            t0 = time.perf_counter()
            raptor, _ = InProcess().distill(run, out_root / f"sd{sd:g}_{stage1}_{stage2}")
            seconds = time.perf_counter() - t0
            scores = evaluate_fidelity(
                raptor.to(run.device), run.states["test"], run.teacher.num_registers, run.device, cfg.runtime.amp
            )
            rows.append(
                {
                    "sd": sd,
                    "stage1_epochs": stage1,
                    "stage2_epochs": stage2,
                    "epochs": stage1 + stage2,
                    "steps": -(-len(run.states["train"]) // cfg.distill.batch_size) * (stage1 + stage2),
                    "train_images": len(run.states["train"]),
                    R2_POOLED_FINAL: float(scores.r2_pooled["all"][-1]),
                    R2_FINAL: float(scores.r2["all"][-1]),
                    group_metric(R2_POOLED_FINAL, "cls"): float(scores.r2_pooled["cls"][-1]),
                    "distill_s": seconds,
                }
            )
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()))
    return pd.DataFrame(rows)


def pick_budget(runs: pd.DataFrame, tolerance: float) -> tuple[pd.DataFrame, dict]:
    """Mean over teachers per budget, and the smallest budget (fewest epochs, then fewest stage-1 epochs) whose
    mean r2_pooled.final is within `tolerance` of the largest mean."""
    columns = [R2_POOLED_FINAL, R2_FINAL, group_metric(R2_POOLED_FINAL, "cls"), "distill_s"]
    keys = ["stage1_epochs", "stage2_epochs", "epochs", *(["steps"] if "steps" in runs else [])]
    means = runs.groupby(keys, sort=False)[columns].mean().reset_index()
    means.insert(len(keys), "teachers", runs.groupby(keys, sort=False).size().to_numpy())
    means = means.sort_values(["epochs", "stage1_epochs"], kind="stable").reset_index(drop=True)
    best = float(means[R2_POOLED_FINAL].max())
    within = means[means[R2_POOLED_FINAL] >= best - tolerance]
    chosen = within.iloc[0]
    pick = {
        "stage1_epochs": int(chosen["stage1_epochs"]),
        "stage2_epochs": int(chosen["stage2_epochs"]),
        "r2_pooled_final": float(chosen[R2_POOLED_FINAL]),
        "largest_r2_pooled_final": best,
        "tolerance": tolerance,
    }
    return means, pick


def render(record: dict, folder: Path, command: str) -> Path:
    """folder/README.md of a budget record: the setting, machine, pick and both tables."""
    pick = record["pick"]
    return write_report(
        folder,
        "python -m bench.raptor_budget",
        [
            f"Command: `{command}`",
            record["setting"],
            record["machine"],
            f"**Study budget: stage 1 {pick['stage1_epochs']} + stage 2 {pick['stage2_epochs']} epochs** (the smallest "
            f"budget whose mean {R2_POOLED_FINAL} over teachers, {pick['r2_pooled_final']:.4f}, is within "
            f"{pick['tolerance']} of the largest, {pick['largest_r2_pooled_final']:.4f}).",
        ],
        {"mean over teachers per budget": pd.DataFrame(record["means"]), "per run": pd.DataFrame(record["runs"])},
        {},
    )


def merge(paths: list[str], tolerance: float) -> dict:
    """One record from the records of chunks (the same budgets on other teachers): runs pooled, means and pick
    computed again; each chunk's setting and machine line kept."""
    records = [json.loads(Path(path).read_text()) for path in paths]
    runs = pd.DataFrame([row for record in records for row in record["runs"]])
    if runs.duplicated(["sd", "stage1_epochs", "stage2_epochs"]).any():
        raise SystemExit(f"--merge: two chunks measured the same teacher SD and budget ({paths})")
    means, pick = pick_budget(runs, tolerance)
    return {
        "setting": " | ".join(dict.fromkeys(record["setting"] for record in records)),
        "machine": " | ".join(record["machine"] for record in records),
        "overrides": records[0]["overrides"],
        "merged_from": [Path(path).name for path in paths],
        "runs": runs.to_dict(orient="records"),
        "means": means.to_dict(orient="records"),
        "pick": pick,
    }


def measured(args) -> dict:
    """The record of one measurement: every budget on one teacher per SD rate of `args`."""
    budgets = [parse_budget(text) for text in args.budgets]
    if len(args.sds) < 1 or not 0 < args.tolerance < 1:
        raise SystemExit("--sds: at least one teacher; --tolerance: in (0, 1)")
    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="raptor_budget_cache_"))
    base = {
        **RECIPE,
        "runtime.cache_dir": str(cache_dir),
        "runtime.progress": False,
        "runtime.device": args.device,
        "raptor.k": args.k,
        **parse_sets(args.sets),
    }
    if args.threads:
        base["runtime.num_threads"] = args.threads
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="raptor_budget_runs_") as out_root:
        runs = measure(base, args.sds, budgets, Path(out_root))
    means, pick = pick_budget(runs, args.tolerance)
    cfg = load_trial_config(None, base)
    setting = (
        f"{cfg.data.name}: teacher depth {cfg.teacher.depth} width {cfg.teacher.width} patch {cfg.teacher.patch_size} "
        f"epochs {cfg.teacher.epochs}, SD {args.sds} ({cfg.teacher.sd_schedule}), seed {cfg.teacher.seed}; k={args.k}; "
        f"Raptors distil on the whole training split ({int(runs['train_images'].iloc[0])} images), tf_mode "
        f"{cfg.distill.tf_mode}, anneal {cfg.distill.anneal}, grad_clip {cfg.distill.grad_clip}, batch "
        f"{cfg.distill.batch_size}, Raptor seed {cfg.seed}; R^2 on the test split; extra overrides "
        f"{parse_sets(args.sets) or 'none'}"
    )
    return {
        "setting": setting,
        "machine": machine_line(t_start),
        "overrides": {k: v for k, v in base.items() if k != "runtime.cache_dir"},
        "runs": runs.to_dict(orient="records"),
        "means": means.to_dict(orient="records"),
        "pick": pick,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", default=["1:1", "2:1", "4:2", "8:4", "16:8"], help="S1:S2 epochs")
    parser.add_argument("--sds", type=float, nargs="+", default=[0.0, 0.5], help="one teacher per SD rate")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="runtime.num_threads (default: torch's)")
    parser.add_argument("--cache-dir", help="teacher/activation cache (default: a fresh temp folder)")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="extra trial override KEY=VALUE")
    parser.add_argument("--results", default=str(RESULTS), help="root of the measurement folders")
    parser.add_argument("--name", default="raptor_budget_digits", help="the measurement's folder and JSON stem")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="pool the records of chunks; measure nothing")
    args = parser.parse_args(argv)
    record = merge(args.merge, args.tolerance) if args.merge else measured(args)
    folder = results_dir(args.name, args.results)
    write_json(folder / f"{args.name}.json", record)
    render(record, folder, " ".join(["python -m bench.raptor_budget", *(sys.argv[1:] if argv is None else argv)]))
    print(record["machine"])
    print(f"picked stage1 {record['pick']['stage1_epochs']} + stage2 {record['pick']['stage2_epochs']}; wrote {folder}")
    return record


if __name__ == "__main__":
    main()
