# Sourced by bench/gpu.sh and bench/gpu-hour.sh: makes OUT_DIR, unbuffers Python's output, and records the
# GPU and the library versions in OUT_DIR/gpu.txt (and on screen).
gpu_info() {
    mkdir -p "$1"
    export PYTHONUNBUFFERED=1
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
      python3 -c "import torch, transformers, diffusers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'diffusers', diffusers.__version__)"
    } > "$1/gpu.txt" 2>&1
    cat "$1/gpu.txt"
}
