#!/usr/bin/env python3
"""shadertrain's reference recipes in PyTorch on the CPU, for comparison with shadertrain, and a
check that PyTorch loads shadertrain's model files and agrees with them.

MNIST from the same IDX files, pixels/255, softmax + categorical cross-entropy, Adam (lr 1e-3,
betas 0.9/0.999, eps 1e-7 as Keras), batch 128, shuffled every epoch, Glorot-uniform weights and
zero biases (Keras' default). Tensors live in memory; the per-epoch time covers training and the
evaluations, as shadertrain's does.
- `--model mlp` (default): 784-256(relu)-128(relu)-10, 10 epochs.
- `--model convnet`: Keras' mnist_convnet: Conv2D(32, 3) relu, MaxPool(2), Conv2D(64, 3) relu,
  MaxPool(2), Flatten, Dropout(0.5), Dense(10); 15 epochs, the last 10 % of the training set held
  out for validation (as Keras' validation_split takes it, before shuffling).
- `--model resnet8|resnet20`: He et al.'s CIFAR ResNets (the module the README shows, whose
  state_dict names are shadertrain's) with their recipe, as `shadertrain train --model resnet8`
  has it: SGD with Nesterov momentum 0.9 and weight decay 5e-4, lr 0.1 with a one-epoch linear
  warm-up then cosine to 0 (per step), label smoothing 0.1 (the test loss without), the training
  set's mean and standard deviation standardising the input, random crops (pad 2, as
  RandomCrop(28, padding=2)) and on Fashion-MNIST random horizontal flips (`--augment`), batch
  128, 15 epochs.
- `--load FILE`: no training; load a `shadertrain train --save` file (tensors `layers.{i}.weight`
  and `.bias`, `i` counting the layers with parameters) into the module, standardise the test
  images with the file's `input_mean` and `input_std` where it has them, and print its test loss
  and accuracy, to compare with `shadertrain eval`.

DATA_DIR may also hold CIFAR-10's binary batches (cifar-10-batches-bin/), read as shadertrain's
--dataset cifar10 reads them (3x32x32; the ResNets then take 3 channels and flip).

usage: pytorch_mnist.py DATA_DIR [--model mlp|convnet|resnet8|resnet20] [--epochs N] [--threads T]
                        [--seed S] [--device cpu|cuda] [--load FILE]
"""
import argparse
import gzip
import math
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


def cifar_dir(data_dir):
    """The folder of CIFAR-10's binary batches under `data_dir` (it, or its cifar-10-batches-bin/),
    or None for IDX data."""
    for folder in (os.path.join(data_dir, "cifar-10-batches-bin"), data_dir):
        if os.path.exists(os.path.join(folder, "data_batch_1.bin")):
            return folder
    return None


def load(data_dir, prefix, device):
    batches = cifar_dir(data_dir)
    if batches:  # records of a label byte and R, G, B planes of 32x32
        names = [f"data_batch_{i}.bin" for i in range(1, 6)] if prefix == "train" else ["test_batch.bin"]
        raw = np.concatenate([np.fromfile(os.path.join(batches, n), dtype=np.uint8).reshape(-1, 3073) for n in names])
        x = torch.tensor(raw[:, 1:].reshape(-1, 3, 32, 32), dtype=torch.float32, device=device) / 255.0
        return x, torch.tensor(raw[:, 0].astype(np.int64), device=device)
    x = read_idx(find(data_dir, f"{prefix}-images-idx3-ubyte"))
    y = read_idx(find(data_dir, f"{prefix}-labels-idx1-ubyte"))
    x = torch.tensor(x.reshape(len(x), 1, 28, 28), dtype=torch.float32, device=device) / 255.0
    return x, torch.tensor(y, dtype=torch.long, device=device)


