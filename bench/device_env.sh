# Source on the GPU machine, in the repo root:  source bench/device_env.sh
# Unpacks the carried site (bench/device_wheels.sh -> .whl/site.tar.xz) into .site/ once (an
# ignored folder, so it stays while the machine does), and the carried Fashion-MNIST
# (.data/fashion-mnist/*.xz, see bench/pack_fashion.sh) into IDX gzip files; sets the paths.
if [ -f .whl/site.tar.xz ] && [ ! -d .site/ray ]; then
  mkdir -p .site && tar -xJf .whl/site.tar.xz -C .site || return 1
fi
if ls .data/fashion-mnist/*.xz >/dev/null 2>&1; then
  python3 - <<'PY'
import gzip, lzma, pathlib
for xz in pathlib.Path(".data/fashion-mnist").glob("*.xz"):
    gz = xz.with_suffix(".gz")
    if not gz.exists():
        gz.write_bytes(gzip.compress(lzma.decompress(xz.read_bytes()), compresslevel=1))
PY
fi
export PYTHONPATH="$PWD/.site:$PWD" PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export RAY_USAGE_STATS_ENABLED=0
