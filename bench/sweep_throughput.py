"""Sweep throughput: the same N trials in a plain in-process loop and through the sweep, side by side.

    python -m bench.sweep_throughput --device cpu --trials 4            # 2 CPU cores: under 3 minutes
    python -m bench.sweep_throughput --device cuda --trials 16          # one GPU, trials packed on it

Both paths run identical-shaped trials (the same base config, one trial per seed 0..N-1) on
one warm teacher/activation cache (the teacher is trained and its states extracted once, before
either path is timed), on the same machine, in one invocation:
(a) the loop: `run_trial(cfg, out)` one after another in this process (`InProcess` distillation);
(b) the sweep: `study.sweep.driver.run_sweep` on a grid over the seeds (Ray Tune + Ray Train +
MLflow, the way `raptor-study sweep` runs), `--max-concurrent` trials at a time.

Prints a table and writes JSON (`--json`, default OUT/sweep_throughput.json): per-trial wall
time, trials per GPU-hour (per hour on CPU), mean GPU utilisation (NVML, sampled in a thread
during each path; `n/a` on CPU) and the per-trial time split into stages, from each trial's
result.json timings and the sweep's own timings (Ray start, trial actor, Train group start,
data/activation load, compile, epochs, similarity, dynamics, checkpoints, MLflow writes).
The last line is `overhead +X% (sweep A s/trial, loop B s/trial, gpu busy C%)`.

Trial shapes: `--device cpu` the tiny digits trial of the CPU overhead measurements (6 blocks,
width 48); `--device cuda` the Fashion-MNIST teacher study trial (the base of
search_spaces/fashion_sd_study.yaml: 12 blocks, width 192, patch 4, 28 px). `--data` picks the
dataset (`digits` is upscaled to 28 px on cuda); `--set KEY=VALUE` overrides base fields, and
`--resources KEY=VALUE` the sweep's resources (e.g. `train_mode=workers reuse_actors=false` for
the levers-off column). `--teachers N` trains N teachers inside each path, each shared by
trials / N trials, as in the study (default: one teacher trained before either path is timed);
`--mps` runs both paths under CUDA MPS. `--loop-trials M` runs the loop over the first M trials only
(whole teacher groups; per-trial figures compare), so a long sweep and its loop fit one time limit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from study.cli import parse_overrides
from study.configio import deep_merge, unflatten
from study.contract import VAL_R2
from study.sweep.driver import run_sweep
from study.sweep.packing import pack_trials
from study.sweep.space import load_sweep
from study.trial.pipeline import run_trial

CPU_BASE: dict[str, Any] = {
    "data": {"name": "digits"},
    "teacher": {"depth": 6, "width": 48, "heads": 4, "epochs": 15},
    "distill": {"batch_size": 128, "stage1": {"epochs": 3}, "stage2": {"epochs": 3}},
    "runtime": {"device": "cpu", "num_threads": 1, "progress": False},
}
# The Fashion-MNIST teacher study trial: the base of search_spaces/fashion_sd_study.yaml (12 blocks, width 192,
# patch 4 at 28 px, its image caps and epochs), on the GPU; every bench trial shares its one teacher.
STUDY_SPEC = Path(__file__).resolve().parents[1] / "search_spaces" / "fashion_sd_study.yaml"
CUDA_FALLBACK: dict[str, Any] = {
    "data": {"name": "fashion_mnist", "max_samples": 15000, "raptor_samples": 1500},
    "teacher": {
        "depth": 12,
        "width": 192,
        "heads": 3,
        "patch_size": 4,
        "mlp_ratio": 2.0,
        "epochs": 8,
        "warmup_epochs": 1,
        "batch_size": 256,
        "lr": 2.0e-3,
    },
    "distill": {"batch_size": 128, "stage1": {"epochs": 5}, "stage2": {"epochs": 2}},
    "similarity": {"num_samples": 1500},
    "dynamics": {"num_samples": 128},
    "runtime": {"activation_dtype": "float16", "progress": False},
}


def cuda_base() -> dict[str, Any]:
    base = yaml.safe_load(STUDY_SPEC.read_text())["base"] if STUDY_SPEC.is_file() else CUDA_FALLBACK
    return deep_merge(base, {"runtime": {"device": "cuda", "progress": False}})


# ----------------------------------------------------------------------------- GPU utilisation
class GpuSampler:
    """Samples GPU utilisation (% of time a kernel ran, NVML) every `interval_s` in a thread.

    Tries pynvml, then `nvidia-smi`; `mean()` is None when neither is available (or on CPU)."""

    def __init__(self, enabled: bool, interval_s: float = 0.2):
        self.enabled, self.interval_s = enabled, interval_s
        self.samples: list[float] = []
        self.memory_mib: list[float] = []
        self.source = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read = self._reader() if enabled else None

    def _reader(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self.source = "pynvml"

            def read() -> tuple[float, float]:
                util = [pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
                mem = [pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20 for h in handles]
                return sum(util) / len(util), sum(mem)

            return read
        except Exception:  # noqa: BLE001 - no NVML bindings: fall back to the CLI
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"

            def read() -> tuple[float, float]:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                )
                rows = [[float(v) for v in line.split(",")] for line in out.stdout.strip().splitlines()]
                return sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows)

            return read
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                util, mem = self._read()
            except Exception:  # noqa: BLE001 - a failed sample is skipped, not fatal
                continue
            self.samples.append(util)
            self.memory_mib.append(mem)

    def __enter__(self) -> GpuSampler:
        if self._read is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "samples": len(self.samples),
            "util_mean_pct": self.mean(),
            "mem_used_max_mib": max(self.memory_mib) if self.memory_mib else None,
        }


@contextmanager
def mps_daemon(enabled: bool) -> Iterator[str | None]:
    """CUDA MPS (Multi-Process Service) for this process and every process it starts, Ray's included:
    starts `nvidia-cuda-mps-control -d` on pipe and log folders of its own, exported through
    CUDA_MPS_PIPE_DIRECTORY / CUDA_MPS_LOG_DIRECTORY, and quits it at exit. With it, the kernels of
    trials packed on one GPU run concurrently instead of time-sliced. Must run before CUDA starts
    in this process. Yields the folder (None when not enabled). The GPU's settings are untouched."""
    if not enabled:
        yield None
        return
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        raise SystemExit("--mps: nvidia-cuda-mps-control is not on PATH")
    root = Path(tempfile.mkdtemp(prefix="mps_"))
    for name, sub in (("CUDA_MPS_PIPE_DIRECTORY", "pipe"), ("CUDA_MPS_LOG_DIRECTORY", "log")):
        (root / sub).mkdir()
        os.environ[name] = str(root / sub)
    subprocess.run([control, "-d"], check=True, timeout=60)
    try:
        yield str(root)
    finally:  # `quit` waits for every client to exit, this process included: ask, do not wait
        quit_ = subprocess.Popen([control], stdin=subprocess.PIPE, text=True)
        quit_.stdin.write("quit\n")
        quit_.stdin.close()


