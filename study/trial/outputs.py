"""A trial's last stage: its folder (`write_outputs`): result.json, config.yaml, history.parquet, the similarity
heatmap, each read-out's figures and tables (`Readout.write`) and the Raptor's weights."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

import study.trial.cache as cache
from study.contract import DATA_KEY, EMERGENCE_KEY, RAPTOR_EXAMPLE_KEY, RAPTOR_FILE, RAPTOR_MODULE_KEY
from study.science.raptor import Raptor
from study.science.sampling import class_counts
from study.trial import figures
from study.trial.evaluation import Evaluation
from study.trial.prepare import Prepared, subset_labels

MODEL_EXAMPLE_ROWS = 4
"""Test rows kept as the logged model's input example (`write_outputs` with ``keep_model``)."""


def dataset_record(prepared: Prepared) -> dict:
    """The trial's dataset for MLflow's dataset inputs: name, split sizes, and a digest of the data config and
    every split's labels, per split and overall (equal digests: the same splits, as far as labels can tell)."""
    data = prepared.cfg.data.model_dump(mode="json")
    config = json.dumps(data, sort_keys=True).encode()
    digests = {
        split: hashlib.sha256(config + split.encode() + np.ascontiguousarray(labels).tobytes()).hexdigest()[:16]
        for split, labels in sorted(prepared.labels.items())
    }
    return {
        "name": data["name"],
        "splits": {split: int(len(labels)) for split, labels in prepared.labels.items()},
        "digest": hashlib.sha256("".join(digests.values()).encode()).hexdigest()[:16],
        "digests": digests,
        "source": data,
    }


def write_outputs(
    prepared: Prepared,
    raptor: Raptor,
    evaluation: Evaluation,
    history: list[dict],
    out_dir: Path,
    keep_model: bool = False,
) -> dict:
    """Write Parquet tables, figures, config, the Raptor weights and (last) result.json into `out_dir`.

    `keep_model` (a sweep's ``record.log_model``) also pickles the Raptor module and a few x_0 rows of the test
    split into the weights file, from which the sweep's MLflow writer logs it as a model (`RAPTOR_FILE`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg, teacher = prepared.cfg, prepared.teacher
    result = {
        "config": cfg.to_dict(),
        "teacher": {
            "key": teacher.key,
            "depth": teacher.depth,
            "width": teacher.width,
            "num_registers": teacher.num_registers,
            "test_acc": teacher.test_acc,
            "snapshot_epoch": teacher.snapshot_epoch,  # epochs behind a kept checkpoint (teacher.snapshot), else None
            **({EMERGENCE_KEY: teacher.emergence} if teacher.emergence else {}),
        },
        "similarity": {kind: matrix.tolist() for kind, matrix in prepared.similarity.items()},
        "partition": {**prepared.partition.to_dict(), "method": cfg.partition.method, **prepared.partition_info},
        DATA_KEY: {
            "class_counts": {name: class_counts(labels) for name, labels in subset_labels(prepared).items()},
            **dataset_record(prepared),
        },
        **evaluation.record,
        "metrics": evaluation.metrics,
        "history": history,
        "timings": dict(prepared.timings),
    }
    for stage in sorted({record["stage"] for record in history}):
        result["timings"][f"stage{stage}_s"] = sum(r.get("seconds", 0.0) for r in history if r["stage"] == stage)
    t0 = time.perf_counter()
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    pd.DataFrame(history).to_parquet(out_dir / "history.parquet", index=False)
    figures.save(
        figures.similarity_heatmap(
            prepared.similarity["cosine"],
            prepared.partition.phase_bounds,
            title=f"cosine similarity, k={prepared.partition.k}",
        ),
        out_dir / "similarity.png",
    )
    for readout in evaluation.readouts:
        readout.write(result, out_dir)
    saved = {"state_dict": raptor.state_dict(), "phase_bounds": raptor.phase_bounds, "config": cfg.to_dict()}
    if keep_model:  # the module shares its tensors with the state dict: torch.save stores them once
        rows = np.asarray(prepared.states["test"][:MODEL_EXAMPLE_ROWS, 0], dtype=np.float32)
        saved |= {RAPTOR_MODULE_KEY: raptor, RAPTOR_EXAMPLE_KEY: torch.from_numpy(np.ascontiguousarray(rows))}
    torch.save(saved, out_dir / RAPTOR_FILE)
    result["timings"]["write_s"] = time.perf_counter() - t0
    result["timings"]["written_unix"] = time.time()  # wall clock: a sweep lines trials up against Tune's events
    # written last and atomically: its presence marks the trial folder complete
    cache.atomic_write(out_dir / "result.json", lambda tmp: tmp.write_text(json.dumps(result, indent=2)))
    return result
