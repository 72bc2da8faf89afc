"""Seconds per dynamics read-out (study/science/dynamics.py) on one device, for one trial's shapes.

    python -m bench.dynamics_time --device cuda [--shape study|dinov2] [--samples 128] [--json FILE]

Builds a randomly initialised timm ViT of the shape (timing does not depend on the weights), rolls
`--samples` random inputs through it for the states [N, L+1, T, D], and times each read-out the trial runs
(`trial_dynamics`: convergence, speed, coherence, stable rank, perturbation recovery, the layer swaps) with the
device synchronised around each. Run several copies at once to see what packing trials on one GPU does to them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer

from study.science.dynamics import (
    angular_speed,
    directional_convergence,
    layer_swap_accuracy,
    patch_coherence,
    perturbation_recovery,
    update_stable_rank,
)
from study.trial.dynamics import rollout_chunk, swap_readout, teacher_layers

SHAPES = {  # the Fashion-MNIST study teacher, and the DINOv2-style ViT-S/14 at 224 px
    "study": {"img_size": 28, "patch_size": 4, "in_chans": 1, "embed_dim": 192, "depth": 12, "num_heads": 3},
    "dinov2": {"img_size": 224, "patch_size": 14, "in_chans": 3, "embed_dim": 384, "depth": 12, "num_heads": 6},
}


def timed(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs after one warm-up, the device synchronised around each."""
    fn()
    seconds = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


@torch.no_grad()
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="study")
    parser.add_argument("--samples", type=int, default=128, help="test samples (dynamics.num_samples)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args(argv)
    if args.samples < 2:
        parser.error(f"--samples: must be >= 2, got {args.samples}")
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = VisionTransformer(num_classes=10, class_token=True, global_pool="token", **SHAPES[args.shape])
    model = model.to(device).eval()
    images = torch.randn(args.samples, model.patch_embed.proj.in_channels, *model.patch_embed.img_size, device=device)
    x = model._pos_embed(model.patch_embed(images))
    trajectory = [x]
    for block in model.blocks:
        trajectory.append(block(trajectory[-1]))
    states = torch.stack(trajectory, dim=1)  # [N, L+1, T, D] on the device, as trial_dynamics holds them
    depth, chunk = len(model.blocks), rollout_chunk(device)

    labels = torch.zeros(args.samples, dtype=torch.long)
    pairs = [(1, 1), *((layer, layer + 1) for layer in range(1, depth))]
    readouts = {
        "directional_convergence": lambda: directional_convergence(states, 0),
        "angular_speed": lambda: angular_speed(states, 0),
        "patch_coherence": lambda: patch_coherence(states, 0),
        "update_stable_rank": lambda: update_stable_rank(states),
        "perturbation_recovery": lambda: perturbation_recovery(
            teacher_layers(model), states, depth // 2, 0.05, 0, chunk=chunk, device=device
        ),
        "layer_swap_accuracy": lambda: layer_swap_accuracy(
            list(model.blocks),
            states[:, 0],
            swap_readout(model),
            labels,
            pairs,
            chunk=chunk,
            device=device,
        ),
    }
    result = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "shape": args.shape,
        "tokens": states.shape[2],
        "samples": args.samples,
        "chunk": chunk,
        "seconds": {name: timed(fn, device, args.repeats) for name, fn in readouts.items()},
    }
    result["seconds"]["total"] = sum(result["seconds"].values())
    for name, seconds in result["seconds"].items():
        print(f"{name:<26}{seconds:9.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
