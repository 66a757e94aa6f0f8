#!/usr/bin/env bash
# The GPU check of the CUDA Group Normalization kernels, in one call on a
# machine with an NVIDIA GPU, nvcc and PyTorch with CUDA (no TensorFlow):
#
#   bash benchmarks/gpu/run.sh            # from the repository root; writes $OUT
#
# Builds the C-ABI harness with nvcc (sm_90 unless ARCH is set), then runs
# benchmarks/gpu/check.py: correctness against the float64 reference, a
# tensor of more than 2**31 elements, and timings next to PyTorch's GroupNorm
# and a device-to-device copy. Results: $OUT/gpu_group_norm.json (rewritten
# after every stage) and $OUT/gpu_group_norm.log. Expected: about 2 to 4
# minutes on an H200, under 8 in any case (check.py is stopped at 7.5).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"

{
  echo "== $(date -u +%FT%TZ) $(uname -m)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || true
  echo "== nvcc: $(command -v nvcc || echo missing)"
  nvcc --version 2>&1 | tail -n 2 || true
} 2>&1 | tee "$OUT/gpu_group_norm.log"

PYTHONUNBUFFERED=1 timeout 450 "$PYTHON" benchmarks/gpu/check.py --out "$OUT" --arch "${ARCH:-90}" "$@" 2>&1 \
  | tee -a "$OUT/gpu_group_norm.log"
status=${PIPESTATUS[0]}
[ "$status" = 124 ] && echo "check.py ran past 450 s and was stopped; $OUT/gpu_group_norm.json holds the stages that finished" | tee -a "$OUT/gpu_group_norm.log"
echo "== exit status $status" | tee -a "$OUT/gpu_group_norm.log"
exit "$status"
