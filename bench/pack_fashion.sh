#!/usr/bin/env bash
# Fashion-MNIST for the GPU machine: the Debian package's IDX files recompressed with xz into
# .data/fashion-mnist/ (git-ignored), a quarter smaller than gzip, so that they travel beside
# the carried site within the 64 MiB cap. bench/device_env.sh turns them back into .gz there.
#   bash bench/pack_fashion.sh [SRC]                 every image (26 MB)
#   TRAIN=36000 TEST=6000 bash bench/pack_fashion.sh  a seeded class-stratified draw of each file (still IDX; what
#                                                     fits beside the site once the tree grew past 17 MB)
set -euo pipefail
cd "$(dirname "$0")/.."
src=${1:-/usr/share/datasets/fashion-mnist}
rm -rf .data/fashion-mnist && mkdir -p .data/fashion-mnist
if [ -n "${TRAIN:-}${TEST:-}" ]; then
  python3 - "$src" "${TRAIN:-0}" "${TEST:-0}" <<'PY'
import gzip, lzma, struct, sys
from pathlib import Path
import numpy as np
from study.science.sampling import stratified_subset

src, caps = Path(sys.argv[1]), {"train": int(sys.argv[2]), "t10k": int(sys.argv[3])}
for prefix, cap in caps.items():
    images = gzip.decompress((src / f"{prefix}-images-idx3-ubyte.gz").read_bytes())
    labels = gzip.decompress((src / f"{prefix}-labels-idx1-ubyte.gz").read_bytes())
    n, rows, cols = struct.unpack(">III", images[4:16])
    y = np.frombuffer(labels, np.uint8, offset=8)
    x = np.frombuffer(images, np.uint8, offset=16).reshape(n, rows * cols)
    keep = np.sort(stratified_subset(y, cap or None, seed=2026))  # seed fixed: the pack is reproducible
    out = Path(".data/fashion-mnist")
    (out / f"{prefix}-images-idx3-ubyte.xz").write_bytes(lzma.compress(
        images[:4] + struct.pack(">III", len(keep), rows, cols) + x[keep].tobytes(), preset=9))
    (out / f"{prefix}-labels-idx1-ubyte.xz").write_bytes(lzma.compress(
        labels[:4] + struct.pack(">I", len(keep)) + y[keep].tobytes(), preset=9))
    print(f"{prefix}: {len(keep)} of {n} images, per class {np.bincount(y[keep]).tolist()}")
PY
else
  for f in "$src"/*-ubyte.gz; do
    zcat "$f" | xz -T0 -9 > ".data/fashion-mnist/$(basename "$f" .gz).xz"
  done
fi
du -sh .data/fashion-mnist
