#!/usr/bin/env bash
# A reference recipe in PyTorch on the CPU (1 and 2 threads, in-memory tensors) and in shadertrain on
# the default adapter (lavapipe on a machine without a GPU), one after the other. Prints each run's
# last epoch line: epoch seconds and test accuracy are the figures to compare.
# usage: bench/compare_cpu.sh MNIST_DIR [mlp|convnet] [EPOCHS]   (PyTorch: pip install torch numpy)
#        (default: mlp, and each recipe's own epochs: 10 for mlp, 15 for convnet)
set -euo pipefail
data=${1:?usage: bench/compare_cpu.sh MNIST_DIR [mlp|convnet] [EPOCHS]}
model=${2:-mlp}
epochs=()
[ -n "${3:-}" ] && epochs=(--epochs "$3")
cd "$(dirname "$0")/.."
cargo build --release --quiet
echo "run ($model)             epoch train_loss train_acc [val_loss val_acc] test_loss test_acc seconds samples/s"
for threads in 1 2; do
  printf 'pytorch cpu %s thread(s) ' "$threads"
  python3 bench/pytorch_mnist.py "$data" --model "$model" --threads "$threads" "${epochs[@]}" | tail -n 1
done
printf 'shadertrain             '
./target/release/shadertrain train --offline --data "$data" --model "$model" "${epochs[@]}" | tail -n 1
