#!/usr/bin/env bash
# Measure shadertrain on a Linux machine with an NVIDIA GPU (Vulkan), against PyTorch on CUDA:
# machine facts (date, glibc, driver, adapters), selftest, `bench --json` for the MLP and the
# convnet, the 10-epoch MLP recipe and the 15-epoch convnet recipe (`train --metrics`), then both
# recipes in PyTorch on CUDA (bench/pytorch_mnist.py). Every step runs under `timeout`, capped so
# the whole script ends within BUDGET_S seconds (default 420) even if a step hangs; a failing step
# does not stop the rest. The convnet training runs last and gets what time is left: if it is cut
# off, its metrics file still holds the epochs it finished.
#
# usage, on a machine with cargo (builds the release binary first):
#   bench/gpu.sh MNIST_DIR [ADAPTER_SUBSTRING]            (default adapter filter: "nvidia")
# usage, with a binary built elsewhere (no cargo run):
#   BIN=path/to/shadertrain bench/gpu.sh MNIST_DIR [ADAPTER_SUBSTRING]
# FASHION=FASHION_MNIST_DIR adds ResNet-8's full recipe on Fashion-MNIST, ours and PyTorch's.
# Output goes to ${OUT:-bench-out}/: gpu.log (everything, step by step, with each step's exit
# status and seconds; 124 = timed out), bench-mlp.json, bench-convnet.json, metrics-mlp.jsonl and
# metrics-convnet.jsonl.
#
# The Vulkan loader (libvulkan1) and the NVIDIA ICD must be installed; if no NVIDIA adapter is
# listed, set VK_DRIVER_FILES to the nvidia_icd.json (the script lists the usual ICD folders when
# the file it names is missing). On this workplace's device machine (root, loaders carried as
# .deb in .gl/, binary and data in .gpu/):
#   for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig;
#   export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json \
#     __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json \
#     XDG_RUNTIME_DIR=$(mktemp -d); BIN=.gpu/shadertrain bash bench/gpu.sh .gpu/mnist
# Run there on 2026-12-04 (NVIDIA H200, driver 580.159.04): every step passed, 189 s in all.
set -uo pipefail
data=${1:?usage: [BIN=shadertrain] bench/gpu.sh MNIST_DIR [ADAPTER_SUBSTRING]}
adapter=${2:-nvidia}
backend=${BACKEND:-vulkan}
budget=${BUDGET_S:-420}
cd "$(dirname "$0")/.."
out=${OUT:-bench-out}
mkdir -p "$out"
rm -f "$out"/metrics-mlp.jsonl "$out"/metrics-convnet.jsonl "$out"/metrics-resnet8.jsonl
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
export PYTHONUNBUFFERED=1
deadline=$(( $(date +%s) + budget ))

if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet || exit
  BIN=./target/release/shadertrain
fi
gpu=(--backend "$backend" --adapter "$adapter")
recipe=(--offline --data "$data")

# step NAME CAP COMMAND...: run COMMAND under `timeout`, at most CAP seconds and never past the
# deadline; print its output, exit status and wall time.
step() {
  local name=$1 cap=$2
  shift 2
  local left=$(( deadline - $(date +%s) ))
  (( cap > left )) && cap=$left
  if (( cap < 5 )); then
    echo "=== $name: skipped, ${left} s left of the ${budget} s budget"
    return
  fi
  echo "=== $name (timeout ${cap} s): $*"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout -k 5 "$cap" "$@" 2>&1
  rc=$?
  t1=$(date +%s.%N)
  echo "=== $name: rc $rc$( ((rc == 124 || rc == 137)) && echo ' (timed out)'), $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s"
}

main() {
  echo "=== date: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
  echo "=== glibc: $(ldd --version 2>&1 | head -1)"
  echo "=== binary: $BIN ($("$BIN" --version 2>&1))"
  step nvidia-smi 15 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
  echo "=== libvulkan: $(ldconfig -p 2>/dev/null | grep -c libvulkan) entries in ldconfig"
  if [[ -n ${VK_DRIVER_FILES:-} && ! -e $VK_DRIVER_FILES ]]; then
    echo "=== VK_DRIVER_FILES=$VK_DRIVER_FILES does not exist; ICD folders:"
    ls /usr/local/nvidia/share/vulkan/icd.d/ /usr/share/vulkan/icd.d/ 2>&1
  fi
  step adapters 20 "$BIN" adapters
  step selftest 45 "$BIN" selftest "${gpu[@]}"
  step bench-mlp 45 "$BIN" bench --json "${recipe[@]}" "${gpu[@]}"
  step train-mlp 75 "$BIN" train "${recipe[@]}" "${gpu[@]}" --metrics "$out/metrics-mlp.jsonl"
  step pytorch-cuda-mlp 45 python3 bench/pytorch_mnist.py "$data" --device cuda
  step pytorch-cuda-convnet 60 python3 bench/pytorch_mnist.py "$data" --device cuda --model convnet
  step bench-convnet 60 "$BIN" bench --json --model convnet "${recipe[@]}" "${gpu[@]}"
  step train-convnet 240 "$BIN" train --model convnet "${recipe[@]}" "${gpu[@]}" \
    --metrics "$out/metrics-convnet.jsonl"
  # With FASHION=DIR (Fashion-MNIST's files): ResNet-8's full recipe (SGD, Nesterov, cosine,
  # label smoothing, standardisation, crop2,flip; 15 epochs) in both, in what time is left.
  if [[ -n ${FASHION:-} ]]; then
    step pytorch-cuda-resnet8 120 python3 bench/pytorch_mnist.py "$FASHION" --device cuda \
      --model resnet8
    step train-resnet8 600 "$BIN" train --model resnet8 --dataset fashion-mnist --offline \
      --data "$FASHION" "${gpu[@]}" --metrics "$out/metrics-resnet8.jsonl"
  fi
  echo "=== end: $(date -u '+%Y-%m-%dT%H:%M:%SZ')"
}

main 2>&1 | tee "$out/gpu.log"
# The JSON reports (pretty-printed: from a line "{" to a line "}") out of the log.
for model in mlp convnet; do
  sed -n "/^=== bench-$model (/,/^=== bench-$model:/p" "$out/gpu.log" | sed -n '/^{$/,/^}$/p' \
    > "$out/bench-$model.json"
done
exit 0
