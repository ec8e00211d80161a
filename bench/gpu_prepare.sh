#!/usr/bin/env bash
# Run HERE (no GPU needed) before bench/gpu_run.sh: fills .gpu/ (ignored by git, carried to the device)
# with the wheels the GPU machine lacks (Python 3.12, x86-64) and the mix's larger source files.
#   bash bench/gpu_prepare.sh && du -sh .gpu      # must stay well under the 64 MiB a device call carries
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/data
PY=${PYTHON:-python3}
# Our own package (pure Python) without its dependencies: the GPU image has torch, transformers,
# tokenizers, safetensors, numpy, pillow, tqdm, packaging, typing-extensions and prometheus-client.
had_build=$([ -d build ] && echo yes || true)
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w .gpu/whl . 2>/dev/null || "$PY" -m pip wheel -q --no-deps -w .gpu/whl .
[ -n "$had_build" ] || rm -rf build  # setuptools' scratch folder, made by the line above
# What it lacks: pydicom, highdicom and the decoder plug-ins, pinned to the versions tested here; for
# the node ingest step also pynetdicom and requests (the service imports its STOW-RS sink) with its own.
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
for pkg in pydicom highdicom pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg pylibjpeg-rle pyjpegls \
           pynetdicom requests urllib3 idna certifi charset-normalizer; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_39_x86_64 --platform manylinux_2_35_x86_64 --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .gpu/whl "$pkg==$(ver "$pkg")"
done
# The CR files of the mix come from pydicom-data (56 MB in all): carry only those.
"$PY" - <<'PYEOF'
import shutil
from pydicom.data import get_testdata_file
for name in ("RG3_J2KR.dcm", "RG1_UNCI.dcm", "US1_UNCR.dcm"):
    shutil.copy(get_testdata_file(name), f".gpu/data/{name}")
PYEOF
ls -la .gpu/whl .gpu/data
du -sh .gpu
