"""The bench's outputs: gpu_bench.json (every row and extra) and gpu_bench.md (the same as tables)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.gpu.models import BASELINE, FAST

JSON_NAME, MARKDOWN_NAME = "gpu_bench.json", "gpu_bench.md"


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def pct(x: float | None, spec: str) -> str:
    return fmt(None if x is None else 100 * x, spec)


def fmt_row(r: dict) -> str:
    """One measurement as a console line."""
    return (
        f"{r['case']:<15} {r['workload']:<18} {r['variant']:<22} B={r.get('batch', '-'):<4} "
        f"{fmt(r.get('ms'), '9.3f')} ms {fmt(r.get('items_per_s'), '10.0f')} img/s "
        f"{fmt(r.get('tflops'), '7.1f')} TF/s MFU {pct(r.get('mfu'), '5.1f')}% "
        f"mem {fmt(r.get('peak_gib'), '6.2f')} GiB sync-free {r.get('sync_free', '-')}"
    )


def speedups(rows: list[dict]) -> list[dict]:
    """Fast-path rows against the baseline row of the same case, workload, depth and batch."""
    out = []
    for fast in rows:
        if fast["variant"] != FAST.name:
            continue
        for base in rows:
            if (
                base["variant"] == BASELINE.name
                and base["case"] == fast["case"]
                and base["workload"] == fast["workload"]
                and base.get("depth") == fast.get("depth")
                and base.get("batch") == fast.get("batch")
            ):
                out.append(
                    {
                        "case": fast["case"],
                        "workload": fast["workload"],
                        "fast_ms": fast["ms"],
                        "baseline_ms": base["ms"],
                        "speedup": base["ms"] / fast["ms"],
                    }
                )
    return out


def _table(header: list[str]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def markdown(doc: dict) -> str:
    """The whole document ({"info", "rows", **extras}) as Markdown."""
    info = doc["info"]
    matmul = doc.get("bf16_matmul_8192_tflops")
    lines = [
        f"# gpu_bench: {info['device']}",
        "",
        f"torch {info['torch']}, timm {info['timm']}, CUDA {info['cuda']}, started {info['started']}; "
        f"MFU against dense bf16 peak {info['bf16_peak_tflops']} TFLOP/s"
        + (f"; measured bf16 8192^3 matmul {matmul:.0f} TFLOP/s" if matmul else ""),
        "",
    ]
    lines += _table(
        [
            "case",
            "workload",
            "variant",
            "batch",
            "L",
            "k",
            "step ms (median)",
            "images/s",
            "model TFLOP/step",
            "TFLOP/s",
            "MFU",
            "peak GiB",
            "no host sync",
        ]
    )
    for r in doc["rows"]:
        lines.append(
            f"| {r['case']} | {r['workload']} | {r['variant']} | {r.get('batch', '')} | {r.get('depth', '')} "
            f"| {r.get('k', '')} | {fmt(r.get('ms'), '.3f')} | {fmt(r.get('items_per_s'), ',.0f')} "
            f"| {fmt(r.get('flops', 0) / 1e12, '.3f')} | {fmt(r.get('tflops'), '.1f')} "
            f"| {pct(r.get('mfu'), '.1f')}% "
            f"| {fmt(r.get('peak_gib'), '.2f')} | {r.get('sync_free', '-')} |"
        )
    if doc.get("speedups"):
        lines += ["", "## Fast path over the fp32 eager baseline (same process, same shapes)", ""]
        lines += _table(["case", "workload", "fast ms", "baseline ms", "speed-up"])
        for s in doc["speedups"]:
            lines.append(
                f"| {s['case']} | {s['workload']} | {s['fast_ms']:.3f} | {s['baseline_ms']:.3f} | {s['speedup']:.2f}x |"
            )
    scaling = [r for r in doc["rows"] if r["workload"] in ("stage-2 vs L", "stage-2 vs k")]
    if scaling:
        lines += ["", "## Stage-2 step cost against depth L (k = 2) and against k (L = 12), fast path", ""]
        lines += _table(["sweep", "L", "k", "step ms", "ms per layer", "MFU"])
        for r in scaling:
            lines.append(
                f"| {r['workload'][-1]} | {r['depth']} | {r['k']} | {r['ms']:.3f} "
                f"| {r['ms'] / r['depth']:.3f} | {pct(r.get('mfu'), '.1f')}% |"
            )
    if doc.get("graph_check"):
        lines += ["", "## CUDA-graph replay vs eager (same init, batches and warmup-cosine LR; fp32)", ""]
        for g in doc["graph_check"]:
            lines.append(
                f"- {g['case']}, {g['steps']} stage-1 steps, captured={g['captured']}: max loss rel. diff "
                f"{g['max_loss_rel_diff']:.2e}, max weight rel. diff {g['max_param_rel_diff']:.2e}"
            )
    if doc.get("profile_stage2"):
        prof = doc["profile_stage2"]
        lines += ["", f"## Kernel time of one ViT-S stage-2 fast step: {prof['kernel_ms_per_step']:.1f} ms", ""]
        lines += [f"- {k}: {v:.2f} ms" for k, v in sorted(prof["by_category_ms"].items(), key=lambda kv: -kv[1])]
    if doc.get("cache_sizing"):
        lines += ["", "## Activation cache sizing: x_0..x_L per sample", ""]
        lines += _table(
            [
                "case",
                "dtype",
                "L+1 x T x D",
                "MB / sample",
                "samples resident in half the free GPU memory",
                "ImageNet-1k train (TB)",
            ]
        )
        for s in doc["cache_sizing"]:
            lines.append(
                f"| {s['case']} | {s['dtype']} | {s['L'] + 1} x {s['T']} x {s['D']} "
                f"| {s['MB_per_sample']:.3f} "
                f"| {fmt(s['resident_samples_half_free_gpu'], ',')} | {s['imagenet_1k_train_TB']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def write(out: Path, doc: dict) -> None:
    """Write gpu_bench.json and gpu_bench.md to `out` (created if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / JSON_NAME).write_text(json.dumps(doc, indent=1, default=float))
    (out / MARKDOWN_NAME).write_text(markdown(doc))
