#!/usr/bin/env bash
# Fine-tuning MGIE-7B on small cards, measured on one lent GPU in one run of under 9 minutes:
#   bash bench/gpu-train.sh OUT_DIR [MODEL]
# MODEL: Apple's MGIE folder or an MGIE bundle; without it, an MGIE-7B-sized random model (the memory and the time
# of a step do not depend on the weights). Needs torchao made for that machine's torch; when .whl/ holds a torchao
# wheel (carried with the tree) it is installed from there first, as the device README describes.
# 1. the GPU and library versions (OUT_DIR/gpu.txt);
# 2. each memory plan (--memory 24, 16, 12, 8) in its own process: 256 px, batch 1 accumulating 4 micro-batches,
#    STEPS steps (default 8): the settings it picks, the steps' peak reserved and allocated memory, seconds per step,
#    the losses (OUT_DIR/train.md; every step's losses in OUT_DIR/train.json), and the goals: --memory 12 at most
#    11 GiB reserved, --memory 8 at most 7.5 GiB, a step at most twice the --memory 24 plan's.
# The same run on a CPU, to check the script end to end in a minute or two:
#   PRESET=tiny DEVICE=cpu STEPS=2 RESOLUTION=64 ACCUMULATION=1 bash bench/gpu-train.sh OUT_DIR
set -uo pipefail
out=${1:?usage: bash bench/gpu-train.sh OUT_DIR [MODEL]}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ls .whl/torchao-*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; fi
  python3 -c "import torch, transformers, diffusers, peft, torchao; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'diffusers', diffusers.__version__, 'peft', peft.__version__, 'torchao', torchao.__version__)"
} > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
model=(--preset "${PRESET:-full}")
if [ -n "${2:-}" ]; then model=(--model "$2"); fi
sizes=()
if [ -n "${RESOLUTION:-}" ]; then sizes+=(--resolution "$RESOLUTION"); fi
if [ -n "${ACCUMULATION:-}" ]; then sizes+=(--accumulation "$ACCUMULATION"); fi
timeout 510 python3 -m bench.train_memory "${model[@]}" "${sizes[@]}" --device "${DEVICE:-cuda}" --settings plans \
    --max-steps "${STEPS:-8}" --timeout 240 --json "$out/train.json" --out "$out/train.md" 2>&1 | tee "$out/train.log"
