"""ST/ST++ with PyTorch Lightning: a CIFAR ResNet trained by ``Trainer(max_epochs=...)``.

    pip install "stimulative[lightning]"
    python examples/lightning_st.py                                     # synthetic data, CPU, ~20 s
    python examples/lightning_st.py --data digits --epochs 5            # scikit-learn digits, offline
    python examples/lightning_st.py --data ./cifar10/train --val ./cifar10/test --epochs 200 \\
        --batch-size 128 --num-subnets 6 --devices 2 --strategy ddp_find_unused_parameters_true

All of ST++ is ``StimulativeModule(model, st=...)``: it runs the main network and the sub-networks under
manual optimisation (backward through ``self.manual_backward``, gradients all-reduced once per step under
DDP), steps the LR per iteration and applies the ``kl_schedule``/``start_epoch`` at every epoch start. Sub-
networks skip blocks, so DDP needs ``strategy="ddp_find_unused_parameters_true"``.

``--data``: "synthetic" (default: class templates plus noise), "digits" (scikit-learn's 8x8 digits, upsampled)
or an ImageFolder directory of 32x32 images (e.g. CIFAR-10 exported to PNG folders; ``--val`` another one).
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

import stimulative as st
from stimulative.integrations.lightning import StimulativeModule

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


def synthetic_data(n: int, num_classes: int = 10, size: int = 32, seed: int = 0) -> TensorDataset:
    """Learnable random images: a fixed random template per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(num_classes, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return TensorDataset(templates[y] + torch.randn(n, 3, size, size, generator=g), y)


def digits_data(size: int = 32) -> TensorDataset:
    """scikit-learn's 1797 handwritten digits (8x8), upsampled to ``size`` and repeated to 3 channels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return TensorDataset((x - 0.5) / 0.5, torch.tensor(digits.target))


def folder_data(root: str, train: bool) -> Dataset:
    from torchvision import datasets, transforms

    augment = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if train else []
    tf = transforms.Compose([*augment, transforms.ToTensor(), transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
    return datasets.ImageFolder(root, transform=tf)


def build_data(name: str, val: str | None, samples: int, seed: int) -> tuple[Dataset, Dataset | None, int]:
    """(train set, validation set or None, number of classes)."""
    if name in ("synthetic", "digits"):
        data = synthetic_data(samples + samples // 4, seed=seed) if name == "synthetic" else digits_data()
        cut = len(data) * 4 // 5
        x, y = data.tensors
        return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:]), 10
    train = folder_data(name, train=True)
    return train, folder_data(val, train=False) if val else None, len(train.classes)


def main(argv: list[str] | None = None) -> tuple[L.Trainer, StimulativeModule]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="synthetic", help="synthetic | digits | ImageFolder directory")
    p.add_argument("--val", default=None, help="validation ImageFolder (with a folder --data)")
    p.add_argument("--samples", type=int, default=512, help="synthetic training images")
    p.add_argument("--model", default="cifar_resnet20")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32, help="per device")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--num-subnets", type=int, default=2, help="ST++: 6 (2 keeps the demo fast)")
    p.add_argument("--kl-norm", "--kl", dest="kl_norm", default="layer")
    p.add_argument("--amplitude", default="adaptive")
    p.add_argument("--min-input-scale", type=float, default=0.43)
    p.add_argument("--sampling", default="ordered")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto")
    p.add_argument("--strategy", default="auto")
    p.add_argument("--precision", default="32-true", help="e.g. bf16-mixed, 16-mixed")
    p.add_argument("--log-dir", default=None, help="CSV logs of the self.log metrics (default: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0)
    args = p.parse_args(argv)

    L.seed_everything(args.seed)
    train_set, val_set, num_classes = build_data(args.data, args.val, args.samples, args.seed)
    model = st.create_model(args.model, num_classes=num_classes)
    amplitude = args.amplitude if args.amplitude == "adaptive" else float(args.amplitude)
    st_options = dict(num_subnets=args.num_subnets, kl_norm=args.kl_norm, amplitude=amplitude,
                      min_input_scale=args.min_input_scale, sampling=args.sampling)

    def optimizer(params):
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)

    module = StimulativeModule(model, st=st_options, optimizer=optimizer, scheduler="cosine", seed=args.seed,
                               eval_depths=["min"])
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                              num_workers=args.workers)
    val_loader = None if val_set is None else DataLoader(val_set, batch_size=256, num_workers=args.workers)
    trainer = L.Trainer(max_epochs=args.epochs, accelerator=args.accelerator, devices=args.devices,
                        strategy=args.strategy, precision=args.precision, log_every_n_steps=5,
                        enable_checkpointing=False,
                        logger=L.pytorch.loggers.CSVLogger(args.log_dir) if args.log_dir else False)
    trainer.fit(module, train_loader, val_loader)
    if trainer.is_global_zero:
        metrics = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()}
        print("final metrics:", metrics)
    return trainer, module


if __name__ == "__main__":
    main()