nn = torch.nn
F = torch.nn.functional


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        conv = lambda i, o, k, s: nn.Conv2d(i, o, k, s, k // 2, bias=False)
        self.branch = nn.ModuleList([conv(cin, cout, 3, stride), nn.BatchNorm2d(cout),
                                     conv(cout, cout, 3, 1), nn.BatchNorm2d(cout)])
        self.shortcut = nn.ModuleList([conv(cin, cout, 1, stride), nn.BatchNorm2d(cout)] if stride > 1 else [])

    def forward(self, x):
        c1, b1, c2, b2 = self.branch
        y = b2(c2(F.relu(b1(c1(x)))))
        for m in self.shortcut:
            x = m(x)
        return F.relu(y + x)


class ResNet(nn.Module):  # ResNet(1): ResNet-8; ResNet(3): ResNet-20
    def __init__(self, n, channels=1, classes=10):
        super().__init__()
        layers, cin = [nn.Conv2d(channels, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)], 16
        for cout, stride in [(16, 1), (32, 2), (64, 2)]:
            for i in range(n):
                layers.append(Block(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.ModuleList(layers + [nn.Linear(64, classes)])

    def forward(self, x):
        conv, bn, *blocks, fc = self.layers
        x = F.relu(bn(conv(x)))
        for block in blocks:
            x = block(x)
        return fc(x.mean((2, 3)))


def build(model, channels=1):
    if model.startswith("resnet"):
        module = ResNet(1 if model == "resnet8" else 3, channels=channels)
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
        return module
    if model == "mlp":
        layers = [nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                  nn.Linear(128, 10)]
    else:
        layers = [nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                  nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(1600, 10)]
    for layer in layers:
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def shadertrain_names(module):
    """PyTorch's state_dict names (e.g. "3.weight") to shadertrain's ("layers.1.weight")."""
    if isinstance(module, ResNet):
        return {name: name for name in module.state_dict()}
    names = {}
    with_parameters = [name for name, child in module.named_children() if len(list(child.parameters()))]
    for i, name in enumerate(with_parameters):
        for kind in ("weight", "bias"):
            names[f"{name}.{kind}"] = f"layers.{i}.{kind}"
    return names


def warmup_steps(epochs, steps_per_epoch):
    """shadertrain's warm-up length: epochs × steps per epoch, rounded half away from zero."""
    return None if epochs is None else int(math.floor(epochs * steps_per_epoch + 0.5))


def make_optimizer(params, name, lr, momentum=0.0, nesterov=False, weight_decay=0.0, eps=1e-7):
    """torch.optim's optimizer as shadertrain's --optimizer, --momentum, --nesterov and
    --weight-decay make it (Adam's eps as Keras', 1e-7, is shadertrain's default)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    kind = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return kind(params, lr=lr, betas=(0.9, 0.999), eps=eps, weight_decay=weight_decay)


def make_schedule(optimizer, schedule, total, warmup):
    """shadertrain's --lr-schedule over `total` steps with `warmup` of them warm-up (None: none
    asked for), stepped once per training step (src/train/schedule.rs has the definitions)."""
    L = torch.optim.lr_scheduler
    if schedule == "onecycle":
        rise = warmup / total if warmup is not None else 0.3
        return L.OneCycleLR(optimizer, max_lr=optimizer.param_groups[0]["lr"], total_steps=total, pct_start=rise,
                            anneal_strategy="linear", cycle_momentum=False)
    w = min(warmup or 0, total)

    def factor(i):
        warm = (i + 1) / w if i < w else 1.0
        if schedule == "cosine":
            return warm if i < w else 0.5 * (1 + math.cos(math.pi * (i - w) / max(total - w, 1)))
        if schedule == "step":
            return warm * 0.1 ** sum(i >= m for m in (total // 2, 3 * total // 4))
        return warm

    return L.LambdaLR(optimizer, factor)


def augment(x, crop, flip, cutout):
    """A batch [B, C, H, W] of images in [0, 1] randomly shifted by up to `crop` pixels (black
    borders, as RandomCrop(padding=crop)) and, with `flip`, mirrored left-right half the time.
    (`cutout` is applied after standardisation, by `cut_out`.)"""
    b, c, h, w = x.shape
    if crop:
        padded = F.pad(x, (crop, crop, crop, crop))
        dy = torch.randint(0, 2 * crop + 1, (b,), device=x.device)
        dx = torch.randint(0, 2 * crop + 1, (b,), device=x.device)
        rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
        cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
        x = padded[torch.arange(b, device=x.device)[:, None, None, None],
                   torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mirrored = torch.rand(b, device=x.device) < 0.5
        x = torch.where(mirrored[:, None, None, None], x.flip(3), x)
    return x


def cut_out(x, side):
    """DeVries & Taylor's cutout: a side x side square, centred anywhere, set to 0."""
    b, _, h, w = x.shape
    cy = torch.randint(0, h, (b,), device=x.device)[:, None, None, None] - side // 2
    cx = torch.randint(0, w, (b,), device=x.device)[:, None, None, None] - side // 2
    ys = torch.arange(h, device=x.device)[None, None, :, None]
    xs = torch.arange(w, device=x.device)[None, None, None, :]
    inside = (ys >= cy) & (ys < cy + side) & (xs >= cx) & (xs < cx + side)
    return x.masked_fill(inside, 0.0)


def evaluate(model, loss_fn, x, y, batch=1000):
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for first in range(0, len(x), batch):
            logits = model(x[first : first + batch])
            loss += loss_fn(logits, y[first : first + batch]).item()
            correct += (logits.argmax(1) == y[first : first + batch]).sum().item()
    return loss / len(x), correct / len(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--model", choices=["mlp", "convnet", "resnet8", "resnet20"], default="mlp")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--validation-split", type=float)
    parser.add_argument("--load")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--augment", help="crop<P>,flip,cutout<S> as shadertrain's --augment "
                        "[default for the ResNets: crop2, plus flip where the data folder's name "
                        "says fashion]")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    x_train, y_train = load(args.data, "train", device)
    x_test, y_test = load(args.data, "t10k", device)

    convnet = args.model == "convnet"
    resnet = args.model.startswith("resnet")
    epochs = args.epochs or (15 if convnet or resnet else 10)
    split = args.validation_split if args.validation_split is not None else (0.1 if convnet else 0.0)
    model = build(args.model, channels=x_train.shape[1]).to(device)
    loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

    if args.load:
        from safetensors.torch import load_file

        from safetensors import safe_open

        ours = load_file(args.load)
        state = {torch_name: ours[name] for torch_name, name in shadertrain_names(model).items()}
        model.load_state_dict(state)  # strict: every tensor, in PyTorch's shape
        with safe_open(args.load, "pt") as f:
            metadata = f.metadata() or {}
        if "input_mean" in metadata:  # a model trained with --normalize
            figures = lambda key: torch.tensor([float(v) for v in metadata[key].split(",")]).reshape(1, -1, 1, 1)
            x_test = (x_test - figures("input_mean")) / figures("input_std")
        test_loss, test_acc = evaluate(model, loss_fn, x_test, y_test)
        print(f"{args.load}: test_loss {test_loss:.4f}, test_acc {100 * test_acc:.2f}% (pytorch {torch.__version__})")
        return

    held_out = int(len(x_train) * split)
    x_val, y_val = x_train[len(x_train) - held_out :], y_train[len(y_train) - held_out :]
    x_train, y_train = x_train[: len(x_train) - held_out], y_train[: len(y_train) - held_out]
    n = len(x_train)
    steps_per_epoch = math.ceil(n / args.batch_size)
    crop, flip, cutout = 0, False, 0
    mean = std = None
    if resnet:
        # Flips where the classes do not change in a mirror: Fashion-MNIST's and CIFAR-10's.
        fashion = "fashion" in os.path.abspath(args.data).lower() or cifar_dir(args.data) is not None
        for token in (args.augment or ("crop2,flip" if fashion else "crop2")).split(","):
            if token == "flip":
                flip = True
            elif token.startswith("crop"):
                crop = int(token[4:])
            elif token.startswith("cutout"):
                cutout = int(token[6:])
        mean = x_train.mean(dim=(0, 2, 3), keepdim=True)
        std = x_train.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        print(f"standardised: mean {mean.flatten().tolist()}, std {std.flatten().tolist()}; augment crop{crop}"
              f"{',flip' if flip else ''}{f',cutout{cutout}' if cutout else ''}")
        x_val, x_test = (x_val - mean) / std, (x_test - mean) / std
        optimizer = make_optimizer(model.parameters(), "sgd", 0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
        schedule = make_schedule(optimizer, "cosine", epochs * steps_per_epoch, warmup_steps(1.0, steps_per_epoch))
        train_loss_fn = torch.nn.CrossEntropyLoss(reduction="sum", label_smoothing=0.1)
    else:
        optimizer = make_optimizer(model.parameters(), "adam", 1e-3)
        schedule = None
        train_loss_fn = loss_fn

    print(f"pytorch {torch.__version__} on {device}, {args.threads} thread(s), {args.model}")
    print("epoch train_loss train_acc" + (" val_loss val_acc" if held_out else "") + " test_loss test_acc seconds samples/s")
    for epoch in range(1, epochs + 1):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        order = torch.randperm(n, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        model.train()
        for first in range(0, n, args.batch_size):
            idx = order[first : first + args.batch_size]
            x = x_train[idx]
            if mean is not None:
                x = (augment(x, crop, flip, cutout) - mean) / std
                x = cut_out(x, cutout) if cutout else x
            logits = model(x)
            loss = train_loss_fn(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            (loss / len(idx)).backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
            loss_sum += loss.detach()
            correct += (logits.argmax(1) == y_train[idx]).sum()
        val = ""
        if held_out:
            val_loss, val_acc = evaluate(model, loss_fn, x_val, y_val)
            val = f" {val_loss:10.4f} {100 * val_acc:8.2f}%"
        test_loss, test_acc = evaluate(model, loss_fn, x_test, y_test)
        train_loss, train_acc = loss_sum.item() / n, correct.item() / n
        seconds = time.perf_counter() - start
        print(f"{epoch:5d} {train_loss:10.4f} {100 * train_acc:8.2f}%{val} {test_loss:10.4f} {100 * test_acc:8.2f}% "
              f"{seconds:8.2f} {n / seconds:10.0f}", flush=True)


if __name__ == "__main__":
    main()
