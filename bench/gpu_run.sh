#!/usr/bin/env bash
# The whole GPU check in ONE device call (prepare first, here: bash bench/gpu_prepare.sh):
#   device run: command "bash bench/gpu_run.sh", carry [".gpu"], timeout_s 540
# Installs the carried wheels into /tmp/site, runs bench/gpu_bench.py within a budget that leaves
# time to copy the results, and leaves $OUT/gpu.json, $OUT/gpu.md and $OUT/log.txt. Steps, most
# valuable first, each in $OUT/gpu.json as soon as it is measured: BLIP-base model-only captions/s,
# the pipeline's ratio to it, node ingest at [node] listeners = 1, 4, 8 under 8 streams (dcmsend
# and storescp if the machine has dcmtk, else pynetdicom senders and the fair Python peer), the lifts.
# On a CPU (to test it): OUT=/tmp/gpu-out bash bench/gpu_run.sh --smoke
# GPU_SUITE=vlm runs bench/gpu_vlm.py instead (BLIP-base, a SmolVLM-size and a ~4B-size model side by side;
# $OUT/gpu_vlm.json and gpu_vlm.md): a device call of its own, command "GPU_SUITE=vlm bash bench/gpu_run.sh".
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
if [ -d .gpu/whl ] && ! python3 -c "import medblip_dicom, highdicom" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/log.txt"; exit 3; }
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
DATA=()
[ -d .gpu/data ] && DATA=(--data .gpu/data)
SUITE=bench/gpu_bench.py
[ "${GPU_SUITE:-}" = vlm ] && SUITE=bench/gpu_vlm.py
python3 "$SUITE" --out "$OUT" --budget-s "${GPU_BUDGET_S:-420}" "${DATA[@]}" "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
