#!/usr/bin/env bash
# The reference recipe (10 epochs) in PyTorch on the CPU (1 and 2 threads, in-memory tensors) and in
# shadertrain on the default adapter (lavapipe on a machine without a GPU), one after the other.
# Prints each run's last epoch line: epoch seconds and test accuracy are the figures to compare.
# usage: bench/compare_cpu.sh MNIST_DIR       (PyTorch: pip install torch numpy)
set -euo pipefail
data=${1:?usage: bench/compare_cpu.sh MNIST_DIR}
cd "$(dirname "$0")/.."
cargo build --release --quiet
echo "run                     epoch train_loss train_acc  test_loss  test_acc  seconds  samples/s"
for threads in 1 2; do
  printf 'pytorch cpu %s thread(s) ' "$threads"
  python3 bench/pytorch_mnist.py "$data" --threads "$threads" | tail -n 1
done
printf 'shadertrain             '
./target/release/shadertrain train --offline --data "$data" | tail -n 1
