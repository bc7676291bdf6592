"""Data-layer benchmark: is the data loader ever the bottleneck of training?

Measures
  (a) the one-time decode of the CIFAR-10 JPEG archive into the uint8 tensor cache (and the cached reload),
  (b) in-memory batch augmentation throughput (TensorBatches, CIFAR pad-crop + flip, batch 128),
  (c) the ImageNet DataLoader pipeline (RandomResizedCrop + flip + ColorJitter + lighting [+ UniformAugment],
      2 workers) on a small generated folder of 224 px JPEGs,
and compares them with the training-step throughput of CIFAR ResNet-20 (fp32, batch 128; common training, the
cheapest step, so the hardest case for the loader) and of ResNet-18 at 224 px (the model class (c) feeds).

Writes benchmarks/results/bench_data.json (config, machine, numbers) and prints a table.

    python benchmarks/bench_data.py                       # archive: ../shared/datasets/cifar10-jpeg.tar.xz
    python benchmarks/bench_data.py --archive /data/cifar10-jpeg.tar.xz --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import load_average  # benchmarks/machine.py
from PIL import Image

import stimulative as st
from stimulative.data import DATASET_STATS, TensorBatches, build_data
from stimulative.data.archives import ImageSource, load_decoded
from stimulative.io import benchmark_record, machine_info, write_record
from stimulative.train.config import DataConfig

REPO = Path(__file__).resolve().parents[1]


def rounds(fn, repeats: int, device: str) -> dict:
    """Time ``fn`` (returns the images it processed) ``repeats`` times; the best round is the least disturbed by
    other processes on a shared machine, the median shows the spread."""
    rates = []
    images = 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        images = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(images / (time.perf_counter() - t0))
    return {"images_per_round": images, "rounds": repeats, "images_per_s": max(rates),
            "images_per_s_median": float(np.median(rates)), "images_per_s_all": rates}


def bench_decode(archive: Path, workers: int) -> tuple[dict, TensorBatches | None, object]:
    with tempfile.TemporaryDirectory(prefix="bench-data-cache-") as cache:
        source = ImageSource(archive)
        t0 = time.perf_counter()
        decoded = load_decoded(source, cache_dir=cache, workers=workers)
        decode_s = time.perf_counter() - t0
        cache_file = next(Path(cache).iterdir())
        t0 = time.perf_counter()
        load_decoded(source, cache_dir=cache, workers=workers)
        reload_s = time.perf_counter() - t0
        n = len(decoded.train_images) + len(decoded.test_images)
        result = {"archive": str(archive), "archive_bytes": archive.stat().st_size, "images": n,
                  "decode_workers": workers, "decode_s": decode_s, "decode_images_per_s": n / decode_s,
                  "cache_bytes": cache_file.stat().st_size, "cached_reload_s": reload_s,
                  "skipped": len(decoded.skipped), "train_shape": list(decoded.train_images.shape)}
    return result, decoded


def bench_tensor_augment(images: torch.Tensor, labels: torch.Tensor, batch: int, device: str, repeats: int,
                         batches_per_round: int = 100) -> dict:
    """Shuffled batches with pad-crop + flip + normalisation, as the training loop receives them."""
    mean, std = DATASET_STATS["cifar10"]
    batches = TensorBatches(images, labels, batch, mean, std, train=True, augment="cifar", padding=4, seed=0,
                            device=device)
    epoch = iter(range(1, 1_000_000))

    def one_round() -> int:
        batches.set_epoch(next(epoch))
        n = 0
        for i, (_, y) in enumerate(batches):
            n += len(y)
            if i + 1 == batches_per_round:
                break
        return n

    one_round()   # warm-up
    return {"batch": batch, "augment": "cifar (pad 4 crop + flip)", "device": device} | rounds(one_round, repeats,
                                                                                            device)


def make_jpeg_folder(root: Path, size: int, classes: int, per_class: int, seed: int = 0) -> None:
    """Smooth random colour fields + noise, saved as quality-90 JPEGs (realistic file sizes)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", 4)):
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                low = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size),
                                                                                             Image.Resampling.BICUBIC)
                arr = np.clip(np.asarray(low, dtype=np.int16) + rng.integers(-20, 21, (size, size, 3)), 0, 255)
                Image.fromarray(arr.astype(np.uint8)).save(d / f"{i:04d}.jpg", quality=90)


def bench_imagenet_loader(root: Path, uniform_augment: bool, workers: int, batch: int, repeats: int,
                          device: str) -> dict:
    cfg = DataConfig(name="folder", root=str(root), augment="imagenet", input_size=224, color_jitter=0.4,
                     lighting=0.1, uniform_augment=uniform_augment, workers=workers)
    bundle = build_data(cfg, batch_size=batch, eval_batch_size=batch, seed=0, device=device)
    t0 = time.perf_counter()
    bundle.train.set_epoch(0)
    for _ in bundle.train:            # first epoch starts the (persistent) workers
        pass
    first_epoch_s = time.perf_counter() - t0
    epoch = iter(range(1, 1_000_000))

    def one_epoch() -> int:
        bundle.train.set_epoch(next(epoch))
        return sum(len(y) for _, y in bundle.train)

    return {"uniform_augment": uniform_augment, "workers": workers, "batch": batch, "input_size": 224,
            "first_epoch_s": first_epoch_s} | rounds(one_epoch, repeats, device)


