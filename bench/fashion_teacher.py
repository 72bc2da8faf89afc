"""Teacher accuracy of the from-scratch Fashion-MNIST teacher of search_spaces/fashion_sd_study.yaml
at a short budget (CPU here; the spec's full budget belongs on a GPU).

    python -m bench.fashion_teacher --max-samples 3000 --epochs 5 --threads 1 --cache /tmp/fm_cache
"""

from __future__ import annotations

import argparse
import json
import time

from study.runtime import setup
from study.sweep.space import load_sweep
from study.trial.data import load_splits
from study.trial.teacher import load_teacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="search_spaces/fashion_sd_study.yaml")
    parser.add_argument("--max-samples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--sd-rate", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", default=".raptor_cache")
    args = parser.parse_args()
    spec = load_sweep(
        args.spec,
        {
            "data.max_samples": args.max_samples,
            "teacher.epochs": args.epochs,
            "teacher.warmup_epochs": min(1, args.epochs),
            "runtime.device": args.device,
            "runtime.num_threads": args.threads,
            "runtime.cache_dir": args.cache,
            "space.teacher.sd_rate": {"choice": [args.sd_rate]},
        },
    )
    cfg = spec.trial_config({"teacher.sd_rate": args.sd_rate})
    device = setup(cfg.runtime)
    t0 = time.perf_counter()
    teacher = load_teacher(cfg, device, lambda s: load_splits(cfg.data, s))
    seconds = time.perf_counter() - t0
    import torch

    history = torch.load(f"{cfg.runtime.cache_dir}/teachers/{teacher.key}.pt", weights_only=False)["history"]
    print(
        json.dumps(
            {
                "device": str(device),
                "threads": args.threads,
                "train_images": args.max_samples,
                "epochs": args.epochs,
                "sd_rate": args.sd_rate,
                "seconds": round(seconds, 1),
                "test_acc": teacher.test_acc,
                "history": history,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
