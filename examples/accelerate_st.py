"""ST/ST++ in a Hugging Face Accelerate training loop (``pip install "stimulative[accelerate]"``).

    python examples/accelerate_st.py                                   # synthetic data, CPU, ~15 s
    accelerate launch examples/accelerate_st.py --data digits --epochs 5 --mixed-precision bf16
    accelerate launch --multi_gpu --num_processes 2 examples/accelerate_st.py --data ./cifar_folder/train \\
        --model cifar_resnet20 --epochs 200 --batch-size 64 --num-subnets 6 --kl-norm layer --min-input-scale 0.43
    torchrun --nproc_per_node 2 examples/accelerate_st.py --cpu              # 2 CPU processes (gloo)

The whole integration is two hooks of ``st.StimulativeStep``::

    step = st.StimulativeStep(ed, space, model=model, backward=accelerator.backward,
                              no_sync=lambda: accelerator.no_sync(model), num_subnets=6, kl_norm="layer")

``accelerator.backward`` scales fp16 losses (mixed precision is Accelerate's: ``--mixed-precision``); the main
pass and all sub-network passes but the last run in ``accelerator.no_sync(model)``, so DDP all-reduces the
gradients once per step. ``ElasticDepth`` is applied before ``accelerator.prepare`` (which may wrap the model
in DDP); DDP needs ``find_unused_parameters=True`` because sub-networks skip blocks. Every process uses the
same sampler and input-size seeds, so all ranks train the same sub-networks at every step.

``--data``: "synthetic" (default: class templates plus noise, offline), "digits" (scikit-learn's 8x8 digits,
upsampled; offline) or an ImageFolder directory of 32x32 images (e.g. CIFAR-10 exported to PNG folders).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import stimulative as st

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
ST_PLUS_PLUS = dict(num_subnets=6, kl_norm="layer", amplitude="adaptive", min_input_scale=0.43)


# ----------------------------------------------------------------------------------------------------------
# data (offline by default)
# ----------------------------------------------------------------------------------------------------------

def synthetic_data(n: int, num_classes: int = 10, size: int = 32, seed: int = 0) -> TensorDataset:
    """Learnable random images: a fixed random template per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = templates[y] + torch.randn(n, 3, size, size, generator=g)
    return TensorDataset(x, y)


def digits_data(size: int = 32) -> TensorDataset:
    """scikit-learn's 1797 handwritten digits (8x8), upsampled to ``size`` and repeated to 3 channels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return TensorDataset((x - 0.5) / 0.5, torch.tensor(digits.target))


def folder_data(root: str) -> Dataset:
    """An ImageFolder of CIFAR-sized images with CIFAR augmentation (random crop with padding, flip)."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    return datasets.ImageFolder(root, transform=tf)


def build_data(name: str, samples: int, seed: int) -> tuple[Dataset, Dataset | None, int]:
    """(train set, held-out set or None, number of classes)."""
    if name in ("synthetic", "digits"):
        data = synthetic_data(samples + samples // 4, seed=seed) if name == "synthetic" else digits_data()
        cut = len(data) * 4 // 5
        x, y = data.tensors
        return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:]), 10
    train = folder_data(name)
    return train, None, len(train.classes)


# ----------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------

def cosine_lambda(total_steps: int):
    """Per-iteration cosine from the base LR to 0 (for ``LambdaLR``)."""
    return lambda i: 0.5 * (1 + math.cos(math.pi * min(i / max(total_steps, 1), 1.0)))


