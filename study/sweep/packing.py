"""Packing several trials per GPU: fractional `resources.*` chosen from a trial's measured memory.

A study-sized trial (12 blocks, width 192) uses a few percent of an H200's memory and leaves it
idle between kernels, so one GPU runs several trials at once. Ray schedules fractional GPUs by
bookkeeping only (it does not cap memory), so the fraction has to come from a measurement: the
peak memory of one trial (`torch.cuda.max_memory_allocated` after an in-process trial) plus the
CUDA context and allocator slack of each extra process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from study.config import ConfigError
from study.sweep.space import SweepSpec

CONTEXT_BYTES = 768 << 20  # CUDA context + cuBLAS workspace + caching-allocator slack of one trial process


@dataclass(frozen=True)
class PackPlan:
    per_gpu: int  # trials sharing one GPU
    max_concurrent: int  # trials at once over all GPUs
    resources: dict[str, float]  # a sweep spec's `resources` section

    def apply(self, spec: SweepSpec) -> SweepSpec:
        """`spec` with these resources and concurrency (a validated copy)."""
        tree = spec.model_dump(mode="json")
        tree["resources"] = {**tree["resources"], **self.resources}
        tree["search"] = {**tree["search"], "max_concurrent": self.max_concurrent}
        return SweepSpec.model_validate(tree)


def pack_trials(
    peak_bytes: int | None,
    gpu_bytes: int,
    gpus: int,
    cpus: int,
    *,
    headroom: float = 0.85,
    max_per_gpu: int = 8,
    cpus_per_trial: float = 1.0,
    context_bytes: int = CONTEXT_BYTES,
) -> PackPlan:
    """How many trials fit per GPU and the resources that make Ray place exactly that many.

    A trial needs `peak_bytes + context_bytes`; at most `headroom` of each GPU's `gpu_bytes` is
    used, at most `max_per_gpu` trials share a GPU (beyond that they only queue on its SMs), and
    each trial holds `cpus_per_trial` CPUs of `cpus` (its data loading and Python). The GPU share
    1/n is split between the trial's driver and its one Ray Train worker, which Ray counts
    separately (see search_spaces/gpu_fractional.yaml); the total per trial is what packs."""
    if gpus < 1 or gpu_bytes <= 0:
        raise ConfigError(f"resources: packing needs a GPU (got gpus={gpus}, memory={gpu_bytes} bytes)")
    if peak_bytes is None or peak_bytes < 0:
        raise ConfigError("resources: packing needs the measured peak GPU memory of one trial")
    need = peak_bytes + context_bytes
    by_memory = max(1, int(headroom * gpu_bytes // need))
    by_cpu = max(1, int(cpus // (cpus_per_trial * gpus)))
    per_gpu = max(1, min(max_per_gpu, by_memory, by_cpu))
    half = math.floor(1e4 / (2 * per_gpu)) / 1e4  # Ray keeps 4 decimals of a fractional resource
    half_cpu = cpus_per_trial / 2
    resources = {"driver_cpu": half_cpu, "driver_gpu": half, "workers": 1, "worker_cpu": half_cpu, "worker_gpu": half}
    return PackPlan(per_gpu=per_gpu, max_concurrent=per_gpu * gpus, resources=resources)