# ----------------------------------------------------------------------------- stage split
def compile_estimate(history: list[dict], compiled: bool) -> float:
    """Seconds of torch.compile in the epochs: per stage, the first epoch's excess over the median
    of the others (0 when the trial did not compile, or a stage has a single epoch)."""
    if not compiled:
        return 0.0
    total = 0.0
    for stage in {r["stage"] for r in history}:
        seconds = [r["seconds"] for r in history if r["stage"] == stage]
        if len(seconds) > 1:
            total += max(0.0, seconds[0] - statistics.median(seconds[1:]))
    return total


def trial_stages(result: dict, compiled: bool) -> dict[str, float]:
    """One trial's pipeline time by stage (seconds), from its result.json."""
    t = result["timings"]
    history = result.get("history", [])
    epochs = sum(r.get("seconds", 0.0) for r in history)
    compile_s = compile_estimate(history, compiled)
    dynamics = t.get("dynamics_s", 0.0)
    stages = {
        "data/activation load": t.get("teacher_and_states_s", 0.0),
        "similarity + partition": t.get("similarity_s", 0.0),
        "Train group start": t.get("train_start_s", 0.0),
        "Train worker setup (teacher, states)": t.get("worker_setup_s", 0.0),
        "compile (first-epoch excess)": compile_s,
        "epochs (train + val)": epochs - compile_s,
        "checkpoints": t.get("checkpoint_s", 0.0),
        "epoch reports (no checkpoint)": t.get("report_s", 0.0),
        "Train group teardown": t.get("train_end_s", 0.0),
    }
    inside = sum(v for k, v in stages.items() if k not in ("data/activation load", "similarity + partition"))
    stages["distill: other"] = max(0.0, t.get("distill_s", 0.0) - inside)
    stages["evaluate (fidelity, probe)"] = t.get("evaluate_s", 0.0) - dynamics
    stages["dynamics"] = dynamics
    stages["write outputs (figures, tables)"] = t.get("write_s", 0.0)
    return stages


