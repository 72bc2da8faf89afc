#!/usr/bin/env bash
# The GPU study, in chunks that each fit one device command (< 10 minutes), through the ordinary CLI.
# On the GPU machine, in the repo root (with .whl/site.tar.xz and .data/fashion-mnist carried, see
# bench/device_wheels.sh and bench/pack_fashion.sh; for `pretrained` also .teacher/, see
# results/pretrained_vit_s14/README.md):
#   bash bench/gpu_study.sh sd_even|sd_odd|pretrained|ablation [SECONDS [--set KEY=VALUE ...]]
# (extra `--set`s after SECONDS go to the sweep as well: a tiny CPU rehearsal of the exact chunk, e.g.
#  bash bench/gpu_study.sh ablation 600 --set data.max_samples=40 --set distill.stage1.epochs=1 ...)
# (Study 1 = sd_even + sd_odd: two self-contained sweeps, 20 + 15 teachers; the report merges them.)
# Each chunk is a sweep of its own teachers into the same store (runs_gpu/, kept while the machine is);
# a chunk cut off by SECONDS is continued by running it again (`resume`). What comes back under $OUT:
# the MLflow store, every trial's result.json, the sweep's console log and GPU utilisation samples.
set -uo pipefail
cd "$(dirname "$0")/.."
source bench/device_env.sh
chunk=$1; budget=${2:-520}
out=${OUT:-/tmp/gpu_study_out}; mkdir -p "$out"
runs=${RUNS:-$PWD/runs_gpu}
sampler=
if command -v nvidia-smi >/dev/null; then  # GPU utilisation samples (absent on a CPU rehearsal)
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 1 > "$out/$chunk.gpu.csv" &
  sampler=$!
fi
case $chunk in
  sd_even) spec=search_spaces/fashion_sd_study.yaml; sets=(--set name=fashion_sd_even --set "space.teacher.sd_rate={choice: [0.0, 0.2, 0.4, 0.6]}") ;;
  sd_odd) spec=search_spaces/fashion_sd_study.yaml; sets=(--set name=fashion_sd_odd --set "space.teacher.sd_rate={choice: [0.1, 0.3, 0.5]}") ;;
  pretrained) spec=search_spaces/pretrained_vit_s14.yaml
    sets=(--set teacher.source=checkpoint --set teacher.preset=null --set teacher.timm_name=vit_small_patch14_dinov2
          --set teacher.checkpoint="$PWD/.teacher/vit_s14_focus_112_fp16.pt" --set data.image_size=112) ;;
  ablation) spec=search_spaces/pretrained_ablation.yaml
    sets=(--set teacher.source=checkpoint --set teacher.preset=null --set teacher.timm_name=vit_small_patch14_dinov2
          --set teacher.checkpoint="$PWD/.teacher/vit_s14_focus_112_fp16.pt" --set data.image_size=112) ;;
  *) echo "unknown chunk $chunk"; exit 2 ;;
esac
sets+=(--set data.path="$PWD/.data/fashion-mnist")  # the carried pack (bench/pack_fashion.sh), not the Debian folder
sets+=("${@:3}")
name=$(python3 -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['name'])" "$spec")
for s in "${sets[@]}"; do case $s in name=*) name=${s#name=} ;; esac; done
start=$(date +%s)
if [ -d "$runs/ray/$name" ]; then verb=resume; else verb=sweep; fi
timeout --signal=INT "$budget" python3 -m study $verb "$spec" --out "$runs" "${sets[@]}" 2>&1 | tee "$out/$chunk.log" | tail -40
echo "chunk $chunk: $verb exit ${PIPESTATUS[0]}, $(( $(date +%s) - start )) s"
[ -n "$sampler" ] && kill "$sampler" 2>/dev/null
# what comes back: the store, every result.json and the sweeps' saved specs (weights and figures stay behind: the
# 64 MiB cap); locally, copy each result.json to its run's artifact folder for `raptor-study report`
tar -czf "$out/$chunk.store.tgz" -C "$runs" mlflow.db $(cd "$runs" && find trials -name result.json) \
  $(cd "$runs" && find mlartifacts -name sweep_spec.json 2>/dev/null) 2>/dev/null
echo "repo root on the device: $PWD"; ls -la "$out"
