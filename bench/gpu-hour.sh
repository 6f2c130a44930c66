#!/usr/bin/env bash
# The hour's build from scratch (docs/mgie-mini.md) timed on a GPU, after the CUDA tests that compare its
# stages and pictures with the CPU's (tests/test_cuda.py), in one run that fits a short lease:
#   bash bench/gpu-hour.sh OUT_DIR TOWER [SECONDS]
# It needs this project's requirements there (the 2026-12-04 H200 lacked diffusers: its wheel was carried).
# TOWER is the perception tower (python -m train.mini.perception --position --steps 2000 [--device cuda]).
# The build's log (steps per second of each stage) and, if it finishes inside SECONDS (default 585), the
# bundle land in OUT_DIR. Every random draw stays on the CPU: the CPU's build of the same command trains
# on the same batches and noise.
set -uo pipefail
out=${1:?usage: bash bench/gpu-hour.sh OUT_DIR TOWER [SECONDS]}
tower=${2:?usage: bash bench/gpu-hour.sh OUT_DIR TOWER [SECONDS]}
deadline=$((SECONDS + ${3:-585}))
source "$(dirname "$0")/gpu-info.sh"
gpu_info "$out"
timeout 100 python3 -m pytest -q -s -rxX --run-gpu -m gpu tests/test_cuda.py -k "each_diffusion_stage or paints or perception" 2>&1 \
    | tee "$out/pytest-gpu.log"
work=$(mktemp -d)
echo "build: $((deadline - SECONDS)) s left"
timeout $((deadline - SECONDS)) python3 -m train.mini.build --device cuda --vision-tower "$tower" \
    --vae-steps 2000 --vae-lr 1e-3 --vae-object-weight 5 --ip2p-steps 1500 --adapt-steps 1000 --steps 1500 \
    --unet-lr 1e-3 --work "$work" --out "$work/mgie-mini-hour-gpu.safetensors" 2>&1 | tee "$out/build.log"
cp "$work/log.jsonl" "$out/build-log.jsonl"
cp "$work/mgie-mini-hour-gpu.safetensors" "$out/" 2>/dev/null || echo "the build did not finish in time"