def mean_stages(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    return {k: statistics.fmean(row.get(k, 0.0) for row in rows) for k in keys}


# ----------------------------------------------------------------------------- the two paths
def run_loop(base: dict, space: dict[str, list], out: Path, device: str) -> dict[str, Any]:
    spec = load_sweep(_write_spec(out / "loop_spec.yaml", "loop", base, space, {"max_concurrent": 1}, None))
    walls, stages, results = [], [], []
    points = grid_points(space)
    with GpuSampler(device == "cuda") as gpu:
        t0 = time.perf_counter()
        for point in points:
            cfg = spec.trial_config(point, name="loop-" + "-".join(f"{k}{v}" for k, v in point.items()))
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            result = run_trial(cfg, out / "loop" / cfg.name)
            walls.append(time.perf_counter() - start)
            stages.append(trial_stages(result, _compiled(result)))
            results.append(result)
        wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return {
        "wall_s": wall,
        "per_trial_s": wall / len(points),
        "trial_wall_s": walls,
        "stages": mean_stages(stages),
        "gpu": gpu.summary(),
        "peak_gpu_mem_bytes": peak,
        VAL_R2: [r["metrics"][VAL_R2] for r in results],
    }


def run_sweep_path(
    base: dict, space: dict[str, list], out: Path, device: str, resources: dict, max_concurrent: int
) -> dict[str, Any]:
    spec_path = _write_spec(
        out / "sweep_spec.yaml", "throughput", base, space, {"max_concurrent": max_concurrent}, resources
    )
    root = out / "sweep"
    with GpuSampler(device == "cuda") as gpu:
        t0, cpu0 = time.perf_counter(), time.process_time()
        table = run_sweep(spec_path, root)
        wall, driver_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = len(table)
    clock = json.loads((root / "ray" / "throughput" / "sweep_timings.json").read_text())
    events_path = root / "ray" / "throughput" / "events.json"
    events = json.loads(events_path.read_text())["trials"] if events_path.is_file() else {}
    rows, lifetimes, mlflow_s, val_r2 = [], [], [], []
    for trial_dir in sorted((root / "trials" / "throughput").iterdir()):
        result = json.loads((trial_dir / "result.json").read_text())
        val_r2.append(result["metrics"][VAL_R2])
        row = trial_stages(result, _compiled(result))
        event = events.get(trial_dir.name, {})
        t = result["timings"]
        if "start_unix" in event:
            row = {"trial actor (Tune start -> pipeline)": t["started_unix"] - event["start_unix"], **row}
            lifetimes.append(event.get("end_unix", t["written_unix"]) - event["start_unix"])
        if "end_unix" in event:
            row["trial end (report -> Tune done)"] = event["end_unix"] - t["written_unix"]
        mlflow_s.append(event.get("mlflow_s", 0.0))
        rows.append(row)
    per_trial = mean_stages(rows)
    concurrency = max(1, min(max_concurrent, n))
    sweep_level = {
        "Ray start (per trial)": clock["ray_init_s"] / n,
        "sweep setup: spec, MLflow experiment (per trial)": clock["setup_s"] / n,
        "Tune between trials (per trial)": max(0.0, clock["fit_s"] - sum(lifetimes) / concurrency) / n,
        "sweep finish: table, MLflow parent (per trial)": clock["finish_s"] / n,
    }
    return {
        "wall_s": wall,
        "per_trial_s": wall / n,
        "trials": n,
        "statuses": table["status"].value_counts().to_dict(),
        "max_concurrent": max_concurrent,
        "resources": resources,
        "sweep_timings": clock,
        "driver_cpu_s": driver_cpu,  # CPU seconds of the sweep's driver process (all its threads), not its children
        "stages": {**sweep_level, **per_trial},
        "mlflow_blocking_per_trial_s": statistics.fmean(mlflow_s or [0.0]),
        "gpu": gpu.summary(),
        VAL_R2: val_r2,
    }


def _compiled(result: dict) -> bool:
    runtime = result["config"]["runtime"]
    return runtime["compile"] is True or (runtime["compile"] == "auto" and runtime["device"] == "cuda")


def grid_points(space: dict[str, list]) -> list[dict[str, Any]]:
    """Every combination of the space's values (the trials of a grid sweep over it), as dotted-key params."""
    keys = list(space)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*space.values())]


