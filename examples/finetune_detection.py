"""Stimulative training during detection fine-tuning (the paper's R50-ST*), on CPU in seconds.

A torchvision Faster R-CNN with a ResNet-18 FPN backbone (no downloaded weights) learns a few synthetic boxes.
Every step:
  1. main pass: the full backbone at full input size, detector loss backward;
  2. N sub-network passes: ``ed.depth(sampled)`` on ``detector.backbone.body`` and a smaller input
     (``detection_input_scale``), the detector's own loss dict (ground truth) backward;
  3. one optimizer step.

Swap in a real detector/dataset by replacing ``build_detector`` and ``synthetic_batch``; load an ST-pretrained
backbone exported with ``stimulative export CKPT --format backbone -o r18_backbone.pth`` via ``--backbone``.

    python examples/finetune_detection.py --steps 20 --num-subnets 2 --min-scale 0.6
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from stimulative.deploy.finetune import StimulativeFinetune, detection_input_scale


def build_detector(num_classes: int = 3, size: int = 128, backbone_weights: str | None = None) -> FasterRCNN:
    """Faster R-CNN on a ResNet-18 FPN backbone (all layers trainable), images resized to ``size``.

    Slimmed for a CPU demo (64 FPN channels, a 256-wide box head, few proposals). A real setup is
    ``FasterRCNN(resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5), num_classes)``;
    the ``detector.backbone.body`` used below is the same ``IntermediateLayerGetter`` over a torchvision ResNet.
    """
    resnet = torchvision.models.resnet18(weights=None, norm_layer=FrozenBatchNorm2d)
    if backbone_weights:  # a `stimulative export --format backbone` file: torchvision ResNet keys minus fc
        missing, unexpected = resnet.load_state_dict(torch.load(backbone_weights, weights_only=True), strict=False)
        if unexpected or any(not k.startswith("fc.") for k in missing):
            raise ValueError(f"{backbone_weights} is not a ResNet-18 backbone: missing {missing}, unexpected {unexpected}")
    fpn_channels, box_width = 64, 256
    backbone = BackboneWithFPN(resnet, return_layers={f"layer{i}": str(i - 1) for i in range(1, 5)},
                               in_channels_list=[64, 128, 256, 512], out_channels=fpn_channels,
                               extra_blocks=LastLevelMaxPool())
    box_head = TwoMLPHead(fpn_channels * 7 * 7, box_width)
    # few proposals and samples: the images are tiny (the defaults are tuned for 800-pixel COCO images)
    return FasterRCNN(backbone, num_classes=None, min_size=size, max_size=size, box_head=box_head,
                      box_predictor=FastRCNNPredictor(box_width, num_classes),
                      rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
                      rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
                      rpn_batch_size_per_image=64, box_batch_size_per_image=32)


def synthetic_batch(batch: int, size: int, num_classes: int, gen: torch.Generator):
    """Images with 1-3 bright rectangles each; targets in torchvision's format (boxes xyxy, labels >= 1)."""
    images, targets = [], []
    for _ in range(batch):
        img = 0.1 * torch.rand(3, size, size, generator=gen)
        n = int(torch.randint(1, 4, (1,), generator=gen))
        boxes, labels = [], []
        for _ in range(n):
            w, h = (int(v) for v in torch.randint(size // 8, size // 2, (2,), generator=gen))
            x0, y0 = int(torch.randint(0, size - w, (1,), generator=gen)), int(torch.randint(0, size - h, (1,),
                                                                                          generator=gen))
            label = int(torch.randint(1, num_classes, (1,), generator=gen))
            img[label % 3, y0:y0 + h, x0:x0 + w] = 1.0
            boxes.append([x0, y0, x0 + w, y0 + h])
            labels.append(label)
        images.append(img)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=96, help="detector input size (min_size = max_size)")
    parser.add_argument("--num-subnets", type=int, default=2, help="sub-network passes per step")
    parser.add_argument("--min-scale", type=float, default=0.6, help="sub-network input scale ~ U[min, 1]")
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--clip", type=float, default=5.0, help="max gradient norm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default=None, help="backbone weights from `stimulative export --format backbone`")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    num_classes = 3
    detector = build_detector(num_classes, args.size, args.backbone)
    detector.train()
    ft = StimulativeFinetune(detector.backbone.body, num_subnets=args.num_subnets,
                             min_input_scale=args.min_scale, seed=args.seed)
    optimizer = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=args.lr, momentum=0.9)
    gen = torch.Generator().manual_seed(args.seed)
    history = []
    for step in range(args.steps):
        t0 = time.perf_counter()
        images, targets = synthetic_batch(args.batch, args.size, num_classes, gen)
        losses = detector(images, targets)                  # 1. full backbone, full size
        main_loss = sum(losses.values())
        main_loss.backward()

        def subnet_loss(scale: float, images=images, targets=targets) -> dict[str, torch.Tensor]:
            with detection_input_scale(detector, scale):    # 2. smaller input; depth set by ft on the body
                return detector(images, targets)

        sub = ft(subnet_loss)
        torch.nn.utils.clip_grad_norm_(detector.parameters(), args.clip)
        optimizer.step()                                     # 3. one optimizer step
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step, "main": float(main_loss.detach()), "subnet": sub["subnet"],
                  "seconds": time.perf_counter() - t0}
        history.append(record)
        configs = " ".join(f"{','.join(map(str, c))}@{s:.2f}" for c, s in zip(ft.last_configs, ft.last_scales))
        print(f"step {step}: main loss {record['main']:.3f}, sub-network loss {record['subnet']:.3f} "
              f"[{configs}] ({record['seconds']:.1f}s)")
    return history


if __name__ == "__main__":
    print(f"torchvision {torchvision.__version__}")
    main()
