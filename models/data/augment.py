"""Training-only augmentation of uint8 image batches [N, C, H, W] on the batch's device.

Every image draws its own parameters. Crops and flips are done for the whole batch at once
(a gather and a select, the same operations as torchvision's RandomCrop and
RandomHorizontalFlip per image); random_resized_crop, color_jitter and trivial_augment run
torchvision.transforms.v2 image by image. Each batch's randomness comes from a seed of
(job seed, epoch, batch) alone and leaves the global generators as they were, so the same spec
gives the same metrics and a resumed epoch augments its remaining batches exactly as an
uninterrupted one would. Validation, test and predict never pass here.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from models.spec.job import AugmentSpec


def batch_seed(seed: int, epoch: int, batch: int) -> int:
    """A seed for one batch of one epoch, distinct for every (seed, epoch, batch)."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + batch) % (2**63 - 1)


class Augmenter:
    """The spec's augmentation for images of one shape; call it with (batch, epoch, batch index)."""

    def __init__(self, spec: AugmentSpec, seed: int, image_shape: tuple[int, int, int]):
        self.spec = spec
        self.seed = seed
        _, self.height, self.width = image_shape
        per_image = []
        if spec.random_resized_crop is not None:
            crop = spec.random_resized_crop
            per_image.append(
                v2.RandomResizedCrop((self.height, self.width), scale=crop.scale, ratio=crop.ratio, antialias=True)
            )
        if spec.color_jitter is not None:
            jitter = spec.color_jitter
            per_image.append(v2.ColorJitter(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue))
        if spec.trivial_augment:
            per_image.append(v2.TrivialAugmentWide())
        self.per_image = v2.Compose(per_image) if per_image else None

    def __call__(self, x: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(batch_seed(self.seed, epoch, batch))
        if self.spec.random_crop is not None:
            x = self._random_crop(x, generator)
        if self.spec.flip_probability > 0:
            flip = (torch.rand(len(x), generator=generator) < self.spec.flip_probability).to(x.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if self.per_image is not None:
            # transforms.v2 draws from the global generator: give it this batch's seed, then put it back.
            # (transforms.v2 draws its parameters on the CPU; torch.manual_seed would reseed the GPUs too)
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
                x = torch.stack([self.per_image(image) for image in x])
        return x

    def _random_crop(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        crop, (n, c, h, w) = self.spec.random_crop, x.shape
        pad = crop.padding
        size_h, size_w = (crop.size, crop.size) if crop.size is not None else (h, w)
        padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
        top = torch.randint(0, h + 2 * pad - size_h + 1, (n,), generator=generator).to(x.device)
        left = torch.randint(0, w + 2 * pad - size_w + 1, (n,), generator=generator).to(x.device)
        rows = (top[:, None] + torch.arange(size_h, device=x.device))[:, None, :, None]
        cols = (left[:, None] + torch.arange(size_w, device=x.device))[:, None, None, :]
        images = torch.arange(n, device=x.device)[:, None, None, None]
        channels = torch.arange(c, device=x.device)[None, :, None, None]
        out = padded[images, channels, rows, cols]
        if (size_h, size_w) != (h, w):  # a smaller crop is resized back, so every split keeps one shape
            out = TF.resize(out, [h, w], antialias=True)
        return out
