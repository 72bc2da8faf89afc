"""Training-batch augmentation of teachers trained from scratch (docs/science.md, "Teachers in the paper's regime").

Random crop with padding and horizontal flip, the usual CIFAR recipe, applied to a normalised batch on its device.
The draws come from the augmenter's own seeded generator, never from the global RNG, so turning augmentation on
leaves the drop-path masks and the data order as they were, and its state resumes with the teacher's training.
"""

from __future__ import annotations

import torch

from study.teacher_config import TeacherConfig
from study.trial.data import ImageSpec


class Augment:
    """Random crop with padding (the border filled with black, i.e. raw pixel value 0 after normalisation) and a
    random horizontal flip of each image of a batch [B, C, H, W].

    Args:
        teacher: its `augment_padding` (px added on each side before cropping back; 0: no crop), `augment_flip`
            (flip with probability 1/2) and `seed` (the generator's seed, offset so it differs from the data order's).
        spec: the images' normalisation (mean, std), from which the black fill value comes.
    """

    def __init__(self, teacher: TeacherConfig, spec: ImageSpec):
        self.padding, self.flip = teacher.augment_padding, teacher.augment_flip
        self.fill = torch.tensor([-m / s for m, s in zip(spec.mean, spec.std)]).view(1, -1, 1, 1)
        self.generator = torch.Generator().manual_seed(1_000_003 + teacher.seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        b, c, h, w = images.shape
        p = self.padding
        if p:
            padded = self.fill.to(images.device, images.dtype).expand(b, c, h + 2 * p, w + 2 * p).clone()
            padded[:, :, p : p + h, p : p + w] = images
            top = torch.randint(0, 2 * p + 1, (b,), generator=self.generator).to(images.device)
            left = torch.randint(0, 2 * p + 1, (b,), generator=self.generator).to(images.device)
            rows = (top[:, None] + torch.arange(h, device=images.device))[:, :, None]  # [B, H, 1]
            cols = (left[:, None] + torch.arange(w, device=images.device))[:, None, :]  # [B, 1, W]
            batch = torch.arange(b, device=images.device)[:, None, None]
            images = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # [B, C, H, W]
        if self.flip:
            flip = (torch.rand(b, generator=self.generator) < 0.5).to(images.device)
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images.contiguous()

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
