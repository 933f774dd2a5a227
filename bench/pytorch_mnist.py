#!/usr/bin/env python3
"""The reference recipe in PyTorch on the CPU, for comparison with shadertrain.

MNIST from the same IDX files, pixels/255, MLP 784-256(relu)-128(relu)-10, softmax + categorical
cross-entropy, Adam (lr 1e-3, betas 0.9/0.999, eps 1e-7 as Keras), batch 128, shuffled every epoch,
Glorot-uniform weights and zero biases (Keras' Dense default). Tensors live in memory; the
per-epoch time covers training and the test evaluation, as shadertrain's does.

usage: pytorch_mnist.py DATA_DIR [--epochs N] [--threads T] [--seed S] [--device cpu|cuda]
"""
import argparse
import gzip
import os
import struct
import time

import numpy as np
import torch


def read_idx(path):
    opener = gzip.open if open(path, "rb").read(2) == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 8, f"{path}: not an IDX u8 file"
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(data_dir, stem):
    for name in (stem + ".gz", stem):
        if os.path.exists(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    raise SystemExit(f"{stem}[.gz] not found in {data_dir}")


def load(data_dir, prefix, device):
    x = read_idx(find(data_dir, f"{prefix}-images-idx3-ubyte"))
    y = read_idx(find(data_dir, f"{prefix}-labels-idx1-ubyte"))
    x = torch.tensor(x.reshape(len(x), -1), dtype=torch.float32, device=device) / 255.0
    return x, torch.tensor(y, dtype=torch.long, device=device)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    x_train, y_train = load(args.data, "train", device)
    x_test, y_test = load(args.data, "t10k", device)

    layers = [torch.nn.Linear(784, 256), torch.nn.Linear(256, 128), torch.nn.Linear(128, 10)]
    for layer in layers:
        torch.nn.init.xavier_uniform_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    model = torch.nn.Sequential(layers[0], torch.nn.ReLU(), layers[1], torch.nn.ReLU(), layers[2]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

    print(f"pytorch {torch.__version__} on {device}, {args.threads} thread(s)")
    print("epoch train_loss train_acc test_loss test_acc seconds samples/s")
    n = len(x_train)
    for epoch in range(1, args.epochs + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        order = torch.randperm(n, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        model.train()
        for first in range(0, n, args.batch_size):
            idx = order[first : first + args.batch_size]
            logits = model(x_train[idx])
            loss = loss_fn(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            optimizer.step()
            loss_sum += loss.detach()
            correct += (logits.argmax(1) == y_train[idx]).sum()
        model.eval()
        with torch.no_grad():
            logits = model(x_test)
            test_loss = loss_fn(logits, y_test).item() / len(x_test)
            test_acc = (logits.argmax(1) == y_test).float().mean().item()
        train_loss, train_acc = loss_sum.item() / n, correct.item() / n
        seconds = time.perf_counter() - start
        print(f"{epoch:5d} {train_loss:10.4f} {100 * train_acc:8.2f}% {test_loss:10.4f} {100 * test_acc:8.2f}% "
              f"{seconds:8.2f} {n / seconds:10.0f}", flush=True)


if __name__ == "__main__":
    main()
