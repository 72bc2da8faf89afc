"""how long does one default trial take, and what does stage 2 buy?

Runs the `raptor-study trial` default config (digits, 8-block teacher of width 64,
patch 2, k=2) end to end from an EMPTY cache (teacher training + activation
extraction + distillation + evaluation), then the same trial with
`distill.stage2.enabled=false` (stage 1 only) on the now-warm cache (same teacher),
and finally both stages again on the warm cache, so the two distillation variants
are compared on equal footing. Prints one table and writes it to results/trial_time/ (README.md, trial_time.csv).

Not part of CI. Usage:
    nice python -m bench.trial_time [--cache-dir /tmp/fresh] [--out /tmp/bench_runs] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.common import RESULTS, machine_line, write_report
from study.config import load_trial_config
from study.contract import ACC_AGREEMENT, ACC_RATIO, R2_FINAL, R2_MEAN, TEACHER_TEST_ACC, group_metric
from study.trial.pipeline import run_trial


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", help="must not exist yet or be empty (default: a fresh temp folder)")
    parser.add_argument("--out", help="trial output root (default: a temp folder)")
    parser.add_argument("--threads", type=int, default=None, help="runtime.num_threads (default: torch's)")
    parser.add_argument("--results", default=str(RESULTS / "trial_time"), help="where the tables go")
    args = parser.parse_args()

    cache_dir = Path(args.cache_dir or tempfile.mkdtemp(prefix="raptor_bench_cache_"))
    if cache_dir.exists() and any(cache_dir.iterdir()):
        sys.exit(f"--cache-dir {cache_dir} is not empty: the first run must start from an empty cache")
    out_root = Path(args.out or tempfile.mkdtemp(prefix="raptor_bench_runs_"))
    base = {"runtime.cache_dir": str(cache_dir), "runtime.progress": False}
    if args.threads:
        base["runtime.num_threads"] = args.threads

    variants = [
        ("both stages, empty cache", "cold_both", {}),
        ("stage 1 only, warm cache", "warm_stage1", {"distill.stage2.enabled": False}),
        ("both stages, warm cache", "warm_both", {}),
    ]
    rows, t_start = [], time.perf_counter()
    for label, name, overrides in variants:
        cfg = load_trial_config(None, {**base, **overrides, "name": name})
        t0, c0 = time.perf_counter(), time.process_time()
        result = run_trial(cfg, out_root / name)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        m, timings = result["metrics"], result["timings"]
        row = {
            "run": label,
            "teacher_test_acc": m.get(TEACHER_TEST_ACC),
            **{key: m[key] for key in (R2_FINAL, group_metric(R2_FINAL, "cls"), R2_MEAN, ACC_RATIO, ACC_AGREEMENT)},
            "phase_bounds": str(result["partition"]["phase_bounds"]),
            "distill_s": timings.get("distill_s"),
            "wall_s": wall,
            "cpu_s": cpu,
        }
        # prepare() timing keys differ between revisions (teacher_s + activations_s, or teacher_and_states_s)
        row.update({f"t.{k}": v for k, v in timings.items() if k not in ("distill_s", "total_s")})
        rows.append(row)
        print(f"[{label}] done in {wall:.1f} s wall, {cpu:.1f} s CPU (all threads)", flush=True)

    table = pd.DataFrame(rows)
    machine = (
        f"{machine_line(t_start)} (wall_s includes waiting for CPUs shared with other jobs; "
        "cpu_s is this process's CPU time over all its threads)"
    )
    cfg = load_trial_config(None, base)
    header = (
        f"default trial: digits, teacher depth {cfg.teacher.depth} width {cfg.teacher.width} patch "
        f"{cfg.teacher.patch_size} epochs {cfg.teacher.epochs}, k={cfg.raptor.k}, stage epochs "
        f"{cfg.distill.stage1.epochs}+{cfg.distill.stage2.epochs}"
    )
    text = table.to_string(index=False, float_format=lambda v: f"{v:.4f}")
    print(header)
    print(machine)
    print(text)
    readme = write_report(
        Path(args.results), "python -m bench.trial_time", [header, machine], {"trials": table}, {"trial_time": table}
    )
    print(f"wrote {readme} and trial_time.csv beside it")


if __name__ == "__main__":
    main()
