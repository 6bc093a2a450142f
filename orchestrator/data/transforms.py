"""Per-dataset normalisation and augmentation (``torchvision.transforms.v2``).

Augmentations are the standard ones:

=============  ==========================================================
fashion_mnist  RandomCrop(28, padding=2) + RandomHorizontalFlip
cifar10/100    RandomCrop(32, padding=4) + RandomHorizontalFlip
digits         RandomCrop(8, padding=1) (no flip: digits are not mirror-symmetric)
imagefolder    RandomResizedCrop(size) + RandomHorizontalFlip
=============  ==========================================================

For the in-memory datasets the crop+flip has two implementations with the
same distribution: :meth:`CropFlip.per_sample` (a ``v2.Compose``, used by
``dataset[i]``) and :meth:`CropFlip.batch` (vectorised over a batch; what the
DataLoader uses, because the per-sample v2 call costs ~250 us per image,
slower than the ~3,000 img/s a student trains at). ``CropFlip.apply_params``
is the batch kernel with explicit offsets/flips; the tests check it equals
``v2.functional`` pad+crop+hflip image by image. The training loader's views
take their offsets/flips from :meth:`CropFlip.view_params`, a pure function of
``(seed, epoch, index)`` (:mod:`orchestrator.data.views`); ``per_sample`` and
``batch`` draw from the torch global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from orchestrator.data import views

if TYPE_CHECKING:
    from torchvision.transforms import v2


def _v2():
    """``torchvision.transforms.v2``, imported when a per-image transform is built: importing torchvision costs
    ~2 s (it pulls in torch._dynamo), which the in-memory datasets' batch kernels and every trial process that
    only reads the constants here would pay for nothing."""
    from torchvision.transforms import v2

    return v2

# (mean, std) per channel, of pixels scaled to [0, 1], over the training set
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "digits": ((0.3053,), (0.3760,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),  # ImageNet statistics
}


@dataclass(frozen=True)
class CropFlip:
    """RandomCrop(size, padding, zero fill) then (optionally) RandomHorizontalFlip(0.5)."""

    size: int
    padding: int
    flip: bool = True

    def per_sample(self) -> v2.Compose:
        v2 = _v2()
        ops: list = [v2.RandomCrop(self.size, padding=self.padding, fill=0, padding_mode="constant")]
        if self.flip:
            ops.append(v2.RandomHorizontalFlip(p=0.5))
        return v2.Compose(ops)

    def sample_params(
        self, batch: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top, left, flip) for ``batch`` images, distributed as v2.RandomCrop/RandomHorizontalFlip draw them."""
        span = 2 * self.padding + 1
        top = torch.randint(0, span, (batch,), generator=generator)
        left = torch.randint(0, span, (batch,), generator=generator)
        if self.flip:
            flip = torch.rand(batch, generator=generator) < 0.5
        else:
            flip = torch.zeros(batch, dtype=torch.bool)
        return top, left, flip

    def view_params(self, seed, epoch, index, view: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top, left, flip) of the views ``(seed, epoch, index)`` (broadcast; ``index`` (B,)): the same
        distribution as :meth:`sample_params`, but each a function of its key alone. ``view``: which view
        of the sample (0: the loader's; 1: a second, independent one, e.g. SupCon's)."""
        span = 2 * self.padding + 1
        top = views.uniform_ints(seed, epoch, index, views.view_param(view, 0), span)
        left = views.uniform_ints(seed, epoch, index, views.view_param(view, 1), span)
        flip = (views.coins(seed, epoch, index, views.view_param(view, 2)) if self.flip
                else torch.zeros(top.shape, dtype=torch.bool))
        return top, left, flip

    @property
    def view_key(self) -> str:
        """What a view cache of these views must match: the transform and the stream's version."""
        return f"crop{self.size}-pad{self.padding}-{'flip' if self.flip else 'noflip'}-stream{views.STREAM_VERSION}"

    def apply_params(
        self, images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor
    ) -> torch.Tensor:
        """Crop ``images`` (B, C, H, W) at (top, left) of the zero-padded image, then flip where ``flip``."""
        b, _, h, w = images.shape
        p, s = self.padding, self.size
        if h + 2 * p < s or w + 2 * p < s:
            raise ValueError(f"cannot crop {s}x{s} from {h}x{w} padded by {p}")
        padded = F.pad(images, (p, p, p, p)) if p else images
        c, hp, wp = padded.shape[1:]
        ar = torch.arange(s)
        rows = top[:, None] + ar[None, :]  # (B, s)
        cols = left[:, None] + ar[None, :]  # (B, s)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
        # one gather over the flattened padded images (fastest of the kernels tried on CPU)
        linear = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, s * s).expand(b, c, s * s)
        return torch.gather(padded.reshape(b, c, hp * wp), 2, linear).reshape(b, c, s, s)

    def batch(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        top, left, flip = self.sample_params(images.shape[0], generator)
        return self.apply_params(images, top, left, flip)


IN_MEMORY_AUGMENT: dict[str, CropFlip] = {
    "fashion_mnist": CropFlip(28, 2, flip=True),
    "cifar10": CropFlip(32, 4, flip=True),
    "cifar100": CropFlip(32, 4, flip=True),
    "digits": CropFlip(8, 1, flip=False),
}


def normalize(name: str) -> v2.Normalize:
    v2 = _v2()
    mean, std = STATS[name]
    return v2.Normalize(mean=list(mean), std=list(std))


# data.resize: how an image of any size becomes the S x S the models take (torchvision.transforms.v2 on the PIL
# image, bilinear; orchestrator.predict repeats each with Pillow alone, pixel for pixel)
RESIZE_POLICIES = {
    "resize_then_center_crop": "shorter side resized to S (aspect ratio kept), then the central S x S "
                               "(torchvision's Resize(S) + CenterCrop(S), the usual evaluation transform)",
    "resize": "resized to S x S, aspect ratio not kept (the whole image, possibly squashed)",
    "center_crop": "the central S x S at the original resolution, zero-padded where the image is smaller (no resize)",
}
DEFAULT_RESIZE = "resize_then_center_crop"


def fit_to_size(image_size: int, resize: str) -> list:
    """The v2 ops that turn a PIL image of any size into ``image_size`` x ``image_size`` as ``resize`` says."""
    v2 = _v2()
    if resize == "resize_then_center_crop":
        return [v2.Resize(image_size), v2.CenterCrop(image_size)]
    if resize == "resize":
        return [v2.Resize((image_size, image_size))]
    if resize == "center_crop":
        return [v2.CenterCrop(image_size)]
    raise ValueError(f"unknown resize policy {resize!r}; known: {list(RESIZE_POLICIES)}")


def imagefolder_transforms(image_size: int, augment: bool, resize: str = DEFAULT_RESIZE) -> tuple[v2.Compose, v2.Compose]:
    """(train, eval) pipelines for PIL images of an ImageFolder: -> normalised float (3, S, S). Eval (and train
    without augmentation): ``resize`` (:data:`RESIZE_POLICIES`); augmenting: RandomResizedCrop(S) + flip."""
    v2 = _v2()
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), normalize("imagefolder")]
    eval_tf = v2.Compose([*fit_to_size(image_size, resize), *to_float])
    if not augment:
        return eval_tf, eval_tf
    train_tf = v2.Compose([v2.RandomResizedCrop(image_size), v2.RandomHorizontalFlip(), *to_float])
    return train_tf, eval_tf
