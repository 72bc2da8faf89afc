#!/usr/bin/env bash
# Fashion-MNIST for the GPU machine: the Debian package's IDX files recompressed with xz into
# .data/fashion-mnist/ (git-ignored), a quarter smaller than gzip, so that they travel beside
# the carried site within the 64 MiB cap. bench/device_env.sh turns them back into .gz there.
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-/usr/share/datasets/fashion-mnist}
mkdir -p .data/fashion-mnist
for f in "$src"/*-ubyte.gz; do
  name=$(basename "$f" .gz)
  [ -f ".data/fashion-mnist/$name.xz" ] || zcat "$f" | xz -T0 -9 > ".data/fashion-mnist/$name.xz"
done
du -sh .data/fashion-mnist
