"""Throughput of the study's hot loops on GPU (or CPU).

    python -m bench.gpu                              # GPU machine, full run (~6-8 min)
    python -m bench.gpu --device cpu --quick         # smoke test, tiny sizes

Measures, for a ViT-S/16-sized teacher at 224 px (12 blocks, width 384, 6 heads,
MLP 4x, 197 tokens) and for the digits default (8 blocks, width 64, 17 tokens):
teacher training, activation extraction, stage-1 and stage-2 Raptor steps, each in
the product's fast path and in the reference baseline, side by side in one process:

  fast      RuntimeConfig's GPU defaults: bf16 autocast, fused SDPA attention (timm
            fused_attn), fused AdamW, each training step replayed as one CUDA graph
            (study.runtime.CudaGraphStep), and torch.compile where it pays: regional
            compile of one Raptor step + its loss (study.science.distill.compiled_layer_loss)
            and of the teacher's blocks, when a step is >= 1 TFLOP (ViT-S yes, digits no)
  baseline  fp32 eager (TF32 off, PyTorch's default), explicit softmax(QK^T)V attention
            (timm fused_attn=False, nn.MultiheadAttention-style), for-each AdamW, no graphs

plus one-knob-off ablations of the fast path on the ViT-S stage-2 step, the stage-2 step
of a DINOv2-B-shaped teacher (width 768, 4 registers, 261 tokens) and, with `--sections vitl`,
of a DINOv2-L-shaped one (24 blocks, width 1024), stage-2 step time against depth L (6, 12, 24)
and against k at L = 12, the activation cache's bytes per sample, the resident-vs-streaming
batch path, and a check that CUDA-graph replay trains exactly like eager.
`--sections profile,explore` adds a kernel-time breakdown and non-default knobs (SDPA
backends, inductor autotuning, batch 512).

Raptor steps run on synthetic teacher states of the right shape (random weights: speed
does not depend on them) through the product code: study.science.raptor.Raptor,
study.science.distill.{Stage1Objective, Stage2Objective, StateBatches, make_train_step},
study.runtime.{adamw, autocast, set_fused_attn, CudaGraphStep}. Teacher training is the step
of study.trial.teacher.train_scratch on a batch already on the device.

Modules, in reading order:
  models.py       the shapes (Case), the speed-knob variants (Variant) and the teacher builder
  mfu.py          analytic FLOPs, GPU peaks, MFU and activation-cache bytes
  harness.py      Bench: timing (CUDA events, median), the host-sync check, recording
  steps.py        the timed hot loops: teacher train, extraction, extraction to cache, Raptor steps
  diagnostics.py  CUDA-graph vs eager check, kernel profile, non-default knobs, matmul ceiling
  report.py       the JSON / Markdown writers
  __main__.py     the command line and the order of the measurements

Writes gpu_bench.json and gpu_bench.md to --out (default $OUT, else results/gpu),
updated after every measurement so a run cut short still leaves its numbers.
Imports torch, timm, numpy and study modules only (no ray / optuna / mlflow).
"""
