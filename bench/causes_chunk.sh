#!/usr/bin/env bash
# One chunk of the causes study (docs/science.md, "Beyond the paper: what causes block recurrence"): one level of one
# factor at one SD rate = 6 teachers x k {2, 3} = 12 trials, a sweep of its own (causes_<factor>_<level>_sd<SD>) in
# the store runs_gpu/. On the GPU machine (nvidia-h200-x2: its 128 GiB disk holds one chunk's states), in the repo
# root, with .whl/site.tar.xz and .data/fashion-mnist carried (bench/device_wheels.sh, bench/pack_fashion.sh):
#   bash bench/causes_chunk.sh FACTOR LEVEL SD [SECONDS]   FACTOR: search_spaces/causes_<FACTOR>.yaml; LEVEL: one of
#                                                          its levels as written there; SD: 0.0 or 0.4
#   bash bench/causes_chunk.sh base SD [SECONDS]           the base teacher, shared by every factor (run it once)
# A chunk cut off by SECONDS (default 540) is continued by running the same command again (`resume`); once it is
# done, its activation cache is deleted (~63 GB for 6 12-block teachers; the teachers stay cached). What comes back
# under $OUT: the MLflow store, every result.json, the sweep's log. DRY_RUN=1 prints the sweep command only.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "$1" = base ]; then
  factor=layerscale level=0.1 sd=$2 budget=${3:-540} name=causes_base_sd$2
else
  factor=$1 level=$2 sd=$3 budget=${4:-540} name=causes_$1_$2_sd$3
fi
spec=search_spaces/causes_$factor.yaml
[ -f "$spec" ] || { echo "no spec $spec"; exit 2; }
field=$(sed -n 's/^  \(teacher\.[a-z_]*\): {choice.*/\1/p' "$spec" | grep -v -x -e teacher.sd_rate -e teacher.seed)
runs=$PWD/runs_gpu
if [ -d "$runs/ray/$name" ]; then verb=resume; else verb=sweep; fi
cmd=(python3 -m study "$verb" "$spec" --out "$runs" --set "name=$name" --set "space.$field={choice: [$level]}"
     --set "space.teacher.sd_rate={choice: [$sd]}" --set "data.path=$PWD/.data/fashion-mnist")
if [ -n "${DRY_RUN:-}" ]; then printf '%s\n' "${cmd[@]}"; exit 0; fi
source bench/device_env.sh
out=${OUT:-/tmp/causes_out}; mkdir -p "$out"
start=$(date +%s)
timeout --signal=INT "$budget" "${cmd[@]}" 2>&1 | tee "$out/$name.log" | tail -40
status=${PIPESTATUS[0]}
echo "chunk $name: $verb exit $status, $(( $(date +%s) - start )) s"
if [ "$status" = 0 ]; then rm -rf "$runs/cache/activations"; fi
tar -czf "$out/$name.store.tgz" -C "$runs" mlflow.db $(cd "$runs" && find trials -name result.json) \
  $(cd "$runs" && find mlartifacts -name sweep_spec.json 2>/dev/null) 2>/dev/null
ls -la "$out"
