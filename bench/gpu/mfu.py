"""What a step costs: analytic model FLOPs, the GPU's peak, MFU, and activation-cache bytes.

FLOPs are analytic model FLOPs (matmuls only, as in MFU conventions; norms, softmax,
GELU and the loss are not counted). Per block and token, forward:
    2 * (4 D^2 [qkv + proj] + 2 r D^2 [MLP fc1 + fc2]) + 4 T D [QK^T and AV]
a training step is 3x forward (backward = 2x forward); the teacher adds the patch
embedding (2 P^2 C D per patch token) and the head (2 D classes per image).
MFU = model FLOPs / step time / the GPU's dense bf16 peak (H100 SXM and H200:
989.4 TFLOP/s), reported for the fp32 baseline against the same bf16 peak.
"""

from __future__ import annotations

import os

from bench.gpu.models import Case
from study.trial.activations import bytes_per_sample

# dense bf16 tensor-core peaks (no sparsity), TFLOP/s, matched against torch.cuda.get_device_name
BF16_PEAKS = (
    ("H200", 989.4),
    ("H100 NVL", 835.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10", 125.0),
    ("L4", 121.0),
)


def bf16_peak(device_name: str) -> float | None:
    """Dense bf16 peak in TFLOP/s of the first BF16_PEAKS entry named in `device_name`, else None."""
    return next((peak for key, peak in BF16_PEAKS if key in device_name), None)


def block_flops_per_token(case: Case, tokens: int | None = None) -> float:
    """Forward FLOPs of one block for one token: 2 * (4 D^2 + 2 r D^2) + 4 T D."""
    d, t = case.width, tokens or case.tokens
    return 2 * (4 * d * d + 2 * case.mlp_ratio * d * d) + 4 * t * d


def teacher_forward_flops(case: Case, head: bool = True) -> float:
    """Forward FLOPs per image: L blocks over T tokens + patch embedding (+ head)."""
    patches = case.tokens - 1 - case.registers
    flops = case.depth * case.tokens * block_flops_per_token(case)
    flops += 2 * case.patch**2 * case.chans * case.width * patches
    return flops + (2 * case.width * case.classes if head else 0)


def raptor_step_flops(case: Case, batch: int, depth: int | None = None) -> float:
    """Training FLOPs of one stage-1/2 step: 3 x (B T L block FLOPs); k does not enter."""
    return 3 * batch * case.tokens * (depth or case.depth) * block_flops_per_token(case)


def add_rates(row: dict, peak_tflops: float | None) -> dict:
    """Add tflops, mfu (None without a known peak) and items_per_s to a row with flops/items and ms."""
    if row.get("flops") and row.get("ms"):
        row["tflops"] = row["flops"] / (row["ms"] * 1e-3) / 1e12
        row["mfu"] = row["tflops"] / peak_tflops if peak_tflops else None
    if row.get("items") and row.get("ms"):
        row["items_per_s"] = row["items"] / (row["ms"] * 1e-3)
    return row


def cache_sizing(cases, free_gpu_bytes: int | None) -> dict:
    """Activation cache bytes per sample (x_0..x_L) per case and dtype, and how many samples stay resident."""
    table = []
    for case in cases:
        for dtype in ("float32", "float16"):
            per = bytes_per_sample(case.depth, case.tokens, case.width, dtype)
            table.append(
                {
                    "case": case.name,
                    "dtype": dtype,
                    "L": case.depth,
                    "T": case.tokens,
                    "D": case.width,
                    "bytes_per_sample": per,
                    "MB_per_sample": per / 1e6,
                    "resident_samples_half_free_gpu": int(free_gpu_bytes * 0.5 // per) if free_gpu_bytes else None,
                    "imagenet_1k_train_TB": per * 1_281_167 / 1e12,
                }
            )
    return {
        "cache_sizing": table,
        "gpu_free_gib_at_start": free_gpu_bytes / 2**30 if free_gpu_bytes else None,
        "host_ram_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
    }
