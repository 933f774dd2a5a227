#!/usr/bin/env bash
# The web page against the native program and TensorFlow.js, in one headless Chromium on its
# SwiftShader (docs/performance.md, "The web page"): one MLP epoch (784-256-128-10, Adam 1e-3,
# batch 128) in the page, natively on the same SwiftShader driver, and in TensorFlow.js with its
# webgpu and its webgl backends; seconds per epoch and test accuracy, page load to first step, and
# the page's file sizes.
#
#   bench/web_compare.sh MNIST_DIR [TRAIN_SAMPLES [EPOCHS]]
#
# MNIST_DIR holds the four IDX files, raw or .gz; TRAIN_SAMPLES (default 60000) trains on the
# first N training images (the test set is whole); EPOCHS (default 2) shows the first epoch,
# which pays for compiling the shaders, apart from the next. Needs chromium, the wasm32 target,
# wasm-bindgen-cli, and npm (TensorFlow.js 4.22.0 is installed into a temporary folder).
set -euo pipefail
cd "$(dirname "$0")/.."
data="$(cd "$1" && pwd)"
samples="${2:-60000}"
epochs="${3:-2}"
work="$(mktemp -d)"
site="$work/site"
icd=/usr/lib/chromium/vk_swiftshader_icd.json
trap 'kill -- -$server_group 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet
bin=target/release/shadertrain
"$bin" web --no-serve --out "$site" >/dev/null
mkdir -p "$site/data" "$work/subset"
# The first $samples training images, as the page and TensorFlow.js read them.
python3 - "$data" "$work/subset" "$samples" <<'EOF'
import gzip, os, struct, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def read(stem):
    path = f"{src}/{stem}"
    return open(path, "rb").read() if os.path.exists(path) else gzip.open(path + ".gz").read()
for stem, header, size in [("train-images-idx3-ubyte", 16, 784), ("train-labels-idx1-ubyte", 8, 1)]:
    raw = read(stem)
    count = min(n, struct.unpack(">I", raw[4:8])[0])
    head = raw[:4] + struct.pack(">I", count) + raw[8:header]
    open(f"{dst}/{stem}", "wb").write(head + raw[header:header + count * size])
for stem in ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]:
    open(f"{dst}/{stem}", "wb").write(read(stem))
EOF
cp "$work"/subset/* "$site/data/"
(cd "$work" && npm init -y >/dev/null && npm install --silent @tensorflow/tfjs@4.22.0 \
  @tensorflow/tfjs-backend-webgpu@4.22.0 >/dev/null)
cp "$work/node_modules/@tensorflow/tfjs/dist/tf.min.js" \
  "$work/node_modules/@tensorflow/tfjs-backend-webgpu/dist/tf-backend-webgpu.min.js" \
  bench/tfjs_mlp.html "$site/"

setsid "$bin" web --no-build --port 0 --out "$site" >"$work/server.log" &
server_group=$!
for _ in $(seq 50); do grep -q http "$work/server.log" 2>/dev/null && break; sleep 0.1; done
url="$(grep -o 'http://127.0.0.1:[0-9]*/' "$work/server.log")"

# Opens a URL in a fresh headless Chromium and prints the console line starting with $2.
in_chromium() {
  local profile log
  profile="$(mktemp -d -p "$work")"
  log="$profile.log"
  setsid chromium --headless=new --no-sandbox --enable-unsafe-webgpu --enable-logging=stderr \
    --v=0 --user-data-dir="$profile" "$1" 2>"$log" >/dev/null &
  local group=$!
  for _ in $(seq 1200); do grep -q "$2" "$log" && break; sleep 0.5; done
  kill -- -"$group" 2>/dev/null || true
  wait "$group" 2>/dev/null || true
  grep -o "$2 .*" "$log" | head -1 | sed 's/", source:.*//'
}

echo "adapter: SwiftShader (Chromium $(chromium --version 2>/dev/null | grep -o '[0-9.]*' | head -1)); $samples training images, 10,000 test"
echo "page files: $(du -b "$site/shadertrain_bg.wasm" | cut -f1) bytes of wasm" \
  "($(gzip -9 -c "$site/shadertrain_bg.wasm" | wc -c) gzip-compressed)," \
  "$(cat "$site/shadertrain.js" "$site/page.js" "$site/index.html" | wc -c) of JS and HTML"
in_chromium "${url}?autorun=1&data=data/&preset=mlp&epochs=$epochs&seed=0" shadertrain-result
VK_ICD_FILENAMES="$icd" "$bin" train --offline --data "$work/subset" --model mlp --epochs "$epochs" |
  sed -n '/^ *epoch/,$p' | sed 's/^/native: /'
for backend in webgpu webgl; do
  in_chromium "${url}tfjs_mlp.html?backend=$backend&data=data/&train=$samples&epochs=$epochs" tfjs-result
done