def train(model: nn.Module, loader: DataLoader, *, epochs: int = 2, lr: float = 0.1, momentum: float = 0.9,
          weight_decay: float = 5e-4, st_options: Mapping[str, Any] | None = None, seed: int = 0,
          clip_grad: float = 0.0, accelerator: Accelerator | None = None, mixed_precision: str = "no",
          cpu: bool = False, log_every: int = 0) -> dict[str, Any]:
    """Train ``model`` with ST/ST++ under Accelerate; returns a dict of what a caller needs.

    ``model`` (unwrapped, trained in place), ``step`` (the ``StimulativeStep``), ``losses`` (one dict per
    step), ``drawn`` (the sub-network configs and input sizes of every step) and ``accelerator``.
    ``st_options`` are ``StimulativeStep`` options plus ``sampling``/``ranges`` (default: ST++). ``lr``
    follows a per-iteration cosine over ``epochs * len(loader)`` (the loader before sharding: Accelerate
    steps the scheduler once per process and step).
    """
    if accelerator is None:
        # sub-networks skip blocks: DDP must look for unused parameters
        accelerator = Accelerator(mixed_precision=mixed_precision, cpu=cpu,
                                  kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    options = dict(ST_PLUS_PLUS if st_options is None else st_options)
    sampling, ranges = options.pop("sampling", "ordered"), options.pop("ranges", None)

    ed = st.ElasticDepth(model)                       # before prepare(): patch the plain model
    space = st.SampleSpace.for_model(ed, sampling, ranges=ranges, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(epochs * len(loader)))
    wrapped, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    step = st.StimulativeStep(ed, space, model=wrapped, backward=accelerator.backward,
                              no_sync=lambda: accelerator.no_sync(wrapped), seed=seed + 1, **options)
    losses, drawn = [], []
    wrapped.train()
    for epoch in range(epochs):
        step.set_epoch(epoch, epochs)                 # start_epoch / kl_schedule
        for x, y in loader:
            out = step(x, y)
            if clip_grad > 0:
                accelerator.clip_grad_norm_(wrapped.parameters(), clip_grad)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(out)
            drawn.append((step.last_configs, step.last_sizes))
            if log_every and len(losses) % log_every == 0:
                accelerator.print(f"epoch {epoch} step {len(losses)}: loss {out['loss']:.4f} main "
                                  f"{out['main']:.4f} subnet {out['subnet']:.4f}")
    return {"model": accelerator.unwrap_model(wrapped), "step": step, "losses": losses, "drawn": drawn,
            "accelerator": accelerator}


@torch.no_grad()
def accuracy(model: nn.Module, ed: st.ElasticDepth, data: Dataset, depth=None,
             batch_size: int = 256) -> float:
    model.eval()
    correct = total = 0
    with ed.depth(depth):
        for x, y in DataLoader(data, batch_size=batch_size):
            correct += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    model.train()
    return correct / max(total, 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="synthetic", help="synthetic | digits | ImageFolder directory")
    p.add_argument("--samples", type=int, default=512, help="synthetic training images")
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="per process")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--num-subnets", type=int, default=2, help="ST++: 6 (2 keeps the demo fast)")
    p.add_argument("--kl-norm", "--kl", dest="kl_norm", default="layer")
    p.add_argument("--amplitude", default="adaptive")
    p.add_argument("--min-input-scale", type=float, default=0.43)
    p.add_argument("--sampling", default="ordered")
    p.add_argument("--clip-grad", type=float, default=0.0)
    p.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    p.add_argument("--cpu", action="store_true", help="train on CPU (needed for several CPU processes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)                      # same initial weights on every process
    train_set, held_out, num_classes = build_data(args.data, args.samples, args.seed)
    model = st.create_model(args.model, num_classes=num_classes)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.workers)
    amplitude = args.amplitude if args.amplitude == "adaptive" else float(args.amplitude)
    st_options = dict(num_subnets=args.num_subnets, kl_norm=args.kl_norm, amplitude=amplitude,
                      min_input_scale=args.min_input_scale, sampling=args.sampling)
    result = train(model, loader, epochs=args.epochs, lr=args.lr, st_options=st_options, seed=args.seed,
                   clip_grad=args.clip_grad, mixed_precision=args.mixed_precision, cpu=args.cpu,
                   log_every=10)
    ed = result["step"].ed
    if held_out is not None and result["accelerator"].is_main_process:
        smallest = ed.min_depths
        print(f"held-out accuracy: full {accuracy(result['model'], ed, held_out):.3f}, "
              f"depth {smallest} {accuracy(result['model'], ed, held_out, smallest):.3f}")
    return result


if __name__ == "__main__":
    main()
