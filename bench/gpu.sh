#!/usr/bin/env bash
# Everything this project measures on a GPU, in one run that fits a short lease:
#   bash bench/gpu.sh OUT_DIR
# 1. the GPU and library versions (OUT_DIR/gpu.txt);
# 2. the CUDA tests (tests/gpu: recipe stages and edits on CUDA agree with the CPU);
# 3. where the time goes: torch.profiler over a few decode tokens and denoising steps, eager (MGIE-7B-sized);
# 4. the MGIE-7B-sized benchmark, fp16: ours eager, ours compiled (first edit = compiling, reported apart) and the
#    reference stack; batch 1 the median of 3 alternating runs, batch 8 one run after the warm-up.
set -uo pipefail
out=${1:?usage: bash bench/gpu.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
} > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
timeout 90 python3 -m pytest -q -s --run-gpu -m gpu tests/gpu 2>&1 | tee "$out/pytest-gpu.log"
timeout 60 python3 -m bench.profile --preset full --device cuda --dtype fp16 2>&1 | tee "$out/profile.txt"
timeout 180 python3 -m bench.speed --preset full --device cuda --dtype fp16 --batch 1 --repeat 3 --compile \
    --out "$out/bench-full.md" 2>&1 | tee "$out/bench.log"
timeout 120 python3 -m bench.speed --preset full --device cuda --dtype fp16 --batch 8 --repeat 1 --compile \
    --out "$out/bench-full.md" 2>&1 | tee -a "$out/bench.log"
