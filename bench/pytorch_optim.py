#!/usr/bin/env python3
"""shadertrain's optimizers, schedules and label smoothing against PyTorch's, run by hand: for each
case, the reference MLP (784-256-128-10 with tanh, Glorot weights drawn here) is saved as a
safetensors file; `shadertrain train --init` and PyTorch each train it for 1 and for 100 steps on
the same batches (file order, `--no-shuffle`, batch 128), and the weights after them are compared
under the tolerance the CI's Adam check uses (|a - b| <= 1e-5 + 1e-4 |b|). shadertrain's Adam and
AdamW place epsilon as Keras does, so PyTorch's eps is set to the same effective value each step.
Prints the worst element of each case, and beside it how far PyTorch drifts from itself when only
the order of each batch's sums changes (the batch reversed): no two implementations can agree
more closely than rounding lets them.

usage: pytorch_optim.py DATA_DIR [--shadertrain target/release/shadertrain] [--steps 1 100]
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pytorch_mnist import build, load, make_optimizer, make_schedule, shadertrain_names, warmup_steps  # noqa: E402

EPOCHS = 2  # the length the schedules span; 100 steps stay inside it on MNIST (469 a step each)

# (name, optimizer, lr, momentum, nesterov, weight decay, schedule, warm-up epochs, label smoothing)
CASES = [
    ("sgd, weight decay", "sgd", 0.05, 0.0, False, 1e-3, "constant", None, 0.0),
    ("sgd, momentum, step", "sgd", 0.05, 0.9, False, 0.0, "step", None, 0.0),
    ("sgd, nesterov, decay, warm-up, cosine, smoothing", "sgd", 0.1, 0.9, True, 5e-4, "cosine", 0.1, 0.1),
    ("adam, L2 decay, warm-up", "adam", 1e-3, 0.0, False, 1e-3, "constant", 0.1, 0.0),
    ("adamw, onecycle", "adamw", 1e-3, 0.0, False, 1e-2, "onecycle", None, 0.0),
]


def flags(name, lr, momentum, nesterov, decay, schedule, warmup, smoothing):
    out = ["--optimizer", name, "--lr", str(lr), "--weight-decay", str(decay), "--lr-schedule", schedule,
           "--label-smoothing", str(smoothing)]
    if momentum:
        out += ["--momentum", str(momentum)]
    if nesterov:
        out += ["--nesterov"]
    if warmup is not None:
        out += ["--warmup-epochs", str(warmup)]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--shadertrain", default="target/release/shadertrain")
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 100])
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = load(args.data, "train", "cpu")
    steps_per_epoch = math.ceil(len(x) / 128)
    total = EPOCHS * steps_per_epoch
    failures = 0
    with tempfile.TemporaryDirectory() as work:
        # tanh rather than ReLU: over many steps a ReLU's kink turns a rounding difference of a
        # pre-activation next to 0 into a different gradient (seen here: a unit at 6e-8 in step
        # 30 of SGD with Nesterov momentum at lr 0.1), which says nothing about the optimizers.
        model = build("mlp")
        model[2], model[4] = torch.nn.Tanh(), torch.nn.Tanh()
        names = shadertrain_names(model)
        init = os.path.join(work, "init.safetensors")
        save_file({names[k]: v.contiguous() for k, v in model.state_dict().items()}, init)
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        for (case, name, lr, momentum, nesterov, decay, schedule, warmup, smoothing) in CASES:
            for steps in args.steps:
                saved = os.path.join(work, "trained.safetensors")
                command = [args.shadertrain, "train", "--offline", "--data", args.data, "--init", init,
                           "--activation", "tanh", "--no-shuffle", "--epochs", str(EPOCHS), "--max-steps", str(steps), "--save", saved]
                command += flags(name, lr, momentum, nesterov, decay, schedule, warmup, smoothing)
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                ours = load_file(saved)

                def pytorch(reverse):
                    model.load_state_dict(initial)
                    optimizer = make_optimizer(model.parameters(), name, lr, momentum, nesterov, decay)
                    scheduler = make_schedule(optimizer, schedule, total, warmup_steps(warmup, steps_per_epoch))
                    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=smoothing)
                    for step in range(steps):
                        if name != "sgd":
                            # shadertrain's Adam is Keras': epsilon is added to sqrt(v) before the
                            # bias correction, i.e. PyTorch's eps is 1e-7 / sqrt(1 - beta2^t).
                            optimizer.param_groups[0]["eps"] = 1e-7 / math.sqrt(1 - 0.999 ** (step + 1))
                        batch = torch.arange((step % steps_per_epoch) * 128, (step % steps_per_epoch + 1) * 128)
                        batch = batch.flip(0) if reverse else batch
                        optimizer.zero_grad(set_to_none=True)
                        loss_fn(model(x[batch]), y[batch]).backward()
                        optimizer.step()
                        scheduler.step()
                    return {k: v.clone() for k, v in model.state_dict().items()}

                theirs = pytorch(False)
                # PyTorch against itself, each batch's samples in reverse order: the same sums in
                # another order, how far rounding alone takes the weights in this many steps.
                twin = pytorch(True)
                noise = max((twin[k] - theirs[k]).abs().max().item() for k in theirs)
                # Per tensor: how far its worst element is past the tolerance (negative: inside).
                worst = None
                for torch_name, b in theirs.items():
                    a = ours[names[torch_name]].reshape(b.shape)
                    diff = (a - b).abs()
                    excess = (diff - (1e-5 + 1e-4 * b.abs())).max().item()
                    if worst is None or excess > worst[0]:
                        worst = (excess, torch_name, diff.max().item())
                excess, tensor, diff = worst
                verdict = "ok" if excess <= 0 else "OUTSIDE the tolerance"
                failures += excess > 0
                print(f"{case:50s} {steps:4d} steps: worst in {tensor} (max |diff| {diff:.2e}; PyTorch "
                      f"against itself {noise:.2e}), {verdict}", flush=True)
    print(f"pytorch {torch.__version__}: {failures} case(s) outside the tolerance")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
