"""Per-image transforms for the DataLoader pipeline (large images): the paper's ImageNet training augmentation
(RandomResizedCrop + flip + ColorJitter + AlexNet PCA lighting noise, optionally UniformAugment) and the
resize + center-crop evaluation transform.

Example::

    train_tf = imagenet_train_transform(224, color_jitter=0.4, lighting=0.1, uniform_augment=True,
                                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = train_tf(pil_image)          # float32 (3, 224, 224), normalised
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F

__all__ = [
    "IMAGENET_EIGVAL", "IMAGENET_EIGVEC", "Lighting", "UniformAugment", "UNIFORM_AUGMENT_OPS",
    "imagenet_train_transform", "resize_train_transform", "eval_transform",
]

# PCA of ImageNet RGB pixels (Krizhevsky et al. 2012; values as in fb.resnet.torch), for pixels in [0, 1].
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                   (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))


class Lighting(torch.nn.Module):
    """AlexNet-style PCA lighting noise: adds ``eigvec @ (alpha * eigval)`` to every pixel, alpha ~ N(0, std).

    Works on float CHW tensors in [0, 1] (after ``ToDtype(float32, scale=True)``, before ``Normalize``).

    Args:
        std: standard deviation of alpha (0.1 in the paper); 0 leaves the image unchanged.
        eigval, eigvec: RGB principal components (ImageNet's by default).

    Example::

        Lighting(0.1)(torch.rand(3, 8, 8))   # every pixel shifted by the same small RGB offset
    """

    def __init__(self, std: float, eigval: Sequence[float] = IMAGENET_EIGVAL,
                 eigvec: Sequence[Sequence[float]] = IMAGENET_EIGVEC):
        super().__init__()
        self.std = float(std)
        self.register_buffer("eigval", torch.tensor(eigval, dtype=torch.float32), persistent=False)
        self.register_buffer("eigvec", torch.tensor(eigvec, dtype=torch.float32), persistent=False)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return img
        alpha = torch.randn(3) * self.std
        rgb = self.eigvec @ (alpha * self.eigval)
        return img + rgb.to(img.dtype).view(3, 1, 1)

    def extra_repr(self) -> str:
        return f"std={self.std}"


def _shear(img, mag: float, axis: int):
    shear = [0.0, 0.0]
    shear[axis] = math.degrees(math.atan(mag))
    return F.affine(img, angle=0.0, translate=[0.0, 0.0], scale=1.0, shear=shear)


def _translate(img, mag: float, axis: int):
    h, w = F.get_size(img)
    shift = [0.0, 0.0]
    shift[axis] = mag * (w if axis == 0 else h)
    return F.affine(img, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0])


def _rotate(img, m: float):
    return F.rotate(img, m)


def _auto_contrast(img, m: float):
    return F.autocontrast(img)


def _invert(img, m: float):
    return F.invert(img)


def _equalize(img, m: float):
    return F.equalize(img)


def _solarize(img, m: float):
    return F.solarize(img, min(m, 255.0))


def _posterize(img, m: float):
    return F.posterize(img, int(m))


# (name, operation(img, magnitude), low, high): the 14 operations and ranges of UniformAugment
# (LingChen et al. 2020), magnitudes drawn uniformly from [low, high]. Module-level functions and partials, so
# the list pickles into DataLoader workers under any start method.
UNIFORM_AUGMENT_OPS: list[tuple[str, Callable, float, float]] = [
    ("shear_x", partial(_shear, axis=0), -0.3, 0.3),
    ("shear_y", partial(_shear, axis=1), -0.3, 0.3),
    ("translate_x", partial(_translate, axis=0), -0.45, 0.45),
    ("translate_y", partial(_translate, axis=1), -0.45, 0.45),
    ("rotate", _rotate, -30.0, 30.0),
    ("auto_contrast", _auto_contrast, 0.0, 1.0),
    ("invert", _invert, 0.0, 1.0),
    ("equalize", _equalize, 0.0, 1.0),
    ("solarize", _solarize, 0.0, 256.0),
    ("posterize", _posterize, 4.0, 8.0),
    ("contrast", F.adjust_contrast, 0.1, 1.9),
    ("color", F.adjust_saturation, 0.1, 1.9),
    ("brightness", F.adjust_brightness, 0.1, 1.9),
    ("sharpness", F.adjust_sharpness, 0.1, 1.9),
]


class UniformAugment(torch.nn.Module):
    """UniformAugment (LingChen et al. 2020): draw ``num_ops`` operations uniformly (with replacement) from
    ``ops``; apply each with probability ``prob`` and a magnitude drawn uniformly from its range.

    Works on PIL images or uint8 tensors; randomness comes from ``torch``'s generator (seeded per DataLoader
    worker).

    Args:
        num_ops: operations drawn per image (2 in the paper).
        prob: probability of applying each drawn operation.
        ops: (name, fn(img, magnitude), low, high) list; ``UNIFORM_AUGMENT_OPS`` by default.

    Example::

        UniformAugment()(pil_image)
    """

    def __init__(self, num_ops: int = 2, prob: float = 0.5,
                 ops: Sequence[tuple[str, Callable, float, float]] = UNIFORM_AUGMENT_OPS):
        super().__init__()
        if num_ops < 1 or not 0 <= prob <= 1 or not ops:
            raise ValueError(f"UniformAugment needs num_ops >= 1, prob in [0, 1] and some ops; got {num_ops}, {prob}")
        self.num_ops, self.prob, self.ops = num_ops, prob, list(ops)

    def forward(self, img):
        for _ in range(self.num_ops):
            _, op, low, high = self.ops[int(torch.randint(len(self.ops), ()))]
            if float(torch.rand(())) >= self.prob:
                continue
            img = op(img, low + (high - low) * float(torch.rand(())))
        return img

    def extra_repr(self) -> str:
        return f"num_ops={self.num_ops}, prob={self.prob}, ops=[{', '.join(o[0] for o in self.ops)}]"


def _to_normalised(mean: Sequence[float], std: Sequence[float], lighting: float = 0.0) -> list:
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    if lighting > 0:
        tail.append(Lighting(lighting))
    return tail + [v2.Normalize(list(mean), list(std)), v2.ToPureTensor()]


def imagenet_train_transform(input_size: int, color_jitter: float, lighting: float, uniform_augment: bool,
                             mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """RandomResizedCrop(input_size) + RandomHorizontalFlip [+ UniformAugment] + ColorJitter(b=c=s=color_jitter)
    + Lighting(lighting) + Normalize: PIL image -> float32 (3, input_size, input_size).

    Args:
        input_size: training crop size.
        color_jitter: brightness/contrast/saturation strength (0 = off).
        lighting: PCA lighting std (0 = off).
        uniform_augment: add UniformAugment after the flip.
        mean, std: normalisation.
    """
    ops: list = [v2.RandomResizedCrop(input_size, antialias=True), v2.RandomHorizontalFlip()]
    if uniform_augment:
        ops.append(UniformAugment())
    if color_jitter > 0:
        ops.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return v2.Compose(ops + _to_normalised(mean, std, lighting))


def resize_train_transform(input_size: int, augment: str, padding: int, mean: Sequence[float],
                           std: Sequence[float]) -> v2.Compose:
    """For large images with the CIFAR-style recipes: Resize + CenterCrop to ``input_size`` and, when
    ``augment == "cifar"``, a random crop with ``padding`` zero padding + horizontal flip."""
    ops: list = [v2.Resize(input_size, antialias=True), v2.CenterCrop(input_size)]
    if augment == "cifar":
        ops += [v2.RandomCrop(input_size, padding=padding), v2.RandomHorizontalFlip()]
    return v2.Compose(ops + _to_normalised(mean, std))


def eval_transform(resize: int, crop: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """Resize(shorter side = ``resize``) + CenterCrop(``crop``) + Normalize: PIL image -> float32 (3, crop, crop)."""
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(crop)] + _to_normalised(mean, std))
