"""`Bench`: device info, step timing, the host-sync check, and recording rows as they come.

Timing: CUDA events around every step after warm-up, median over steps (host clock on CPU);
peak memory is torch.cuda.max_memory_allocated over the workload. Each fast workload is also
run for a few steps under torch.cuda.set_sync_debug_mode("error") to show its step loop has
no host synchronisation.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
import traceback
from pathlib import Path

import timm
import torch

from bench.gpu.mfu import add_rates, bf16_peak
from bench.gpu.models import Variant
from bench.gpu.report import fmt_row, write
from study.runtime import use_compile


class Bench:
    """One run: where it runs, how long it may take, and the rows and extras measured so far."""

    def __init__(self, device: torch.device, out: Path, warmup: int, iters: int, compile_mode: str, budget_s: float):
        self.device, self.out, self.warmup, self.iters = device, out, warmup, iters
        self.compile_mode, self.budget_s, self.t0 = compile_mode, budget_s, time.time()
        self.cuda = device.type == "cuda"
        name = torch.cuda.get_device_name(device) if self.cuda else platform.processor() or platform.machine()
        self.info = {
            "device": name,
            "device_type": device.type,
            "bf16_peak_tflops": bf16_peak(name) if self.cuda else None,
            "torch": torch.__version__,
            "timm": timm.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self.rows: list[dict] = []
        self.extra: dict = {}

    def compiles(self, v: Variant, flops: float) -> bool:
        """The product's rule (study.runtime.use_compile) unless --compile on/off overrides it."""
        if self.compile_mode == "off":
            return False
        if self.compile_mode == "on":
            return v.compile is not False
        return use_compile(v.runtime(), self.device, flops)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def over_budget(self) -> bool:
        return self.elapsed() > self.budget_s

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_memory(self) -> None:
        gc.collect()  # drop the last workload's graphs and their memory pools
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else None

    def time_steps(self, step, warmup: int | None = None, iters: int | None = None) -> dict:
        """Run `step()` warmup + iters times; per-step times (ms) from CUDA events (host clock on CPU)."""
        warmup = self.warmup if warmup is None else warmup
        iters = self.iters if iters is None else iters
        t = time.time()
        step()  # first call: compilation, autotuning, allocator growth
        self.sync()
        first_s = time.time() - t
        for _ in range(max(0, warmup - 1)):
            step()
        self.sync()
        times = []
        if self.cuda:
            events = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)
            ]
            wall = time.time()
            for start, end in events:
                start.record()
                step()
                end.record()
            self.sync()
            wall = time.time() - wall
            times = [s.elapsed_time(e) for s, e in events]
        else:
            wall = time.time()
            for _ in range(iters):
                s = time.perf_counter()
                step()
                times.append((time.perf_counter() - s) * 1e3)
            wall = time.time() - wall
        return {
            "ms": statistics.median(times),
            "ms_mean": statistics.fmean(times),
            "ms_min": min(times),
            "ms_wall": wall * 1e3 / iters,
            "first_call_s": first_s,
            "iters": iters,
        }

    def sync_free(self, step, n: int = 3) -> str:
        """Run n steps with CUDA sync debug mode 'error': 'yes' if none synchronised with the host."""
        if not self.cuda:
            return "n/a"
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(n):
                step()
            verdict = "yes"
        except RuntimeError as err:
            verdict = "NO: " + str(err).splitlines()[0][:120]
        finally:
            torch.cuda.set_sync_debug_mode(0)
        self.sync()
        return verdict

    def record(self, row: dict) -> None:
        """Add rates (mfu.add_rates) and the time since start, print the row, rewrite the outputs."""
        add_rates(row, self.info["bf16_peak_tflops"])
        row["t"] = round(self.elapsed(), 1)
        self.rows.append(row)
        print(fmt_row(row), flush=True)
        self.save()

    def doc(self) -> dict:
        return {"info": self.info, "rows": self.rows, **self.extra}

    def save(self) -> None:
        write(self.out, self.doc())


def guarded(fn, *args, **kw):
    """fn(*args, **kw), or None after printing the error: one failed measurement must not lose the others."""
    try:
        return fn(*args, **kw)
    except Exception as err:
        print(f"FAILED {fn.__name__}{[getattr(a, 'name', a) for a in args[1:]]}: {err!r}", flush=True)
        traceback.print_exc()
        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode(0)
        return None
