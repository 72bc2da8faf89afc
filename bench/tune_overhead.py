"""Orchestration overhead: the same trials through Ray Tune (+ Ray Train, Optuna-free grid, MLflow)
vs a plain sequential loop of the trial function, on this machine.

    python -m bench.tune_overhead [--trials 4] [--out /tmp/tune_overhead]

Both paths share one warm teacher/activation cache, so the difference is orchestration:
Ray start, trial actors, the Ray Train worker group, checkpoints and MLflow logging.
Prints per-trial overhead in seconds and as % of the sequential trial time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml

from bench.common import RESULTS, write_json
from study.config import load_trial_config
from study.contract import VAL_R2
from study.sweep.driver import run_sweep
from study.sweep.space import load_sweep
from study.trial.pipeline import run_trial

BASE = {
    "teacher": {"depth": 6, "width": 48, "heads": 4, "epochs": 15},
    "distill": {"batch_size": 128, "stage1": {"epochs": 3}, "stage2": {"epochs": 3}},
    "runtime": {"num_threads": 1, "progress": False},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--out", default="/tmp/tune_overhead")
    args = parser.parse_args()
    out = Path(args.out)
    cache = out / "cache"
    base = {**BASE, "runtime": {**BASE["runtime"], "cache_dir": str(cache)}}
    ks = [2, 3]
    spec_path = out / "overhead.yaml"
    out.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(
        yaml.safe_dump(
            {
                "name": "overhead",
                "base": base,
                "space": {"raptor.k": {"choice": ks}},
                "search": {
                    "sampler": "grid",
                    "metric": VAL_R2,
                    "mode": "max",
                    "num_samples": args.trials // len(ks),
                    "max_concurrent": 1,
                },
                "resources": {"driver_cpu": 0.5, "workers": 1, "worker_cpu": 0.5},
            }
        )
    )
    spec = load_sweep(spec_path)
    configs = [
        spec.trial_config({"raptor.k": k}, name=f"seq-{i}-k{k}") for i in range(args.trials // len(ks)) for k in ks
    ]

    run_trial(
        load_trial_config(
            None,
            {
                **{f"teacher.{k}": v for k, v in BASE["teacher"].items()},
                "runtime.cache_dir": str(cache),
                "runtime.progress": False,
                "distill.stage1.epochs": 0,
                "distill.stage2.epochs": 0,
            },
        ),
        out / "warmup",
    )
    t0 = time.perf_counter()
    for cfg in configs:
        run_trial(cfg, out / "sequential" / cfg.name)
    sequential_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    table = run_sweep(spec_path, out / "tune")
    tune_s = time.perf_counter() - t0
    n = len(configs)
    per_trial_seq, per_trial_tune = sequential_s / n, tune_s / len(table)
    result = {
        "trials": n,
        "sequential_s": sequential_s,
        "tune_s": tune_s,
        "per_trial_sequential_s": per_trial_seq,
        "per_trial_tune_s": per_trial_tune,
        "overhead_per_trial_s": per_trial_tune - per_trial_seq,
        "overhead_pct": 100 * (per_trial_tune - per_trial_seq) / per_trial_seq,
    }
    print(json.dumps(result, indent=2))
    write_json(RESULTS / "throughput" / "tune_overhead.json", result, indent=2)


if __name__ == "__main__":
    main()