def bench_train_step(model_name: str, num_classes: int, size: int, batch: int, steps: int, device: str,
                     repeats: int) -> dict:
    torch.manual_seed(0)
    model = st.create_model(model_name, num_classes=num_classes).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def some_steps() -> int:
        for _ in range(steps):
            step()
        return batch * steps

    step()   # warm-up
    return {"model": model_name, "input_size": size, "batch": batch, "steps_per_round": steps,
            "precision": "fp32", "optimizer": "SGD nesterov", "device": device} | rounds(some_steps, repeats, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=REPO / ".." / "shared" / "datasets" / "cifar10-jpeg.tar.xz",
                        help="CIFAR-10 JPEG archive (default: ../shared/datasets/cifar10-jpeg.tar.xz from the repo)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="decode processes and DataLoader workers")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per measurement (best is reported)")
    parser.add_argument("--cifar-steps", type=int, default=4, help="ResNet-20 training steps per round")
    parser.add_argument("--imagenet-steps", type=int, default=1, help="ResNet-18 training steps per round (0 = skip)")
    parser.add_argument("--imagenet-images", type=int, default=64, help="generated training JPEGs per class (x4)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "bench_data.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    archive = args.archive.resolve()
    if not archive.is_file():
        raise SystemExit(f"bench_data: archive {str(archive)!r} does not exist (pass --archive)")

    info = machine_info(args.threads)
    t_start = time.time()
    print(f"(a) decoding {archive} ...", flush=True)
    decode, decoded = bench_decode(archive, args.workers)
    print("(b) in-memory batch augmentation ...", flush=True)
    augment = bench_tensor_augment(decoded.train_images, decoded.train_labels, 128, args.device, args.repeats)
    del decoded
    loaders = []
    with tempfile.TemporaryDirectory(prefix="bench-data-jpeg-") as tmp:
        print("(c) generating 224 px JPEGs and running the ImageNet DataLoader pipeline ...", flush=True)
        make_jpeg_folder(Path(tmp), 224, classes=4, per_class=args.imagenet_images)
        for ua in (False, True):
            loaders.append(bench_imagenet_loader(Path(tmp), ua, args.workers, batch=32, repeats=args.repeats,
                                                 device=args.device))
    print("training steps ...", flush=True)
    steps = [bench_train_step("cifar_resnet20", 10, 32, 128, args.cifar_steps, args.device, args.repeats)]
    if args.imagenet_steps > 0:
        steps.append(bench_train_step("resnet18", 1000, 224, 32, args.imagenet_steps, args.device, args.repeats))
    info["load_average_at_end"] = load_average()

    cifar_step = steps[0]["images_per_s"]
    verdict = {
        "tensor_augment_over_resnet20_step": augment["images_per_s"] / cifar_step,
        "imagenet_loader_over_resnet20_step": loaders[0]["images_per_s"] / cifar_step,
    }
    if len(steps) > 1:
        verdict["imagenet_loader_over_resnet18_step"] = loaders[0]["images_per_s"] / steps[1]["images_per_s"]
        verdict["imagenet_loader_ua_over_resnet18_step"] = loaders[1]["images_per_s"] / steps[1]["images_per_s"]
    verdict["note"] = ("ratio > 1: the data path produces images faster than the model consumes them (best round "
                       "of each measurement). DataLoader workers and the training step compete for the same CPU "
                       "cores, so the ratios are upper bounds for a CPU-only run.")
    result = {"benchmark": "bench_data", "config": vars(args) | {"archive": str(archive), "out": str(args.out)},
              "machine": info, "decode": decode, "tensor_augment": augment, "imagenet_loader": loaders,
              "train_step": steps, "verdict": verdict}
    command = "python benchmarks/bench_data.py " + " ".join(sys.argv[1:])
    result = benchmark_record("bench_data", result, command=command, wall_s=round(time.time() - t_start, 1),
                              machine=info)
    write_record(result, args.out, indent=2)

    rows = [
        ("(a) decode CIFAR-10 archive (one time)", f"{decode['decode_images_per_s']:,.0f}",
         f"{decode['decode_s']:.1f} s for {decode['images']:,} images; cached reload {decode['cached_reload_s']:.2f} s"),
        ("(b) in-memory cifar augment, batch 128", f"{augment['images_per_s']:,.0f}", augment["device"]),
    ]
    for loader in loaders:
        ua = " + UniformAugment" if loader["uniform_augment"] else ""
        rows.append((f"(c) ImageNet loader{ua}, {loader['workers']} workers", f"{loader['images_per_s']:,.0f}",
                     f"224 px, batch {loader['batch']}"))
    for step in steps:
        rows.append((f"train step {step['model']} fp32", f"{step['images_per_s']:,.0f}",
                     f"{step['input_size']} px, batch {step['batch']}, {args.threads} threads"))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'measurement':<{width}}  {'images/s':>10}  details")
    for name, rate, details in rows:
        print(f"{name:<{width}}  {rate:>10}  {details}")
    print("\n" + "  ".join(f"{k}={v:.1f}" for k, v in verdict.items() if isinstance(v, float)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
