"""Load sub-networks exported by ``stimulative export`` WITHOUT the stimulative package (torch/torchvision only).

    stimulative export runs/r18/best.pt --depth 2,1,1,2 --format pt          -o r18_2112.pt
    stimulative export runs/r18/best.pt --depth 2,1,1,2 --format safetensors -o r18_2112.safetensors
    stimulative export runs/r18/best.pt --depth 2,1,1,2 --format torchscript -o r18_2112.ts
    stimulative export runs/r18/best.pt --depth 2,1,1,2 --format onnx        -o r18_2112.onnx
    python examples/load_exported.py r18_2112.pt r18_2112.safetensors r18_2112.ts r18_2112.onnx

Each file is loaded its own way and run on the same random batch; the outputs agree (printed max difference).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch


def build_torchvision_resnet(depths: list[int], num_classes: int, bottleneck: bool) -> torch.nn.Module:
    """torchvision's ResNet built with fewer blocks per stage (what the ``plain_architecture`` field names)."""
    from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

    return ResNet(Bottleneck if bottleneck else BasicBlock, depths, num_classes=num_classes)


def load(path: Path):
    """A callable ``x -> logits`` for one exported file."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
    if path.suffix in (".ts", ".torchscript"):
        return torch.jit.load(str(path)).eval()
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        meta = json.loads(path.with_suffix(".json").read_text())   # sidecar: model, depths, num_classes
        state = load_file(str(path))
    else:  # "pt": a dict; its "model" entry is a plain state_dict, "depths"/"num_classes" describe it
        ckpt = torch.load(path, weights_only=True)
        meta, state = ckpt, ckpt["model"]
    bottleneck = any(k.endswith("conv3.weight") for k in state)
    model = build_torchvision_resnet(meta["depths"], meta["num_classes"], bottleneck)
    model.load_state_dict(state, strict=True)
    return model.eval()


def main(paths: list[str]) -> None:
    if not paths:
        print(__doc__)
        return
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    outputs = {}
    with torch.inference_mode():
        for p in paths:
            outputs[p] = load(Path(p))(x)
    first = next(iter(outputs.values()))
    for p, out in outputs.items():
        print(f"{p}: logits {tuple(out.shape)}, max |diff| to {paths[0]}: {float((out - first).abs().max()):.2e}")


if __name__ == "__main__":
    main(sys.argv[1:])