def trial_space(trials: int, teachers: int, teacher_seed0: int) -> dict[str, list]:
    """The bench's trials as a grid: `trials` Raptor seeds on the warm teacher (`teachers` = 0), or
    `teachers` teacher seeds from `teacher_seed0` x trials / teachers Raptor seeds, teachers trained inside."""
    if not teachers:
        return {"seed": list(range(trials))}
    return {
        "teacher.seed": list(range(teacher_seed0, teacher_seed0 + teachers)),
        "seed": list(range(trials // teachers)),
    }


def _write_spec(
    path: Path, name: str, base: dict, space: dict[str, list], search: dict, resources: dict | None
) -> Path:
    spec = {
        "name": name,
        "base": base,
        "space": {key: {"choice": values} for key, values in space.items()},
        "search": {"sampler": "grid", "metric": VAL_R2, "mode": "max", "num_samples": 1, **search},
        "scheduler": {"type": "none"},
    }
    if resources:
        spec["resources"] = resources
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def warm_cache(base: dict, out: Path) -> float:
    """Train the base's teacher and extract its states once (not timed against either path): the shared
    teacher of the default trials; with --teachers, it warms the data and the compile cache only."""
    warm = deep_merge(
        base, {"distill": {"stage1": {"epochs": 0}, "stage2": {"epochs": 0}}, "dynamics": {"enabled": False}}
    )
    spec = load_sweep(_write_spec(out / "warm_spec.yaml", "warm", warm, {"seed": [0]}, {"max_concurrent": 1}, None))
    t0 = time.perf_counter()
    run_trial(spec.trial_config({"seed": 0}, name="warmup"), out / "warmup")
    return time.perf_counter() - t0


# ----------------------------------------------------------------------------- report
def machine() -> dict[str, Any]:
    info = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import ray

        info["ray"] = ray.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    try:
        info["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def render(report: dict) -> str:
    loop, sweep = report["loop"], report["sweep"]
    keys = list(dict.fromkeys([*sweep["stages"], *loop["stages"]]))
    width = max(len(k) for k in keys) + 2
    lines = [f"{'stage (mean s per trial)':<{width}}{'loop':>10}{'sweep':>10}"]
    for key in keys:
        a, b = loop["stages"].get(key), sweep["stages"].get(key)
        lines.append(f"{key:<{width}}{'' if a is None else f'{a:10.2f}'}{'' if b is None else f'{b:10.2f}':>10}")
    mlflow_s = sweep["mlflow_blocking_per_trial_s"]
    lines.append(f"{'of which MLflow writes blocking Tune':<{width}}{'':>10}{mlflow_s:10.2f}")
    lines.append(f"{'wall per trial':<{width}}{loop['per_trial_s']:10.2f}{sweep['per_trial_s']:10.2f}")
    per_hour = report["trials_per_gpu_hour"]
    unit = "GPU-hour" if report["device"] == "cuda" else "hour"
    lines.append(f"{f'trials per {unit}':<{width}}{per_hour['loop']:10.1f}{per_hour['sweep']:10.1f}")
    lines.append(
        f"{'GPU utilisation mean %':<{width}}{_pct(loop['gpu']['util_mean_pct']):>10}"
        f"{_pct(sweep['gpu']['util_mean_pct']):>10}"
    )
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--trials", type=int, default=4, help="trials per path (one per seed)")
    parser.add_argument("--data", help="data.name (default: digits on cpu, fashion_mnist on cuda)")
    parser.add_argument(
        "--max-concurrent", type=int, help="sweep trials at once (default: 1 on cpu, as many as fit on the GPU on cuda)"
    )
    parser.add_argument(
        "--teachers",
        type=int,
        default=0,
        help="train this many teachers inside each path, each shared by trials / teachers trials (as the study's "
        "trials share theirs); the loop and the sweep get different teacher seeds, so neither finds the other's "
        "(default 0: every trial shares one teacher trained before either path is timed)",
    )
    parser.add_argument(
        "--loop-trials",
        type=int,
        help="trials of the loop (default: --trials): the first whole teacher groups of the same grid, for a sweep "
        "long enough to reach its steady state while the loop, whose trials are alike, fits the same time limit",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a base trial field")
    parser.add_argument(
        "--resources",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the sweep's resources.* (e.g. worker_gpu=0.25)",
    )
    parser.add_argument(
        "--loop-threads",
        type=int,
        help="runtime.num_threads of the loop's trials only (default: the trial's own), e.g. 2 for a loop that uses "
        "every core of a 2-core box while the sweep packs 1-thread trials",
    )
    parser.add_argument(
        "--mps",
        action="store_true",
        help="run both paths under CUDA MPS (started and stopped by the bench), so packed trials' kernels overlap",
    )
    parser.add_argument("--out", help="work folder (default: a fresh temp folder)")
    parser.add_argument("--json", help="where the JSON goes (default: OUT/sweep_throughput.json)")
    parser.add_argument("--label", default="", help="a name for this measurement, kept in the JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.mps and args.device != "cuda":
        parser.error("--mps: only with --device cuda")
    with mps_daemon(args.mps):
        return _bench(parser, args)


def _bench(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.trials < 1:
        parser.error("--trials: must be >= 1")
    if args.teachers < 0 or (args.teachers and args.trials % args.teachers):
        parser.error(f"--teachers: must be >= 0 and divide --trials ({args.trials}), got {args.teachers}")
    loop_trials = args.loop_trials or args.trials
    per_teacher = args.trials // args.teachers if args.teachers else 1
    if not 1 <= loop_trials <= args.trials or loop_trials % per_teacher:
        parser.error(
            f"--loop-trials: must be in [1, {args.trials}] and a multiple of the trials per teacher ({per_teacher}), "
            f"got {loop_trials}"
        )
    if args.loop_threads is not None and args.loop_threads < 1:
        parser.error("--loop-threads: must be >= 1")

    out = Path(args.out or tempfile.mkdtemp(prefix="sweep_throughput_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    base = json.loads(json.dumps(CPU_BASE if args.device == "cpu" else cuda_base()))
    if args.data:
        base["data"]["name"] = args.data
    if args.device == "cuda" and base["data"]["name"] == "digits":
        base["data"]["image_size"] = 28  # 8x8 digits upscaled to the study trial's 28 px
        base["data"].pop("max_samples", None)
    base = deep_merge(base, unflatten(parse_overrides(args.set)))
    base = deep_merge(base, {"runtime": {"cache_dir": str(out / "cache")}})
    # teacher seeds 1000+ (loop) and 2000+ (sweep): new teachers in each path, none the warm-up's
    loop_space = trial_space(loop_trials, loop_trials // per_teacher if args.teachers else 0, 1000)
    sweep_space = trial_space(args.trials, args.teachers, 2000)

    started = machine()
    print(f"warm cache (teacher + states, not timed) in {out} ...", flush=True)
    warm_s = warm_cache(base, out)
    print(f"loop: {loop_trials} trials in this process ...", flush=True)
    loop_base = deep_merge(base, {"runtime": {"num_threads": args.loop_threads}}) if args.loop_threads else base
    loop = run_loop(loop_base, loop_space, out, args.device)
    json_path = Path(args.json) if args.json else out / "sweep_throughput.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    # the loop's half is written at once, so a run cut short still keeps it
    partial = {
        "label": args.label,
        "device": args.device,
        "trials": args.trials,
        "loop_trials": loop_trials,
        "teachers": args.teachers,
        "mps": args.mps,
        "base": base,
        "loop_threads": args.loop_threads,
    }
    json_path.write_text(json.dumps({**partial, "warm_cache_s": warm_s, "machine": started, "loop": loop}, indent=1))
    print(f"loop: {loop['per_trial_s']:.1f} s/trial, gpu busy {_pct(loop['gpu']['util_mean_pct'])}%", flush=True)
    if args.device == "cuda":
        plan = pack_trials(
            loop["peak_gpu_mem_bytes"],
            torch.cuda.get_device_properties(0).total_memory,
            gpus=1,
            cpus=os.cpu_count() or 1,
        )
        resources, max_concurrent = plan.resources, plan.max_concurrent
    else:
        resources, max_concurrent = {"driver_cpu": 0.5, "workers": 1, "worker_cpu": 0.5}, 1
    resources = {**resources, **parse_overrides(args.resources)}
    max_concurrent = args.max_concurrent or max_concurrent
    print(f"sweep: {args.trials} trials, {max_concurrent} at a time, resources {resources} ...", flush=True)
    sweep = run_sweep_path(base, sweep_space, out, args.device, resources, max_concurrent)

    gpus = torch.cuda.device_count() if args.device == "cuda" else 1
    report = {
        **partial,
        "warm_cache_s": warm_s,
        "machine": started,
        "load_avg_1m_end": os.getloadavg()[0],
        "loop": loop,
        "sweep": sweep,
        "trials_per_gpu_hour": {"loop": 3600 / loop["per_trial_s"] / gpus, "sweep": 3600 / sweep["per_trial_s"] / gpus},
        "overhead_pct": 100 * (sweep["per_trial_s"] - loop["per_trial_s"]) / loop["per_trial_s"],
    }
    json_path.write_text(json.dumps(report, indent=1))
    print(render(report))
    print(f"JSON: {json_path}")
    if not args.keep and not args.out:
        shutil.rmtree(out, ignore_errors=True)
    busy = sweep["gpu"]["util_mean_pct"]
    print(
        f"overhead {report['overhead_pct']:+.0f}% (sweep {sweep['per_trial_s']:.1f} s/trial, "
        f"loop {loop['per_trial_s']:.1f} s/trial, gpu busy {'n/a' if busy is None else f'{busy:.0f}%'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
