#!/usr/bin/env bash
# Everything this project measures on a GPU, in one run that fits a short lease (the figures in
# bench/RESULTS.md and the README came from it):
#   bash bench/gpu.sh OUT_DIR [SECONDS]
# 1. the CUDA tests (tests/test_cuda.py: training steps and edits on CUDA agree with the CPU);
# 2. the MGIE-7B-sized benchmark, fp16, batch 1 and 8, ours against the reference stack;
# 3. mgie-mini's whole build (python3 -m train.mini.build --device cuda) for the rest of SECONDS
#    (default 570); its log (steps per second of each stage) and, if it finishes, the bundle land in OUT_DIR.
#    BUILD_ARGS adds build options (the H200 run gave --vae-steps 0: its VAE stage had been timed already).
set -uo pipefail
out=${1:?usage: bash bench/gpu.sh OUT_DIR [SECONDS]}
deadline=$((SECONDS + ${2:-570}))
source "$(dirname "$0")/gpu-info.sh"
gpu_info "$out"
timeout 150 python3 -m pytest -q -s --run-gpu -m gpu tests/test_cuda.py 2>&1 | tee "$out/pytest-gpu.log"
timeout 150 python3 -m mgie_core.bench --preset full --device cuda --dtype fp16 --batch 1,8 --out "$out/bench-full.md" \
    2>&1 | tee "$out/bench.log"
work=$(mktemp -d)
echo "build: $((deadline - SECONDS)) s left"
timeout $((deadline - SECONDS)) python3 -m train.mini.build --device cuda --work "$work" --out "$work/mgie-mini.safetensors" ${BUILD_ARGS:-} \
    2>&1 | tee "$out/build.log"
cp "$work/log.jsonl" "$out/build-log.jsonl"
