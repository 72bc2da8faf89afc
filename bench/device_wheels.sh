#!/usr/bin/env bash
# Packages the GPU machine's image lacks (Ray, Optuna, MLflow and their needs), as a folder of
# stripped wheels small enough to travel with the working tree (64 MiB cap). Run here, in the
# repo root. It writes `.whl/site.tar.xz` (git-ignored; ~34 MB): the wheels unpacked into one
# site folder and xz-compressed (a third smaller than the wheels). On the GPU machine:
#   mkdir -p /tmp/site && tar -xJf .whl/site.tar.xz -C /tmp/site && export PYTHONPATH=/tmp/site:$PWD
# Stripped: Ray's Java jar, RLlib, Serve, LLM, the dashboard's web client, debug symbols; MLflow's web UI.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl; rm -rf "$out"; mkdir -p "$out"
pkgs=(ray==2.60.0 optuna==5.1.0 colorlog alembic sqlalchemy mako mlflow==3.17.2 mlflow-skinny==3.17.2
      mlflow-tracing==3.17.2 cachetools databricks-sdk google-auth pyasn1-modules pyasn1 rsa gitpython gitdb smmap
      opentelemetry-api opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions
      pydantic pydantic-core annotated-types typing-inspection python-dotenv sqlparse jsonschema
      jsonschema-specifications referencing rpds-py importlib-metadata fastapi starlette annotated-doc lazy-importer cryptography cffi pycparser)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$out" "${pkgs[@]}"
python3 - "$out" <<'PY'
import sys, zipfile, pathlib
drop = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/", "mlflow/server/js/")
for whl in pathlib.Path(sys.argv[1]).glob("*.whl"):
    src = zipfile.ZipFile(whl)
    if not any(i.filename.startswith(drop) for i in src.infolist()):
        continue
    tmp = whl.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if not info.filename.startswith(drop):
                dst.writestr(info, src.read(info))
    tmp.replace(whl)
PY
site=$(mktemp -d)
python3 - "$out" "$site" <<'PY'
import os, sys, zipfile, pathlib
for whl in pathlib.Path(sys.argv[1]).glob("*.whl"):  # extract, keeping each file's mode (executables)
    with zipfile.ZipFile(whl) as z:
        for info in z.infolist():
            path = z.extract(info, sys.argv[2])
            mode = info.external_attr >> 16
            if mode and not info.is_dir():
                os.chmod(path, mode & 0o777)
PY
# debug symbols are a quarter of Ray's binaries
find "$site/ray" -type f \( -name "*.so" -o -path "*/core/src/*" \) -exec strip --strip-unneeded {} + 2>/dev/null || true
tar -C "$site" -cf - . | xz -T0 -9 > "$out/site.tar.xz"
rm -rf "$site" "$out"/*.whl
du -sh "$out/site.tar.xz"
