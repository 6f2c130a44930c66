#!/usr/bin/env bash
# The small-GPU modes measured on one lent GPU, in one run of under 8 minutes:
#   bash bench/gpu-placements.sh OUT_DIR
# Needs torchao made for that machine's torch; when .whl/ holds a torchao wheel (carried with the tree) it is
# installed from there first, as the device README describes.
# 1. the GPU and library versions (OUT_DIR/gpu.txt);
# 2. MGIE-7B-sized random model, fp16, 512 px, 100 steps: resident / staged / int8 / int4, peak allocated and
#    reserved memory per stage, time per edit, visual-token and imagination error against the resident fp16 edit;
# 3. VAE tiling at 2048 px (SD1.5-shaped VAE, random weights): memory and time, whole against tiled.
set -uo pipefail
out=${1:?usage: bash bench/gpu-placements.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ls .whl/torchao-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers, diffusers, torchao; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'diffusers', diffusers.__version__, 'torchao', torchao.__version__)"
} > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
timeout 330 python3 -m bench.memory --preset full --device cuda --dtype fp16 --modes resident,staged,int8,int4 \
    --out "$out/memory.md" 2>&1 | tee "$out/memory.log"
timeout 90 python3 -m bench.tiling --random-sd --device cuda --dtype fp16 --size 2048 --out "$out/tiling.md" \
    2>&1 | tee "$out/tiling.log"
