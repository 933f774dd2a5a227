#!/usr/bin/env bash
# shadertrain on a Linux machine with an NVIDIA GPU (Vulkan): adapters, selftest, bench and the
# 10-epoch reference recipe, then the same recipe in PyTorch on CUDA where torch sees a GPU.
# Meant to finish within 5 minutes on a datacentre GPU. Writes its logs to ${OUT:-bench-out}/.
#
# usage: bench/gpu.sh MNIST_DIR [ADAPTER_SUBSTRING]      (default adapter filter: "nvidia")
# The Vulkan loader (libvulkan1) and the NVIDIA ICD must be installed; if the driver is not
# found, set VK_DRIVER_FILES to the nvidia_icd.json.
#
# Status: written without access to such a machine; not yet run.
set -euo pipefail
data=${1:?usage: bench/gpu.sh MNIST_DIR [ADAPTER_SUBSTRING]}
adapter=${2:-nvidia}
out=${OUT:-bench-out}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}

cargo build --release --quiet
bin=./target/release/shadertrain
$bin adapters | tee "$out/adapters.txt"
$bin selftest --backend vulkan --adapter "$adapter" | tee "$out/selftest.txt"
$bin bench --json --offline --data "$data" --backend vulkan --adapter "$adapter" | tee "$out/bench.json"
/usr/bin/time -v $bin train --offline --data "$data" --backend vulkan --adapter "$adapter" \
  --metrics "$out/metrics.jsonl" 2> "$out/train-time.txt" | tee "$out/train.txt"

if python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  python3 bench/pytorch_mnist.py "$data" --device cuda | tee "$out/pytorch-cuda.txt"
else
  echo "PyTorch with CUDA not available: no PyTorch comparison" | tee "$out/pytorch-cuda.txt"
fi
